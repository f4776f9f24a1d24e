"""The model and where it runs: every architecture-specific fact, loading, identity, devices.

:mod:`.arch` knows each family's layers, final norm and unembedding; :mod:`.surgery` edits a
model only inside contexts that restore it; :mod:`.load` loads a model and its tokenizer;
:mod:`.identity` says which weights they are; :mod:`.cpu` and :mod:`.distributed` say what the
machine offers and which shard of the items this process reads. Imports only the core.
"""
