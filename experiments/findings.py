"""Reproduce docs/findings.md: the paper's phenomenon tested on real models with phaseprune.

    .venv/bin/python experiments/findings.py                      # every model, every stage
    .venv/bin/python experiments/findings.py --models smollm2-135m
    .venv/bin/python experiments/findings.py --doc-only           # re-render from finished runs
    .venv/bin/python experiments/findings.py --doc-only --keep-records  # and keep their records
    .venv/bin/python experiments/findings.py --status             # what is done, what is left
    torchrun --standalone --nproc_per_node 2 experiments/findings.py  # items over 2 processes

The study is the package beside this script, ``phaseprune_study`` (experiments/README.md):
the plans, the stages that run them through phaseprune's own commands and keep their records
in ``experiments/records/``, the claims and the document rendered from
experiments/findings.md.j2. Runs go to ``runs/findings/<model>/`` and are resumed; figures are
copied to ``docs/findings/<model>/``.
"""

from phaseprune_study.cli import main

if __name__ == "__main__":
    main()
