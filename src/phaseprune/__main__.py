"""``python -m phaseprune``: the same command line as the ``phaseprune`` script."""

import sys

from phaseprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
