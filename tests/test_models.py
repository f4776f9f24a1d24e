"""Model-side settings that need no weights: --cache-budget parsing and free memory."""

import pytest

from phaseprune.core.errors import UsageError
from phaseprune.model.load import cache_budget_bytes, free_memory


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2GB", 2 << 30), ("500MB", 500 << 20), ("1.5GiB", int(1.5 * (1 << 30))), ("4096", 4096)],
)
def test_cache_budget_sizes(value, expected):
    assert cache_budget_bytes(value, "cpu") == expected


def test_cache_budget_share_of_free_memory():
    free = free_memory("cpu")
    assert free > 0
    share = cache_budget_bytes("0.25", "cpu")
    # free memory moves a little between the two reads
    assert abs(share - free / 4) < 0.05 * free


@pytest.mark.parametrize("value", ["lots", "-1GB", "0", "2XB", "1.5"])
def test_cache_budget_bad_values_name_the_fix(value):
    with pytest.raises(UsageError, match="--cache-budget.*2GB"):
        cache_budget_bytes(value, "cpu")
