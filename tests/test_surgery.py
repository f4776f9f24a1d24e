"""Tests for phaseprune.model.surgery: the layer-removal view against really pruned checkpoints.

The reference for removing layers is built the way a person would prune a checkpoint by hand:
edit the config dict (layer count, ``layer_types`` sliced) and the state dict (drop the removed
layers, renumber ``layers.{i}`` consecutively), then build the family's class from them. Inputs
are longer than every sliding window (4), so which layers slide changes the logits.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
import transformers as tf
from tiny_models import CASES, GQA, VOCAB, build_tiny

from phaseprune.core.errors import UsageError
from phaseprune.model.arch import decoder_parts
from phaseprune.model.surgery import export_config, kept_layers, without_layers

N = 4
SEQ = 10  # (> sliding_window) tokens per row
REMOVALS = [[1], [0, 2]]
SLIDING = ["gemma2", "gemma3-pattern3", "qwen2-sliding"]  # cases with mixed layer_types
EXACT = dict(atol=0, rtol=0)
CLOSE = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, which spin idly on a busy machine."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def _ids(seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randint(3, VOCAB, (2, SEQ))  # (batch, seq)


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits  # (batch, seq, vocab)


def _layers_path(model: torch.nn.Module) -> str:
    layers = decoder_parts(model).layers
    return next(name for name, mod in model.named_modules() if mod is layers)


def _pruned_by_hand(
    model: torch.nn.Module, case: str, removed: Iterable[int], layer_types: list[str] | None = None
) -> torch.nn.Module:
    """The checkpoint with ``removed`` deleted from config and state dict, rebuilt."""
    _, cls, tweak = CASES[case]
    kept = [i for i in range(N) if i not in set(removed)]
    d = model.config.to_dict()
    d["n_layer" if "n_layer" in d else "num_hidden_layers"] = len(kept)
    if d.get("layer_types") is not None:
        d["layer_types"] = layer_types or [d["layer_types"][i] for i in kept]
    prefix = _layers_path(model) + "."
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            i, rest = key[len(prefix) :].split(".", 1)
            if int(i) not in kept:
                continue
            key = f"{prefix}{kept.index(int(i))}.{rest}"
        state[key] = value
    ref = cls(type(model.config).from_dict(d))
    if tweak is not None:
        tweak(ref)
    ref.load_state_dict(state, strict=True)
    return ref.float().eval()


def _snapshot(model: torch.nn.Module) -> dict:
    """Everything the view edits, by identity where the view must put the same object back."""
    parts = decoder_parts(model)
    return {
        "layers": parts.layers,
        "modules": list(parts.layers),
        "per_module": [
            (name, getattr(m, "layer_idx", None), getattr(m, "scaling", None))
            for name, m in model.named_modules()
        ],
        "has_sliding_layers": getattr(parts.base, "has_sliding_layers", None),
        "config_vars": dict(vars(model.config)),
        "config_dict": model.config.to_dict(),
    }


def _assert_restored(model: torch.nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["layers"] is before["layers"]
    assert all(a is b for a, b in zip(after["modules"], before["modules"], strict=True))
    assert after["per_module"] == before["per_module"]
    assert after["has_sliding_layers"] == before["has_sliding_layers"]
    assert after["config_vars"].keys() == before["config_vars"].keys()
    assert all(after["config_vars"][k] is v for k, v in before["config_vars"].items())
    assert after["config_dict"] == before["config_dict"]


@pytest.mark.parametrize("case", list(CASES))
def test_view_equals_pruned_checkpoint(case: str) -> None:
    """Logits without and with a KV cache (two steps: prefix, then 2 tokens) match."""
    model = build_tiny(case, n_layers=N)
    original = list(decoder_parts(model).layers)
    ids = _ids()
    for removed in REMOVALS:
        ref = _pruned_by_hand(model, case, removed)
        with torch.no_grad(), without_layers(model, removed) as parts:
            kept = [i for i in range(N) if i not in removed]
            assert all(a is original[i] for a, i in zip(parts.layers, kept, strict=True))
            assert model.config.num_hidden_layers == len(kept)
            torch.testing.assert_close(_logits(model, ids), _logits(ref, ids), **CLOSE)
            steps = []
            for m in (model, ref):
                first = m(input_ids=ids[:, :-2], use_cache=True)
                second = m(input_ids=ids[:, -2:], cache=first.cache, use_cache=True)
                steps.append(second.logits)  # (batch, 2, vocab)
            torch.testing.assert_close(steps[0], steps[1], **CLOSE)
            torch.testing.assert_close(steps[0], _logits(model, ids)[:, -2:], **CLOSE)


@pytest.mark.parametrize("case", SLIDING + ["mistral", "gpt2-inverse-layer-scale", "falcon-new"])
def test_generate_in_view_equals_pruned_checkpoint(case: str) -> None:
    model = build_tiny(case, n_layers=N)
    ids = _ids()
    gen = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    for removed in REMOVALS:
        ref = _pruned_by_hand(model, case, removed)
        with without_layers(model, removed):
            tokens = model.generate(ids, attention_mask=torch.ones_like(ids), **gen)
        assert torch.equal(tokens, ref.generate(ids, attention_mask=torch.ones_like(ids), **gen))


@pytest.mark.parametrize("case", list(CASES))
def test_removing_nothing_is_identity_and_exit_restores(case: str) -> None:
    model = build_tiny(case, n_layers=N)
    ids = _ids()
    logits = _logits(model, ids)
    before = _snapshot(model)
    with without_layers(model, []) as parts:
        assert list(parts.layers) == before["modules"]
        torch.testing.assert_close(_logits(model, ids), logits, **EXACT)
    _assert_restored(model, before)
    with without_layers(model, [0, 2]):
        assert model.config.num_hidden_layers == 2
    _assert_restored(model, before)
    with pytest.raises(KeyError, match="inside"), without_layers(model, [1, 3]):
        raise KeyError("inside")
    _assert_restored(model, before)
    torch.testing.assert_close(_logits(model, ids), logits, **EXACT)


@pytest.mark.parametrize("case", list(CASES))
def test_saved_view_reloads_to_the_same_model(case: str, tmp_path) -> None:
    if CASES[case][2] is not None:
        pytest.skip("the tweaked lm_head is not part of the family's checkpoint format")
    model = build_tiny(case, n_layers=N)
    ids = _ids()
    removed = [0, 2]
    config = export_config(model, removed)
    with without_layers(model, removed):
        assert model.config.to_dict() == config.to_dict()
        model.save_pretrained(tmp_path)
        logits = _logits(model, ids)
    config.save_pretrained(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path).float().eval()
    assert type(reloaded) is type(model)
    assert len(decoder_parts(reloaded).layers) == 2
    torch.testing.assert_close(_logits(reloaded, ids), logits, **CLOSE)
    assert model.config.num_hidden_layers == N  # exporting left the model's config alone


@pytest.mark.parametrize("case", SLIDING)
def test_sliced_layer_types_matter(case: str) -> None:
    """Keeping the first layer_types entries instead of the kept layers' changes the logits."""
    model = build_tiny(case, n_layers=N)
    ids = _ids()
    removed = [0] if case == "gemma2" else [1]
    types = model.config.layer_types
    kept_types = [t for i, t in enumerate(types) if i not in removed]
    assert kept_types != types[:3]
    wrong = _pruned_by_hand(model, case, removed, layer_types=types[:3])
    with without_layers(model, removed):
        assert model.config.layer_types == kept_types
        assert not torch.allclose(_logits(model, ids), _logits(wrong, ids), atol=1e-3)


