"""Layers removed before the collapse, as compare, report and the study count them."""

from phaseprune.core.collapse import layers_before_collapse


def run(removed, collapse_step=None, label=None):
    """A trajectory removing ``removed`` in order, collapsing at ``collapse_step`` (or not)."""
    steps = [{"step": i + 1, "removed_layer": k, "removed_so_far": removed[: i + 1]}
             for i, k in enumerate(removed)]  # fmt: skip
    traj = {"strategy": "last", "steps": steps, "collapse": {"step": collapse_step}}
    return traj | ({"label": label} if label else {})


def test_counts_the_removals_before_the_collapse_step():
    assert layers_before_collapse(run([3, 2, 1], collapse_step=3)) == {
        "strategy": "last", "removed": 2, "collapsed": True, "steps_run": 3
    }  # fmt: skip
    # the first removal collapses: none was removable
    assert layers_before_collapse(run([3, 2], collapse_step=1))["removed"] == 0


def test_without_a_collapse_every_removal_counts():
    record = layers_before_collapse(run([3, 2]))
    assert (record["removed"], record["collapsed"], record["steps_run"]) == (2, False, 2)
    assert layers_before_collapse(run([]))["removed"] == 0  # nothing run yet
    # a run without a stored collapse (an old or unfinished record) reads as not collapsed
    assert not layers_before_collapse(run([3]) | {"collapse": None})["collapsed"]


def test_a_label_names_runs_that_share_a_strategy():
    assert layers_before_collapse(run([3], label="phase-aware-kl"))["strategy"] == "phase-aware-kl"
