"""``--precision fast``: bfloat16 forwards whose picks and chosen layers equal float32's.

Every tiny family is given near ties on purpose: two option rows of the unembedding that
differ by less than bfloat16 can resolve (so picks between them flip in bfloat16), and a
decoder layer duplicated with a small perturbation (so two candidate removals score almost
the same). The fast results must still equal float32's exactly where decisions are made.
"""

import numpy as np
import pytest
import torch
from conftest import needs_bf16_units
from tiny_models import CASES, OPTION_IDS, VOCAB, build_tiny

from phaseprune.core.objectives import (
    MEANS,
    OBJECTIVES,
    best_candidate,
    candidate_metrics,
    contenders,
    difference_error,
    key_interval,
    mean_errors,
    objective_key,
    top_gap,
)
from phaseprune.engine.candidates import option_reduce, score_removals
from phaseprune.engine.precision import (
    SAFETY,
    Rescoring,
    bfloat16_copy,
    read_options_fast,
    score_removals_fast,
    start_rescoring,
    subset_groups,
)
from phaseprune.engine.readout import read_options
from phaseprune.model.arch import decoder_parts

FAMILIES = sorted(CASES)


def prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 14, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lengths]


def near_tied(case: str, n_layers: int = 4):
    """A tiny model with an option pair and a layer pair that are nearly the same."""
    model = build_tiny(case, n_layers=n_layers)
    parts = decoder_parts(model)
    a, b = OPTION_IDS[0].item(), OPTION_IDS[1].item()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w = parts.unembed.weight
        w[b] = w[a] + 1e-3 * torch.randn(w.shape[1], generator=g)
        # layer 2 becomes layer 1 plus noise: removing either costs almost the same
        for p1, p2 in zip(parts.layers[1].parameters(), parts.layers[2].parameters(), strict=True):
            p2.copy_(p1 + 1e-3 * torch.randn(p1.shape, generator=g))
    return model


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_key_interval_holds_the_exact_key(objective):
    """Logits moved within the bound never leave the interval of the exact key."""
    rng = np.random.default_rng(0)
    n, bound = 40, 0.3
    for _ in range(50):
        exact = rng.normal(0, 1, (n, 4))
        exact[:10, 1] = exact[:10, 0] + rng.uniform(-0.1, 0.1, 10)  # near ties
        noise = rng.uniform(-bound / 2, bound / 2, (n, 4))
        approx = exact + noise
        assert difference_error(approx, exact).max() <= bound
        gold = rng.integers(0, 4, n)
        ref = rng.normal(0, 1, (n, 4))
        means = mean_errors(approx, exact, gold, ref)  # the tightest true bound on the means
        rows = rng.random(n) < 0.3
        approx[rows] = exact[rows]
        key = objective_key(objective, candidate_metrics(exact, gold, ref))
        for mean_bound in (None, means):
            lo, hi = key_interval(objective, approx, gold, ref, rows, bound, mean_bound)
            assert lo[0] <= key[0] + 1e-12 and key[0] <= hi[0] + 1e-12
            assert lo[1] <= key[1] + 1e-12 and key[1] <= hi[1] + 1e-12
        # exact rows everywhere: the interval is the point
        lo, hi = key_interval(objective, exact, gold, ref, np.ones(n, bool), bound)
        assert lo == hi == key


def test_contenders_always_hold_the_best_and_one_is_the_best():
    rng = np.random.default_rng(1)
    for _ in range(200):
        point = {k: tuple(rng.integers(0, 3, 2).astype(float)) for k in range(6)}
        width = {k: rng.uniform(0, 1) for k in point}
        intervals = {k: (tuple(v - width[k] for v in p), tuple(v + width[k] for v in p))
                     for k, p in point.items()}  # fmt: skip
        alive = contenders(intervals)
        assert best_candidate(point) in alive
        if len(alive) == 1:
            assert alive == [best_candidate(point)]
    exact = {k: (p, p) for k, p in point.items()}
    assert contenders(exact) == [best_candidate(point)]


def test_subset_groups_reindexes():
    assert subset_groups([[0, 1, 2], [3, 4]], [1, 3, 4]) == [[0], [1, 2]]
    assert subset_groups(None, [1]) is None


@pytest.mark.parametrize("case", FAMILIES)
@needs_bf16_units
def test_fast_readout_picks_equal_float32_at_every_layer(case):
    model = near_tied(case)
    fast_model = bfloat16_copy(model)
    ids = prompts(120)
    options = OPTION_IDS.tolist()
    exact = read_options(decoder_parts(model), ids, options, progress=False).numpy()
    approx = read_options(decoder_parts(fast_model), ids, options, progress=False).numpy()
    got = read_options_fast(
        decoder_parts(model), decoder_parts(fast_model), ids, options, sample=range(32),
        progress=False,
    )  # fmt: skip
    # the construction works: bfloat16 alone gets some picks wrong, or near ties are present
    assert (top_gap(exact) < 0.05).any()
    np.testing.assert_array_equal(got.logits.argmax(-1), exact.argmax(-1))
    # the recorded bound is never exceeded by any item at any readout index
    assert (difference_error(approx, exact) <= got.bound).all()
    # rows read in float32 are float32's (same batches: bit for bit on CPU), the rest bfloat16's
    np.testing.assert_allclose(got.logits[got.exact], exact[got.exact], atol=1e-5)
    np.testing.assert_array_equal(got.logits[~got.exact], approx[~got.exact])
    assert (approx.argmax(-1) != exact.argmax(-1)).any() or got.exact.sum() > 32


