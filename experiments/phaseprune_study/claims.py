"""The paper's four claims as numbers, from finished runs alone (pure functions of records).

(a) a sharp transition exists, (b) removing Decisive-Phase layers barely hurts, (c) removing
Silent-Phase layers collapses accuracy at once, (d) phase-aware pruning removes more layers
before collapse than the baselines. Each function returns the measured quantities; the
verdicts apply stated thresholds to them (:data:`THRESHOLDS`), so a reader can disagree with a
threshold and still use the numbers. Values on a threshold count as meeting it, whatever
floating point made of them (:mod:`phaseprune.core.thresholds`). (d) counts removals before
collapse with the library's :func:`phaseprune.core.collapse.layers_before_collapse`, as
``compare`` and ``report`` do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from phaseprune.core.collapse import layers_before_collapse
from phaseprune.core.headtohead import NOT_BASELINES, paired_interval
from phaseprune.core.thresholds import at_least, at_most

THRESHOLDS = {
    "sharp_width": 3,  # (a) transition interval at most this many layers wide ...
    "sharp_p_none": 0.05,  # ... and at most this share of resamples find no transition
    "barely": 0.05,  # (b) a removal "barely hurts" if accuracy falls by at most 5 points
    "collapse_drop": 0.15,  # (c) a removal "collapses at once" if accuracy falls by >= 15 points
}


def transition_evidence(summary: Mapping) -> dict:
    """(a) From an ``analyze`` summary (or a prune ``step0``): where and how sharp."""
    layers = summary["layers"]
    t, ci = summary.get("transition_layer"), summary.get("transition_ci")
    record = {
        "transition_layer": t,
        "transition_ci": ci,
        "p_no_transition": summary.get("p_no_transition"),
        "n_readout_layers": len(layers),
    }
    if t is None:
        record.update(width=None, margin_jump=None, accuracy_jump=None, sharp=False)
        return record
    before, at = layers[t - 1], layers[t]
    width = None if ci is None else ci[1] - ci[0]
    p_none = summary.get("p_no_transition") or 0.0
    record.update(
        width=width,
        margin_before=before["margin_mean"],
        margin_at=at["margin_mean"],
        margin_jump=at["margin_mean"] - before["margin_mean"],
        accuracy_before=before["accuracy"],
        accuracy_at=at["accuracy"],
        accuracy_jump=at["accuracy"] - before["accuracy"],
        sharp=width is not None
        and width <= THRESHOLDS["sharp_width"]
        and at_most(p_none, THRESHOLDS["sharp_p_none"]),
    )
    return record


def pileup(summary: Mapping) -> dict:
    """How Silent-Phase picks pile onto letters: per phase, the top letter's mean share.

    Silent layers are readout indices ``phases.silent``; Decisive ones ``phases.decisive``.
    ``gold_top_share`` is the most common gold letter's share, what a pile-up is measured
    against.
    """
    layers = summary["layers"]
    phases = summary["phases"]
    out: dict = {"gold_top_share": max(summary["gold_frequency"].values())}
    for phase in ("silent", "decisive"):
        span = phases.get(phase)
        rows = [] if not span else layers[span[0] : span[1] + 1]
        tops = [max(r["option_frequency"].items(), key=lambda kv: kv[1]) for r in rows]
        letters: dict[str, int] = {}
        for letter, _ in tops:
            letters[letter] = letters.get(letter, 0) + 1
        out[phase] = {
            "n_layers": len(rows),
            "mean_top_share": float(np.mean([share for _, share in tops])) if tops else None,
            "layers_with_top_over_90": int(sum(share > 0.9 for _, share in tops)),
            "top_letters": letters,
            "mean_entropy_bits": float(np.mean([r["pick_entropy"] for r in rows]))
            if rows
            else None,
        }
    return out


def run_label(traj: Mapping) -> str:
    """The run's name in the claims: its ``label``, else its strategy.

    Callers label runs where several share a strategy (phase-aware's variants in a head-to-head).
    """
    return traj.get("label") or traj["strategy"]


def removal_effects(traj: Mapping) -> list[dict]:
    """Every removal of a pruning run: the layer, its phase, accuracy before and after.

    ``decided_before`` says whether the model it was removed from still had a transition: if
    not, every layer of it is labelled Silent by default, not by measurement.
    """
    rows = []
    previous = traj["step0"]["eval_accuracy"]
    transition = traj["step0"].get("transition_layer")
    for s in traj["steps"]:
        rows.append(
            {
                "strategy": run_label(traj),
                "step": s["step"],
                "layer": s["removed_layer"],
                "phase": s["phase_of_removed"],
                "accuracy_before": previous,
                "accuracy_after": s["eval_accuracy"],
                "delta": s["eval_accuracy"] - previous,
                "decided_before": transition is not None,
            }
        )
        previous = s["eval_accuracy"]
        transition = s.get("transition_layer")
    return rows


def phase_effects(trajs: Sequence[Mapping], *, until_collapse: bool = True) -> dict:
    """(b), (c): accuracy change of removals grouped by the removed layer's phase.

    Only removals from a model that still had a transition count (a phase is measured only
    there). With ``until_collapse`` only removals up to and including each run's collapse step
    count (after a collapse every later removal is from a broken model).
    """
    by_phase: dict[str, list[float]] = {"decisive": [], "silent": []}
    for traj in trajs:
        last = (traj.get("collapse") or {}).get("step") if until_collapse else None
        for row in removal_effects(traj):
            if last is not None and row["step"] > last:
                break
            if not row["decided_before"]:
                continue
            by_phase.setdefault(row["phase"], []).append(row["delta"])
    return {phase: delta_stats(deltas) for phase, deltas in by_phase.items()}


def largest_changes(trajs: Sequence[Mapping]) -> dict:
    """The single removals that raised and lowered evaluation accuracy most, over all runs.

    A rise shows accuracy is not monotone in removals (or the evaluation set's noise).
    """
    rows = [row for traj in trajs for row in removal_effects(traj)]
    if not rows:
        return {"rise": None, "drop": None}
    return {
        "rise": max(rows, key=lambda r: r["delta"]),
        "drop": min(rows, key=lambda r: r["delta"]),
    }


def delta_stats(deltas: Sequence[float]) -> dict:
    """Count, mean and worst accuracy change, and the shares under each threshold."""
    d = np.asarray(deltas, dtype=float)
    if not d.size:
        return {"n": 0, "mean_delta": None, "worst_delta": None, "share_barely": None,
                "share_collapse_drop": None}  # fmt: skip
    return {
        "n": int(d.size),
        "mean_delta": float(d.mean()),
        "worst_delta": float(d.min()),
        "share_barely": float(np.mean([at_least(x, -THRESHOLDS["barely"]) for x in d])),
        "share_collapse_drop": float(
            np.mean([at_most(x, -THRESHOLDS["collapse_drop"]) for x in d])
        ),
    }


def single_removals(
    traj: Mapping,
    candidates: Sequence[Mapping],
    phases: Sequence[str] | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """(b), (c) cleanly: step 1 of an iterative run scores removing each layer alone.

    ``candidates`` are the run's ``candidates.parquet`` rows. Each layer's calibration accuracy
    without it is compared with the unpruned calibration accuracy (``calib_step0``), grouped
    by the layer's phase in the unpruned model: ``phases`` (one per decoder layer, e.g. an
    ``analyze`` run's ``phases.layer_phases`` on more items), or by default the run's own
    evaluation readout (``step0.phases.layer_phases``). Where the run kept each item's pick
    (``calib_picks`` and the candidates' ``picks``), each layer also gets ``delta_ci``, a
    paired bootstrap 95% interval over the calibration items, and the items it loses and gains.
    """
    base = traj["calib_step0"]["accuracy"]
    phases = list(phases) if phases is not None else traj["step0"]["phases"]["layer_phases"]
    rows = sorted((r for r in candidates if r["step"] == 1), key=lambda r: r["layer"])
    per_layer = [
        {"layer": int(r["layer"]), "phase": phases[int(r["layer"])],
         "accuracy": float(r["accuracy"]), "delta": float(r["accuracy"]) - base}
        for r in rows
    ]  # fmt: skip
    # runs that keep every calibration item's pick: a paired 95% interval on each delta
    gold, unpruned = traj.get("calib_gold"), traj.get("calib_picks")
    if gold is not None and unpruned is not None:
        gold = np.asarray(gold)
        before = np.asarray(unpruned) == gold
        for rec, r in zip(per_layer, rows, strict=True):
            if r.get("picks") is None:
                continue
            after = np.asarray(r["picks"]) == gold
            _, lo, hi = paired_interval(after, before, n_boot=n_boot, seed=seed)
            rec["delta_ci"] = [lo, hi]
            rec["items_lost"] = int((before & ~after).sum())
            rec["items_gained"] = int((~before & after).sum())
    out: dict = {"base_accuracy": base, "n_items": len(traj["calib_items"]), "layers": per_layer}
    for phase in ("decisive", "silent"):
        out[phase] = delta_stats([r["delta"] for r in per_layer if r["phase"] == phase])
        # layers whose removal alone costs accuracy beyond doubt (interval below zero)
        out[phase]["n_hurt_sure"] = sum(
            1 for r in per_layer if r["phase"] == phase and r.get("delta_ci", [0, 0])[1] < 0
        )
    return out


def claims(
    summary: Mapping | None,
    trajs: Sequence[Mapping],
    single: Mapping | None = None,
    *,
    reference: str = "phase-aware",
) -> dict:
    """All four claims with their numbers and a verdict each (None: not testable here).

    Args:
        summary: an ``analyze`` summary of the unpruned model, for (a).
        trajs: pruning runs on the same items, for (b)-(d) along real trajectories.
        single: :func:`single_removals` of an iterative run; when given, (b) and (c) are
            judged on it (every layer removed alone), the trajectories are reported beside.
        reference: the run (:func:`run_label`) judged in (d) against every baseline (every
            run whose strategy is not in :data:`NOT_BASELINES`).
    """
    a = transition_evidence(summary) if summary else None
    along = phase_effects(trajs)
    judged = single if single is not None else along
    decisive, silent = judged.get("decisive") or {}, judged.get("silent") or {}
    before = {run_label(t): layers_before_collapse(t) for t in trajs}
    # a model already at chance cannot collapse: (c) and (d) are not testable on it
    decided = any((t.get("collapse") or {}).get("reason") is not None
                  or t["step0"]["transition_layer"] is not None for t in trajs)  # fmt: skip
    verdict_d = None
    phase_aware = before.get(reference)
    baselines = {run_label(t): before[run_label(t)] for t in trajs
                 if t["strategy"] not in NOT_BASELINES}  # fmt: skip
    if phase_aware and baselines and decided:
        best = max(v["removed"] for v in baselines.values())
        verdict_d = phase_aware["removed"] > best or (
            phase_aware["removed"] == best
            and not phase_aware["collapsed"]
            and all(v["collapsed"] for v in baselines.values())
        )
    return {
        "a": {"evidence": a, "verdict": None if a is None else bool(a["sharp"])},
        "b": {
            "evidence": decisive,
            "along_trajectories": along.get("decisive"),
            "verdict": None
            if not decisive.get("n")
            else at_least(decisive["mean_delta"], -THRESHOLDS["barely"]),
        },
        "c": {
            "evidence": silent,
            "along_trajectories": along.get("silent"),
            "verdict": None
            if not silent.get("n") or not decided
            else at_least(silent["share_collapse_drop"], 0.5),
        },
        "d": {"evidence": before, "verdict": verdict_d},
        "thresholds": THRESHOLDS,
    }
