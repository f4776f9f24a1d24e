"""Runs: typed configs and records, and how a run directory is read, written and resumed.

Configs and the CLI flags made from them (:mod:`.config`, :mod:`.flags`), a model and task made
ready (:mod:`.loading`), the records (:mod:`.records`, :mod:`.trajectory`), what a run returns
in memory (:mod:`.results`), the one loader and writer (:mod:`.files`), atomic writes and
partial results (:mod:`.outdir`), the score store (:mod:`.score_store`) and lm-eval scores.
"""
