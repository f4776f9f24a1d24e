"""What a user should do on one setting: which run, how deep, and how sure (issue 32, item 4).

The advised run is the one that keeps 90% of the unpruned accuracy deepest (then the largest
area), among the head-to-head's runs or, with healing, among every run healed or not. How sure
is said twice: the advised run's accuracy interval at its 90% depth, and its paired difference
from the runner-up (the next run by the same order) at every depth both reached, with
:func:`phaseprune.core.headtohead.pair_row` (scipy's paired percentile bootstrap).
"""

from __future__ import annotations

from collections.abc import Mapping


def flags(settings: Mapping) -> str:
    """A run's settings as ``phaseprune prune`` flags (its ``steps`` left out: the user's depth).

    >>> flags({"strategy": "angular", "heal": "linear", "heal_when": "after", "steps": 8})
    '--strategy angular --heal linear --heal-when after'
    """
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if k != "steps")


def advice(h: dict) -> dict:
    """The run to use, from a head-to-head's rows (``{}`` while no run has an area).

    The run that keeps 90% deepest (then the largest area), how deep, and where it collapsed;
    and the run with the largest area over the common depth (it may be another).
    """
    rows = [r for r in h["rows"] if r["area"] is not None]
    if not rows:
        return {}
    best = max(rows, key=lambda r: (r["depth_90"], r["area"]))
    widest = max(rows, key=lambda r: r["area"])
    return {"run": best["run"], "depth_90": best["depth_90"], "depth_80": best["depth_80"],
            "area": best["area"], "collapse_depth": best["collapse_depth"],
            "unpruned": best["accuracy_unpruned"],
            "best_area": {"run": widest["run"], "area": widest["area"]}}  # fmt: skip


def advise(
    h: dict,
    runs: Mapping[str, Mapping],
    settings: Mapping[str, Mapping],
    references: tuple[str, ...] = (),
    seed: int = 0,
) -> dict:
    """:func:`advice` with the command line, the runner-up and the paired evidence.

    Args:
        h: a head-to-head (:func:`phaseprune.core.headtohead.head_to_head`) of ``runs``.
        runs: the trajectories by the head-to-head's labels.
        settings: each label's run settings (the flags of the advised run).
        references: phase-aware's runs among them (healed and not), whose depths are given
            beside the advised run's, so a reader sees where phase-aware loses.
        seed: the bootstrap's seed.

    Returns:
        ``{}`` while no run has an area; else :func:`advice`'s keys and ``flags``,
        ``accuracy_at_90`` (with ``ci_at_90``, the run's 95% interval there), ``runner_up``
        (None with one run: its row's depths and area, ``at_90`` the paired difference at the
        advised run's 90% depth, ``wins``/``losses`` the depths whose interval excludes zero,
        up to the head-to-head's depth) and ``references`` (run, 90% and 80% depths).
    """
    from phaseprune.core.headtohead import curve, pair_row

    out = advice(h)
    if not out:
        return out
    rows = {r["run"]: r for r in h["rows"]}
    best = rows[out["run"]]
    out["flags"] = flags(settings[out["run"]])
    out["accuracy_at_90"] = best["accuracy_at"].get(out["depth_90"])
    out["ci_at_90"] = _ci(runs[out["run"]], out["depth_90"])
    ranked = sorted((r for r in rows.values() if r["area"] is not None and r is not best),
                    key=lambda r: (r["depth_90"], r["area"]), reverse=True)  # fmt: skip
    out["runner_up"] = None
    if ranked:
        other = ranked[0]
        pr = pair_row(curve(runs[best["run"]], best["run"]),
                      curve(runs[other["run"]], other["run"]), h["depth"], seed=seed)  # fmt: skip
        diffs = [d for d in pr["differences"] if d["depth"] <= h["depth"]]
        out["runner_up"] = {
            "run": other["run"],
            "depth_90": other["depth_90"],
            "depth_80": other["depth_80"],
            "area": other["area"],
            "at_90": next((d for d in diffs if d["depth"] == out["depth_90"]), None),
            "wins": [d["depth"] for d in diffs if d["excludes_zero"] and d["difference"] > 0],
            "losses": [d["depth"] for d in diffs if d["excludes_zero"] and d["difference"] < 0],
        }
    out["references"] = [{k: rows[r][k] for k in ("run", "depth_90", "depth_80")}
                         for r in references if r in rows]  # fmt: skip
    return out


def _ci(traj: Mapping, depth: int) -> list[float] | None:
    """The run's accuracy interval with ``depth`` layers removed (its stored bootstrap interval).

    A depth is layers removed, not steps: one step of phase-aware's tail cut removes several.
    """
    if depth == 0:
        return traj["step0"].get("eval_accuracy_ci")
    step = next((s for s in traj["steps"] if len(s["removed_so_far"]) == depth), None)
    return None if step is None else step.get("eval_accuracy_ci")
