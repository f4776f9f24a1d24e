"""An exported checkpoint that transformers 4 reads as transformers 5 does, or a stated refusal.

transformers 5 writes two things that transformers 4.57 misreads (checked by
``experiments/export_compat/check_tf4.py``):

* RoPE settings live only under ``rope_parameters`` (``{"rope_theta": 100000.0, "rope_type":
  "default"}``). transformers 4 reads ``rope_theta`` (GPT-NeoX: ``rotary_emb_base`` and
  ``rotary_pct``; Gemma-3's sliding layers: ``rope_local_base_freq``) and ``rope_scaling`` at
  the top level, so without them it silently falls back to its defaults (``rope_theta``
  10000 for a model trained with 100000), and the model's logits change.
* ``tokenizer_config.json`` names the class ``TokenizersBackend``, which transformers 4 does
  not have, so ``AutoTokenizer`` fails. ``PreTrainedTokenizerFast`` is the same class in
  transformers 5 (an alias) and the fast tokenizer over ``tokenizer.json`` in transformers 4.

:func:`make_portable` writes the top-level fields beside ``rope_parameters`` (transformers 5
still takes ``rope_parameters`` first; the fields hold the same values) and renames the
tokenizer class. What it cannot express for transformers 4 (RoPE nested by layer types other
than Gemma-3's two, scaled sliding-window RoPE) leaves the export for transformers 5 only, and
the returned :class:`Portability` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKED_TRANSFORMERS_4 = "4.57"
"""The transformers 4 release the portable exports were checked with."""

_FLAT_ONLY = ("rope_theta", "partial_rotary_factor")  # top-level fields in transformers 4


@dataclass(frozen=True)
class Portability:
    """Which transformers can load an export, and why not older ones."""

    requires: str
    """A pip version specifier, e.g. ``>=4.57`` or ``>=5.0``."""
    written: dict[str, Any] = field(default_factory=dict)
    """The config.json fields added for transformers 4."""
    reasons: list[str] = field(default_factory=list)
    """Why transformers 4 cannot load it (empty when it can)."""


def _scaling(params: dict) -> dict | None:
    """The ``rope_scaling`` transformers 4 reads for one RoPE dict: None for plain RoPE."""
    if params.get("rope_type", "default") == "default":
        return None
    return {k: v for k, v in params.items() if k not in _FLAT_ONLY}


def _flat_rope(params: dict, model_type: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "rope_theta" in params:
        out["rope_theta"] = params["rope_theta"]
    if "partial_rotary_factor" in params:
        out["partial_rotary_factor"] = params["partial_rotary_factor"]
    if model_type == "gpt_neox":  # transformers 4 names them its own way
        out["rotary_emb_base"] = out.pop("rope_theta", 10000)
        out["rotary_pct"] = out.pop("partial_rotary_factor", 0.25)
    scaling = _scaling(params)
    if scaling is not None:
        out["rope_scaling"] = scaling
    return out


def legacy_rope_fields(config: dict) -> tuple[dict[str, Any], list[str]]:
    """The top-level RoPE fields transformers 4 reads, from a transformers 5 ``config.json``.

    Args:
        config: The parsed ``config.json``.

    Returns:
        ``(fields, reasons)``: what to add to the config, and why transformers 4 cannot read
        this RoPE setup (empty when it can).
    """
    params = config.get("rope_parameters")
    model_type = config.get("model_type", "")
    if not isinstance(params, dict) or not params:
        return {}, []
    nested = {k: v for k, v in params.items() if isinstance(v, dict)}
    if not nested:
        return _flat_rope(params, model_type), []
    if set(nested) != {"full_attention", "sliding_attention"} or len(nested) != len(params):
        return {}, [f"RoPE parameters per layer type {sorted(params)}"]
    out = _flat_rope(nested["full_attention"], model_type)
    sliding = nested["sliding_attention"]
    if _scaling(sliding) is not None:
        return {}, [f"scaled RoPE ({sliding.get('rope_type')}) on sliding-window layers"]
    if "rope_theta" in sliding:
        out["rope_local_base_freq"] = sliding["rope_theta"]
    return out, []


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _write(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def portable_tokenizer(out_dir: Path) -> list[str]:
    """Rename transformers 5's ``TokenizersBackend`` class; the reasons it stays 5-only, if any."""
    path = Path(out_dir) / "tokenizer_config.json"
    if not path.is_file():
        return []
    record = _read(path)
    if record.get("tokenizer_class") == "TokenizersBackend":
        if not (Path(out_dir) / "tokenizer.json").is_file():
            return ["a TokenizersBackend tokenizer without tokenizer.json"]
        record["tokenizer_class"] = "PreTrainedTokenizerFast"
        _write(path, record)
    return []


def make_portable(out_dir: str | Path, metadata: dict[str, Any]) -> Portability:
    """Edit a ``save_pretrained`` directory so transformers 4 loads it as transformers 5 does.

    Args:
        out_dir: The checkpoint directory (``config.json``, ``tokenizer_config.json``).
        metadata: Stored under ``phaseprune`` in ``config.json``, with the transformers
            version the export needs (``requires_transformers``) and the names of the fields
            written for transformers 4 (``transformers_4_fields``) added.

    Returns:
        What was written and which transformers the export needs.
    """
    out_dir = Path(out_dir)
    config = _read(out_dir / "config.json")
    written, reasons = legacy_rope_fields(config)
    reasons += portable_tokenizer(out_dir)
    requires = ">=5.0" if reasons else f">={CHECKED_TRANSFORMERS_4}"
    config.update(written)
    config["phaseprune"] = {
        **metadata,
        "requires_transformers": requires,
        "transformers_4_fields": sorted(written),
    }
    if reasons:
        config["phaseprune"]["transformers_4_cannot_read"] = reasons
    _write(out_dir / "config.json", config)
    return Portability(requires, written, reasons)
