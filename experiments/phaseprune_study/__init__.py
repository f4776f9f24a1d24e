"""The findings study: phaseprune's tool applied to the paper's four claims on real models.

Modules, in the order a run goes through them: :mod:`~phaseprune_study.plans` (what is run),
:mod:`~phaseprune_study.stages` (running it), :mod:`~phaseprune_study.records` (the committed
records a fresh machine resumes from), :mod:`~phaseprune_study.claims` and
:mod:`~phaseprune_study.calibration_size` (numbers from finished runs),
:mod:`~phaseprune_study.document` (docs/findings.md) and :mod:`~phaseprune_study.cli`. The
library never imports this package.
"""
