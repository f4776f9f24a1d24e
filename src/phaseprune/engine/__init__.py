"""The forward passes (torch): option readouts of every layer, of pruned views and candidates.

Token ids (:mod:`.encoding`), the all-layer readout (:mod:`.readout`), the layer-input cache
that resumes a forward from any layer (:mod:`.layer_cache`), scoring "model minus k" for every
candidate k (:mod:`.candidates`), the readout after each removal (:mod:`.incremental`), the
baselines' formulas (:mod:`.baselines`) and the small trained decider of the tests and the demo.
"""
