"""Suffix-only candidate scoring equals a plain forward of each pruned view."""

import pytest
import torch
from tiny_models import CASES as ALL_CASES
from tiny_models import OPTION_IDS, VOCAB, build_tiny

from phaseprune.engine.candidates import (
    budget_chunks,
    final_readout,
    option_reduce,
    score_removals,
)
from phaseprune.engine.layer_cache import tokens_budget
from phaseprune.model.surgery import without_layers

CASES = ["llama", "gemma2", "gpt2", "falcon-new", "opt-project-out", "qwen2"]


def prompts(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 12, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lengths]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("removed", [(), (1,)])
def test_suffix_resume_equals_full_forward(case, removed):
    model = build_tiny(case)
    ids = prompts()
    reduce = option_reduce(OPTION_IDS.tolist())
    n = model.config.num_hidden_layers
    candidates = [k for k in range(n) if k not in removed]
    scores = score_removals(model, removed, candidates, ids, reduce, max_tokens=40)
    for k in candidates:
        # reference: the model's own logits inside the view, one prompt at a time
        with torch.inference_mode(), without_layers(model, [*removed, k]):
            ref = torch.stack([model(torch.tensor([row])).logits[0, -1, OPTION_IDS] for row in ids])
        torch.testing.assert_close(scores[k], ref, atol=1e-5, rtol=1e-5)


def test_final_readout_and_restoration():
    model = build_tiny("llama")
    ids = prompts()
    reduce = option_reduce(OPTION_IDS.tolist())
    before = final_readout(model, (), ids, reduce)
    score_removals(model, (), [0, 1, 2], ids, reduce)
    after = final_readout(model, (), ids, reduce)
    torch.testing.assert_close(before, after, atol=0, rtol=0)
    with torch.inference_mode():
        own = torch.stack([model(torch.tensor([r])).logits[0, -1, OPTION_IDS] for r in ids])
    torch.testing.assert_close(before, own, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(ALL_CASES))
@pytest.mark.parametrize("removed", [(), (2,)])
def test_shared_prefix_candidates_equal_full_forward(case, removed):
    """Candidates scored with a shared few-shot prefix cache == plain forward of each view."""
    model = build_tiny(case, n_layers=4)
    g = torch.Generator().manual_seed(5)
    prefix = torch.randint(3, VOCAB, (9,), generator=g).tolist()
    ids = [prefix + torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in (3, 1, 4, 2)]
    ids += [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in (5, 7)]
    reduce = option_reduce(OPTION_IDS.tolist())
    candidates = [k for k in range(4) if k not in removed]
    scores = score_removals(
        model, removed, candidates, ids, reduce, max_tokens=12, groups=[[0, 1, 2, 3], [4, 5]]
    )
    for k in candidates:
        with torch.inference_mode(), without_layers(model, [*removed, k]):
            ref = torch.stack([model(torch.tensor([row])).logits[0, -1, OPTION_IDS] for row in ids])
        torch.testing.assert_close(scores[k], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("share", [False, True])
def test_cache_budget_chunks_give_identical_scores(case, share):
    """A budget smaller than a group splits it into chunks; every score stays bit-identical."""
    model = build_tiny(case, n_layers=4)
    g = torch.Generator().manual_seed(7)
    prefix = torch.randint(3, VOCAB, (6,), generator=g).tolist()
    ids = [prefix + torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in range(1, 9)]
    reduce = option_reduce(OPTION_IDS.tolist())
    groups = [list(range(8))] if share else None
    kwargs = {"max_tokens": 10, "groups": groups}
    whole = score_removals(model, (1,), [0, 2, 3], ids, reduce, **kwargs)
    hidden = model.config.hidden_size
    for budget in (1, 4 * hidden * 4 * 12, None):  # one batch per chunk, ~12 tokens, unlimited
        chunked = score_removals(model, (1,), [0, 2, 3], ids, reduce, cache_budget=budget, **kwargs)
        for k in whole:
            torch.testing.assert_close(chunked[k], whole[k], atol=0, rtol=0)


def test_budget_chunks_pack_batches_within_budget():
    lengths = [3, 3, 5, 5, 8]
    batches = [[0, 1], [2, 3], [4]]  # padded sizes 6, 10, 8
    assert budget_chunks(batches, lengths, None) == [batches]
    assert budget_chunks(batches, lengths, 16) == [[[0, 1], [2, 3]], [[4]]]
    assert budget_chunks(batches, lengths, 1) == [[b] for b in batches]
    assert budget_chunks(batches, lengths, 24) == [batches]


def test_cached_tokens_budget_counts_every_layer_input():
    model = build_tiny("llama", n_layers=4)
    per_token = 5 * model.config.hidden_size * 4  # 4 layer inputs + output, float32
    assert tokens_budget(model, 4, 10 * per_token) == 10
    assert tokens_budget(model, 4, 1) == 1
    assert tokens_budget(model, 4, None) is None
