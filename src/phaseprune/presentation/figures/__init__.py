"""Every figure of phaseprune, shaped once and drawn twice.

Presentation layer: it reads the run records (``summary.json``, ``trajectory.json``) and is
never imported by the core.

* :mod:`.data`: the numbers behind each figure as named records, and the colours (numpy only).
* :mod:`.png`: static matplotlib renderings, the PNGs of ``plots/`` and of the report.
* :mod:`.interactive`, :mod:`.interactive_prune`: plotly renderings for the HTML report.

Nothing is imported here, so drawing PNGs never loads plotly and the report's figures never
load matplotlib.
"""
