"""The readout against the model's own logits, a hand computation, and batching invariance."""

import pytest
import torch
from tiny_models import CASES, OPTION_IDS, VOCAB, build_tiny

from phaseprune.engine.readout import length_batches, read_options
from phaseprune.model.arch import decoder_parts

FAMILIES = ["llama", "gemma2", "gpt2", "opt-project-out", "falcon-new", "gpt_neox", "qwen3", "phi3"]


def prompts(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 14, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lengths]


@pytest.mark.parametrize("case", FAMILIES)
def test_last_readout_equals_model_logits(case):
    model = build_tiny(case)
    parts = decoder_parts(model)
    ids = prompts()
    out = read_options(parts, ids, OPTION_IDS.tolist(), progress=False)
    assert out.shape == (len(ids), len(parts.layers) + 1, len(OPTION_IDS))
    for i, row in enumerate(ids):
        with torch.no_grad():
            logits = model(torch.tensor([row])).logits[0, -1, OPTION_IDS]
        torch.testing.assert_close(out[i, -1], logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", FAMILIES)
def test_batched_equals_one_by_one(case):
    parts = decoder_parts(build_tiny(case))
    ids = prompts(9, seed=1)
    batched = read_options(parts, ids, OPTION_IDS.tolist(), max_tokens=64, progress=False)
    single = torch.cat(
        [read_options(parts, [row], OPTION_IDS.tolist(), progress=False) for row in ids]
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_hand_computed_readout_on_toy_llama():
    """Index 0 and index 1 of a 1-layer Llama, computed by hand from the weights."""
    model = build_tiny("llama")
    parts = decoder_parts(model)
    row = [7, 42, 99, 5]
    out = read_options(parts, [row], OPTION_IDS.tolist(), progress=False)[0]

    def rms_lens(x):
        norm = model.model.norm
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + norm.variance_epsilon)
        return (y * norm.weight) @ model.lm_head.weight[OPTION_IDS].T

    with torch.no_grad():
        h0 = model.model.embed_tokens.weight[row[-1]]
        torch.testing.assert_close(out[0], rms_lens(h0), atol=1e-5, rtol=1e-5)
        hidden = model(torch.tensor([row]), output_hidden_states=True).hidden_states
        # hidden_states[1] is the (un-normalised) output of layer 0 for a multi-layer model
        torch.testing.assert_close(out[1], rms_lens(hidden[1][0, -1]), atol=1e-5, rtol=1e-5)


def test_length_batches_respect_budget_and_cover_all():
    lengths = [5, 30, 7, 7, 12, 1, 30]
    batches = length_batches(lengths, max_tokens=32)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 32 or len(b) == 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_prefix_equals_full_prompts(case):
    """Items sharing a few-shot prefix: prefix KV cache + own tokens == full prompts."""
    parts = decoder_parts(build_tiny(case))
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(3, VOCAB, (9,), generator=g).tolist()  # longer than sliding windows
    rows = [prefix + torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in (2, 5, 3, 1, 4)]
    other = [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in (6, 3)]
    ids = rows + other
    full = read_options(parts, ids, OPTION_IDS.tolist(), progress=False)
    shared = read_options(
        parts, ids, OPTION_IDS.tolist(), progress=False, max_tokens=12, groups=[range(5), [5, 6]]
    )
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
