"""The trained tiny decider now lives in the package (``phaseprune.decider``, used by the demo);
the tests keep importing it by this name."""

from phaseprune.decider import *  # noqa: F403
from phaseprune.decider import DeciderInfo, build_decider  # noqa: F401