def test_qwen2_sliding_bookkeeping() -> None:
    model = build_tiny("qwen2-sliding", n_layers=N)
    base = decoder_parts(model).base
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert export_config(model, [0]).max_window_layers == 1
    ids = _ids()
    ref = _pruned_by_hand(model, "qwen2-sliding", [2, 3])
    with without_layers(model, [2, 3]):
        assert base.has_sliding_layers is False
        assert model.config.max_window_layers == 2
        torch.testing.assert_close(_logits(model, ids), _logits(ref, ids), **CLOSE)
    assert base.has_sliding_layers is True


def test_gpt2_inverse_layer_scale_follows_new_index() -> None:
    model = build_tiny("gpt2-inverse-layer-scale", n_layers=N)
    attn = decoder_parts(model).layers[3].attn
    scaling = attn.scaling
    with without_layers(model, [1]):
        assert attn.layer_idx == 2
        assert attn.scaling == pytest.approx(scaling * 4 / 3)
    assert attn.layer_idx == 3 and attn.scaling == scaling


@pytest.mark.parametrize("case", ["llama", "gemma3-pattern3"])
def test_views_nest(case: str) -> None:
    model = build_tiny(case, n_layers=N)
    ids = _ids()
    before = _snapshot(model)
    outer_ref = _pruned_by_hand(model, case, [1])
    inner_ref = _pruned_by_hand(model, case, [1, 3])
    with without_layers(model, [1]):
        with without_layers(model, [2]) as parts:  # the outer view's layer 2: original 3
            assert len(parts.layers) == 2
            torch.testing.assert_close(_logits(model, ids), _logits(inner_ref, ids), **CLOSE)
        torch.testing.assert_close(_logits(model, ids), _logits(outer_ref, ids), **CLOSE)
    _assert_restored(model, before)


def test_kept_layers() -> None:
    assert kept_layers(4, []) == [0, 1, 2, 3]
    assert kept_layers(4, [2, 0, 2]) == [1, 3]
    assert kept_layers(4, (i for i in [3])) == [0, 1, 2]


@pytest.mark.parametrize(
    "removed, match",
    [([0, 1, 2, 3], "cannot remove all 4"), ([4], r"\[4\] out of range"), ([-1], "out of range")],
)
def test_bad_removals_raise_and_leave_model_alone(removed: list[int], match: str) -> None:
    model = build_tiny("gemma2", n_layers=N)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=match), without_layers(model, removed):
        pass
    with pytest.raises(ValueError, match=match):
        export_config(model, removed)
    _assert_restored(model, before)


def test_per_layer_config_is_refused() -> None:
    config = tf.LlamaConfig(
        **{**GQA, "num_hidden_layers": N}, per_layer_config={3: {"skip": ["mlp"]}}
    )
    model = tf.LlamaForCausalLM(config)
    with pytest.raises(UsageError, match="per_layer_config"), without_layers(model, [1]):
        pass
    with pytest.raises(UsageError, match="per_layer_config"):
        export_config(model, [1])