@pytest.mark.parametrize("case", FAMILIES)
@needs_bf16_units
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_fast_scoring_chooses_the_float32_layer(case, objective):
    model = near_tied(case)
    fast_model = bfloat16_copy(model)
    ids = prompts(24, seed=3)
    gold = np.random.default_rng(0).integers(0, 4, len(ids))
    reduce = option_reduce(OPTION_IDS.tolist())

    def score(m, removed, candidates, rows, groups):
        return score_removals(m, removed, candidates, rows, reduce, groups=groups)

    options = OPTION_IDS.tolist()
    ref = read_options(decoder_parts(model), ids, options, progress=False)[:, -1].numpy()
    for removed in [(), (3,)]:
        candidates = [k for k in range(4) if k not in removed]
        exact = score(model, removed, candidates, ids, None)
        approx = score(fast_model, removed, candidates, ids, None)
        # the bounds as prune measures them: the unpruned model's readouts, both precisions
        fast = start_rescoring(model, fast_model, ids, options, None, gold, ref, max_tokens=512)
        measured = fast.measured
        got = score_removals_fast_(
            score, model, fast, removed, candidates, ids, gold, ref, objective
        )
        want = {k: objective_key(objective, candidate_metrics(v.numpy(), gold, ref))
                for k, v in exact.items()}  # fmt: skip
        keys = {k: objective_key(objective, candidate_metrics(v.numpy(), gold, ref))
                for k, v in got.items()}  # fmt: skip
        assert best_candidate(keys) == best_candidate(want)
        assert fast.observed <= fast.bound
        # no candidate's error is above the bounds (every row and mean, not only re-scored ones)
        error = max(difference_error(approx[k].numpy(), exact[k].numpy()).max() for k in exact)
        assert error <= fast.bound
        for k in exact:
            means = mean_errors(approx[k].numpy(), exact[k].numpy(), gold, ref)
            assert all(means[m] <= fast.mean_bound[m] for m in means), (k, means)
        record = fast.record()
        assert record["forward"] == "bfloat16" and fast.bound >= SAFETY * measured - 1e-12


def score_removals_fast_(score, model, fast, removed, candidates, ids, gold, ref, objective):
    from phaseprune.engine.precision import score_removals_fast

    return score_removals_fast(
        score, model, fast, removed, candidates, ids, None,
        objective=objective, gold=gold, ref_logits=ref,
    )  # fmt: skip


def test_a_bound_that_fails_is_widened_and_the_step_decided_again():
    """Re-scored rows whose error exceeds the bound widen it; float32 still decides."""
    rng = np.random.default_rng(4)
    n = 10
    exact = {k: rng.normal(0, 1, (n, 4)) for k in range(3)}
    gold = np.zeros(n, dtype=int)
    for k in exact:
        exact[k][:, 0] = exact[k][:, 1:].max(axis=1) + 0.5 + 0.01 * k  # all correct; 2 best
    approx = {k: v.copy() for k, v in exact.items()}
    for k in approx:  # row errors of 0.3 that cancel in the mean margin
        approx[k][:, 0] += np.where(np.arange(n) % 2, 0.3, -0.3)
    approx[0][:, 0] += 0.03  # bfloat16 would prefer candidate 0
    calls = []

    def score(model, removed, candidates, rows, groups):
        source = approx if model == "bf16" else exact
        calls.append((model, tuple(candidates), len(rows)))
        pick = [int(np.flatnonzero([r == ids[i] for i in range(n)])[0]) for r in rows]
        return {k: torch.from_numpy(source[k][pick].astype(np.float32)) for k in candidates}

    ids = [[i] for i in range(n)]
    fast = Rescoring("bf16", measured=0.01, mean_measured=dict.fromkeys(MEANS, 0.01))
    got = score_removals_fast(
        score, "fp32", fast, (), [0, 1, 2], ids, None,
        objective="margin", gold=gold, ref_logits=exact[0],
    )  # fmt: skip
    keys = {k: objective_key("margin", candidate_metrics(v.numpy(), gold, exact[0]))
            for k, v in got.items()}  # fmt: skip
    assert best_candidate(keys) == 2
    assert fast.widened >= 1 and fast.bound >= SAFETY * 0.3 and fast.step["contenders"] == 3
    assert any(model == "fp32" for model, _, _ in calls)
