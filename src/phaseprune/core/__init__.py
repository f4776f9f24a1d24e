"""The pure core: arrays and records in, arrays and records out; no torch, no files.

Multiple-choice items (:mod:`.items`), prompt text (:mod:`.prompts`), the Decision Margin and
Option Frequency (:mod:`.metrics`), the phases and the transition layer (:mod:`.phases`),
candidate objectives (:mod:`.objectives`), the collapse rule (:mod:`.collapse`), strategies
head to head (:mod:`.headtohead`), errors and progress bars.
"""
