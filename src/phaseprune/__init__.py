"""phaseprune: where a language model decides a multiple-choice answer, layer by layer."""

__version__ = "0.1.0"
