"""The trained tiny decider lives in the package (``phaseprune.engine.decider``, used by the
demo); the tests keep importing it by this name."""

from phaseprune.engine.decider import *  # noqa: F403
from phaseprune.engine.decider import DeciderInfo, build_decider  # noqa: F401
