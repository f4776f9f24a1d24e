"""``phaseprune report``: one self-contained HTML page of analyze and prune runs.

Presentation layer: it reads run directories (``summary.json``, ``trajectory.json``) and
imports the core's records and the figures of :mod:`phaseprune.presentation.figures` (plotly ones
in the page, matplotlib ones beside it); the core never imports it, and nothing here loads
torch or a model.

* :mod:`.load`: what kind of run a directory is; clear errors for anything else.
* :mod:`.text`, :mod:`.tables`: the numbers and sentences the page prints.
* :mod:`.static`: PNGs beside the HTML, from :mod:`phaseprune.presentation.figures.png`.
* :mod:`.build`: sections, the Jinja2 template, the file.
"""

from phaseprune.presentation.report.build import Report, build_report

__all__ = ["Report", "build_report"]
