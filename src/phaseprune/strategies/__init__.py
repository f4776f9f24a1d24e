"""Which layer to remove next: Iterative Pruning, phase-aware pruning and the baselines.

* :mod:`.registry`: every strategy's name, rule and needs (no torch; the CLI reads it).
* :mod:`.context`: what a strategy reads (:class:`~.context.PruneContext`) and returns
  (:class:`~.context.Choice`).
* :mod:`.search`: the strategies that score candidate removals by the decision readout
  (iterative, phase-aware).
* :mod:`.rankings`: the baselines that rank layers by a published criterion.

A new strategy is a function ``(ctx, removed) -> Choice`` in :mod:`.search` or
:mod:`.rankings` and one :class:`~.registry.StrategySpec` in :data:`.registry.STRATEGIES`.
"""
