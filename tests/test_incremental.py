"""The incremental readout equals a fresh read_options of each pruned model."""

import pytest
import torch
from tiny_models import CASES as ALL_CASES
from tiny_models import OPTION_IDS, VOCAB, build_tiny

from phaseprune.engine.incremental import IncrementalReadout
from phaseprune.engine.readout import read_options
from phaseprune.model.arch import decoder_parts
from phaseprune.model.surgery import without_layers


def items(seed=3):
    """Two groups sharing a prefix each, plus lengths that make several batches."""
    g = torch.Generator().manual_seed(seed)
    ids, groups = [], []
    for n_prefix, lengths in ((9, (3, 1, 4, 2, 6)), (5, (2, 7, 3))):
        prefix = torch.randint(3, VOCAB, (n_prefix,), generator=g).tolist()
        start = len(ids)
        ids += [prefix + torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lengths]
        groups.append(list(range(start, len(ids))))
    return ids, groups


def reference(model, removed, ids, groups, max_tokens):
    with without_layers(model, removed) as parts:
        return read_options(
            parts, ids, OPTION_IDS.tolist(), max_tokens=max_tokens, progress=False, groups=groups
        )


# removals in the order a pruning run makes them: middle, last, first, a block, then a reset
STEPS = [(), (2,), (2, 5), (2, 5, 0), (2, 5, 0, 3, 4), (1,)]


@pytest.mark.parametrize(
    ("case", "share"),
    [(c, True) for c in sorted(ALL_CASES)] + [(c, False) for c in ("llama", "gpt2", "gemma2")],
)
def test_incremental_equals_fresh_readout(case, share):
    model = build_tiny(case, n_layers=6)
    ids, groups = items()
    groups = groups if share else None
    inc = IncrementalReadout(model, ids, OPTION_IDS.tolist(), groups=groups, max_tokens=20)
    for removed in STEPS:
        got = inc(removed)
        ref = reference(model, removed, ids, groups, 20)
        assert got.shape == ref.shape == (len(ids), 6 - len(removed) + 1, len(OPTION_IDS))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the first call and the reset to (1,) are the only full passes
    assert inc.full_passes == 2


def test_incremental_is_bit_identical_on_llama():
    model = build_tiny("llama", n_layers=6)
    ids, groups = items()
    inc = IncrementalReadout(model, ids, OPTION_IDS.tolist(), groups=groups, max_tokens=20)
    for removed in STEPS[:5]:
        torch.testing.assert_close(
            inc(removed), reference(model, removed, ids, groups, 20), atol=0, rtol=0
        )


def test_over_budget_falls_back_to_plain_readout():
    model = build_tiny("llama", n_layers=4)
    ids, groups = items()
    inc = IncrementalReadout(model, ids, OPTION_IDS.tolist(), groups=groups, cache_budget=1)
    for removed in [(), (1,), (1, 3)]:
        torch.testing.assert_close(
            inc(removed), reference(model, removed, ids, groups, 8192), atol=0, rtol=0
        )
    assert inc.full_passes == 3 and inc.state == []


def test_model_is_restored():
    model = build_tiny("qwen2", n_layers=4)
    ids, _ = items()
    before = reference(model, (), ids, None, 8192)
    inc = IncrementalReadout(model, ids, OPTION_IDS.tolist())
    inc(())
    inc((3,))
    inc((3, 0))
    assert len(decoder_parts(model).layers) == 4
    torch.testing.assert_close(reference(model, (), ids, None, 8192), before, atol=0, rtol=0)


def test_runs_in_one_process_share_the_unpruned_state():
    """Inside share_unpruned (hold_models), a new reader of the same items starts from the
    unpruned state another computed: bit-identical readouts, no full pass of its own."""
    from phaseprune.engine.incremental import share_unpruned

    model = build_tiny("llama", n_layers=6)
    ids, groups = items()
    options = OPTION_IDS.tolist()
    with share_unpruned():
        first = IncrementalReadout(model, ids, options, groups=groups, max_tokens=20)
        got = first((4,))  # no unpruned readout asked for: it is made once, then resumed
        assert first.full_passes == 1
        torch.testing.assert_close(got, reference(model, (4,), ids, groups, 20), atol=0, rtol=0)
        second = IncrementalReadout(model, ids, options, groups=groups, max_tokens=20)
        for removed in [(2,), (2, 5), (1,)]:  # (1,) is no superset: back to the shared state
            torch.testing.assert_close(
                second(removed), reference(model, removed, ids, groups, 20), atol=0, rtol=0
            )
        assert second.full_passes == 0
        other = IncrementalReadout(model, ids[:5], options, max_tokens=20)  # other items
        other((2,))
        assert other.full_passes == 1
    outside = IncrementalReadout(model, ids, options, groups=groups, max_tokens=20)
    outside((2,))
    assert outside.full_passes == 1  # nothing shared outside the block
