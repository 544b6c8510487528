"""The pick after retraining (`sslc-search --finalists K`): the search's last stage.

A short trial's score ranks students only roughly: after a longer training the order changes (in
`benchmarks/anchor_margin.py` a 2-layer student at 30% of the MACs overtook 3-layer ones at 40% once retrained).
So the search ends by retraining K trials near the budget (`pick_finalists`) by a recipe, through the retrain driver
(`sslc.search.retrain`: the same training, validation, resume and record as `sslc-retrain`), scoring them by the
study's protocol and, when probe data is given, by sslc-probe's probe of their retrained weights. The winner is
the lowest probe error (highest accuracy) when probed, else the lowest retrained held-out loss; both are
recorded on the study (`finalists`, beside each finalist's `retrain:<n>` and `probe:<task>:<n>`), in
`pareto.json` and the report.

Rerunning the search (a resumed study whose trials are done) resumes the stage: a finished retrain is not redone
(the driver's own check), a stopped one continues from its checkpoint, and a finalist already probed with the
same settings is not probed again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sslc.errors import SearchFailed
from sslc.runs.record import RunRecord, open_run
from sslc.runs.study import record_finalists
from sslc.runs.trials import Outcome, TrialRecord

from .settings import SearchSettings

log = logging.getLogger("sslc.finalists")

# Finalists come from the trials costing at least this share of the budget's MACs (when K of them exist).
# A point far below the budget leaves compute unused; the ranking errors of short trials seen so far (30% vs 40%
# of the teacher's MACs at a 40% budget) stay within a factor of 2.
NEAR_BUDGET = 0.5


def check_finalists(settings: SearchSettings) -> None:
    """Everything about the finalist stage that can be wrong, before the search starts (a bad recipe or probe
    corpus must not surface after hours of trials). UserError in one line."""
    from sslc.probes.labels import check_task, train_and_heldout
    from sslc.trainers.recipes import recipe

    if settings.finalists is None:
        return
    recipe(settings.finalist_recipe)
    if settings.probe_data is not None:
        check_task(settings.probe_task, settings.probe_units)
        train_and_heldout(settings.probe_data, settings.probe_task, settings.probe_units, settings.probe_heldout)


def pick_finalists(run: RunRecord, k: int) -> list[TrialRecord]:
    """The K trials to retrain, best short-trial score first.

    "The K best" of a multi-objective search needs a rule. Here: among the trained trials within every limit of
    the budget that cost at least NEAR_BUDGET of its MACs (the K costliest when fewer do), at the top fidelity
    reached, the finalists spread over the two knobs where short trials and retraining disagree most, depth and
    the CNN front end:
    1. the lowest short-trial loss of all (the lead);
    2. the best of the depth farthest from the lead's (a tie: the lower loss), so the shallowest and the deepest
       are both retrained;
    3. the lead's twin with the other CNN (cut if the lead keeps the whole CNN, whole if it cuts it): the trial at
       the lead's depth whose Transformer is closest to the lead's (`transformer_distance`; a tie: the lower loss);
    4. then each time the best of the depth farthest from the depths taken, and last the lowest losses left.
    Depth: in `benchmarks/anchor_margin.py` (mini-HuBERT, 40%) a 12-layer thin student with a higher distillation
    loss than a 2-layer one at equal MACs had the lower phone error once retrained and probed; taking the depths
    with the K lowest losses would leave it out, since every shallower depth between them scores lower too, and
    lowest loss alone takes K near-identical neighbours just under the budget. The CNN: a short trial under-rates
    a cut front end (`benchmarks/knob_costs.py`: its cost falls as training grows), so at 55% the lead's
    CNN-cut twin, not a finalist under depth alone, was never retrained. The twin is chosen by shape, not by
    loss: short trials rank CNN-cut students among themselves by how deep the cut is as much as by their design
    (at 55% the lowest loss among them was uniform pruning's 12x192 with the CNN at 62%, a shape unlike the
    lead's), and what is to be learned is whether the lead's design gains from the cut.
    """
    budget = run.record.budget
    convention = budget.convention if budget is not None else "seconds"

    def macs(trial: TrialRecord) -> int:
        return trial.budgeted_macs(convention) or 0

    def fits(trial: TrialRecord) -> bool:
        return budget is None or not budget.violations(macs(trial), trial.model_params, trial.latency_ms)

    def score(trial: TrialRecord) -> tuple[float, int]:
        return trial.heldout_loss, trial.number

    def depth(trial: TrialRecord) -> int:
        return len((trial.config or {}).get("layers") or [])

    def cnn_channels(trial: TrialRecord) -> int:
        return sum((trial.config or {}).get("conv_channels") or [])

    trained = [t for t in run.trials() if t.outcome == Outcome.COMPLETE and t.heldout_loss is not None
               and t.repeat_of is None and fits(t)]
    if not trained:
        return []
    top_fidelity = max(t.fidelity for t in trained)  # losses compare only at one fidelity (the front's)
    trained = [t for t in trained if t.fidelity == top_fidelity]
    top = budget.max_macs if budget is not None and budget.max_macs else max(macs(t) for t in trained)
    pool = sorted((t for t in trained if macs(t) >= NEAR_BUDGET * top), key=score)
    if len(pool) < k:
        pool = sorted(sorted(trained, key=lambda t: (-macs(t), t.number))[:k], key=score)
    # The teacher's whole front end and width; a study that did not record its teacher: the most any trial kept.
    teacher = run.record.teacher.architecture or {}
    teacher_conv = teacher.get("conv_layers")
    whole_cnn = sum(c["channels"] for c in teacher_conv) if teacher_conv else max(map(cnn_channels, pool))
    teacher_width = teacher.get("embed_dim") or max((t.config.get("hidden") or 0 for t in pool if t.config), default=0)

    def cut(trial: TrialRecord) -> bool:
        return cnn_channels(trial) < whole_cnn

    best_of_depth: dict[int, TrialRecord] = {}
    for trial in pool:
        best_of_depth.setdefault(depth(trial), trial)
    chosen = [pool[0]]

    def farthest_depth() -> TrialRecord | None:
        taken = {depth(t) for t in chosen}
        left = [t for d, t in best_of_depth.items() if d not in taken]
        return min(left, key=lambda t: (-min(abs(depth(t) - d) for d in taken), score(t))) if left else None

    def other_cnn_of_lead() -> TrialRecord | None:
        lead = chosen[0]
        twins = [t for t in pool if depth(t) == depth(lead) and cut(t) != cut(lead)]
        return min(twins, key=lambda t: (transformer_distance(t.config or {}, lead.config or {}, teacher_width),
                                         score(t)), default=None)

    for pick in (farthest_depth, other_cnn_of_lead):
        if len(chosen) < k and (trial := pick()) is not None:
            chosen.append(trial)
    while len(chosen) < k and (trial := farthest_depth()) is not None:
        chosen.append(trial)
    rest = [t for t in pool if t not in chosen]
    return sorted((chosen + rest)[:k], key=score)


def transformer_distance(a: dict, b: dict, teacher_width: int) -> float:
    """How unlike two configs' Transformers are: the mean relative difference |x - y| / max(x, y) over the hidden
    width and each layer's heads and FFN units (layer by layer; configs of one depth). 0: the same Transformer."""
    def relative(x: float, y: float) -> float:
        return abs(x - y) / max(x, y) if max(x, y) > 0 else 0.0

    pairs = [(a.get("hidden") or teacher_width, b.get("hidden") or teacher_width)]
    for knob in ("heads", "ffn"):
        pairs += list(zip(a.get(knob) or [], b.get(knob) or []))
    return sum(relative(x, y) for x, y in pairs) / len(pairs)


def _probe_settings(settings: SearchSettings) -> dict | None:
    if settings.probe_data is None:
        return None
    return {"data": str(settings.probe_data), "heldout": str(settings.probe_heldout or ""),
            "task": settings.probe_task, "units": settings.probe_units, "epochs": settings.probe_epochs}


def run_finalists(settings: SearchSettings, run_dir: Path, say: Callable[[str], None] = print,
                  progress: bool = True) -> dict | None:
    """Retrain (and probe) the finalists of the finished search in `run_dir`, name the winner, record it all;
    returns the study's `finalists` record (None when no trained trial is within the budget)."""
    from .retrain import retrain

    run = open_run(run_dir)
    finalists = pick_finalists(run, settings.finalists)
    if not finalists:
        say("finalists: no trained trial is within the budget: nothing to retrain")
        return None
    numbers = [t.number for t in finalists]
    fewer = f" (only {len(numbers)} fit the rule)" if len(numbers) < settings.finalists else ""
    say(f"finalists: trials {', '.join(map(str, numbers))}{fewer}, near the budget and spread over depth and the "
        f"CNN, retrained by recipe {settings.finalist_recipe}")
    results = {r["trial"]: r for r in retrain(run_dir, numbers=numbers, recipe=settings.finalist_recipe,
                                             steps=settings.finalist_steps, progress=progress, say=say)}
    unfinished = [n for n in numbers if results[n]["status"] != "completed"]
    if unfinished:
        # A training fault, not bad input (exit 1); the search and the finished retrains are kept.
        raise SearchFailed(f"finalist retrain of trial(s) {', '.join(map(str, unfinished))} did not complete: "
                        f"{results[unfinished[0]].get('reason') or results[unfinished[0]]['status']} (its retrain/<trial>/result.json)")
    run.reload()
    probe = _probe_settings(settings)
    metrics = _probe_finalists(run, numbers, settings, probe, say) if probe else {}
    rows = [{
        "trial": n,
        "macs": results[n]["macs"],
        "short_trial_loss": run.trial(n).heldout_loss,
        "retrained_loss": results[n]["heldout_loss"],
        "retrained_steps": results[n]["steps"],
        "probe_metric": metrics.get(n),
    } for n in numbers]
    by_loss = min(rows, key=lambda r: (r["retrained_loss"], r["trial"]))
    winner, by = by_loss, "retrained_loss"
    if probe:
        higher_better = settings.probe_task == "classify"  # accuracy; ctc: error rate
        winner = min(rows, key=lambda r: ((-1 if higher_better else 1) * r["probe_metric"], r["retrained_loss"],
                                          r["trial"]))
        by = f"probe ({settings.probe_task}: {'accuracy' if higher_better else 'error rate'})"
    record = {
        "k": settings.finalists,
        "rule": f"trials within the budget costing >= {NEAR_BUDGET:.0%} of its MACs, spread over depth and the CNN: "
                f"the lowest short-trial loss, the best of the farthest depth, the lead's twin with the other CNN "
                f"(cut / whole; the closest Transformer at its depth), the best of each farthest depth left, then "
                f"the lowest losses left",
        "recipe": results[numbers[0]]["recipe"],
        "label": results[numbers[0]]["label"],
        "probe": probe,
        "budget_macs": run.record.budget.max_macs if run.record.budget else None,
        "finalists": rows,
        "winner": winner["trial"],
        "winner_by": by,
        "lowest_retrained_loss": by_loss["trial"],
    }
    record_finalists(run.study, record)
    from .pareto import write_pareto  # pareto.json names the winner

    write_pareto(run.study, run.run_dir)
    say(describe(record))
    return record


def _probe_finalists(run: RunRecord, numbers: list[int], settings: SearchSettings, probe: dict,
                     say: Callable[[str], None]) -> dict[int, float]:
    """Each finalist's retrained weights probed by sslc-probe's code, the finalists at once as Ray tasks
    (`probe_points`); a probe already recorded on the study with the same settings (and the same retrained
    weights) is reused."""
    from sslc.probes.labels import train_and_heldout
    from sslc.probes.train import ProbeSettings
    from sslc.runs.study import record_probe

    from .probe_points import probe_points
    from .runner import start_ray

    train, heldout = train_and_heldout(settings.probe_data, settings.probe_task, settings.probe_units,
                                       settings.probe_heldout)
    recorded = run.record.probes.get(settings.probe_task, {})
    metrics, finished = {}, {n: run.record.retrains[n].get("finished_at") for n in numbers}
    for n in numbers:
        earlier = recorded.get(n) or {}
        if earlier.get("finalist_probe") == probe and earlier.get("retrain_finished_at") == finished[n]:
            metrics[n] = earlier["metric"]
    todo = [n for n in numbers if n not in metrics]
    if todo:
        say(f"probing finalist trial(s) {', '.join(map(str, todo))} ({settings.probe_task}, "
            f"{settings.probe_epochs} epochs)")
        start_ray(None)  # the run's files are on this machine
        rows = probe_points([f"{run.run_dir}:{n}" for n in todo], train, heldout,
                            ProbeSettings(settings.probe_task, epochs=settings.probe_epochs), settings.probe_units)
        for n, row in zip(todo, rows):
            row.update(finalist_probe=probe, retrain_finished_at=finished[n])
            record_probe(run.study, settings.probe_task, n, row)
            metrics[n] = row["metric"]
    run.reload()
    return metrics


def describe(record: dict) -> str:
    """The stage's result in a few lines (printed at the end of a search; the report says the same)."""
    metric = (record.get("probe") or {}).get("task")
    lines = [f"finalists ({record['label']}):"]
    for r in record["finalists"]:
        probed = f", probe {metric} {r['probe_metric']:.4f}" if r.get("probe_metric") is not None else ""
        lines.append(f"  trial {r['trial']}: {r['macs'] / 1e9:.3f} GMACs, short-trial loss {r['short_trial_loss']:.4f}"
                     f", retrained {r['retrained_loss']:.4f}{probed}")
    lines.append(winner_line(record))
    return "\n".join(lines)


def winner_line(record: dict) -> str:
    line = f"winner within the budget: trial {record['winner']} (by {record['winner_by']})"
    if record["lowest_retrained_loss"] != record["winner"]:
        line += f"; the lowest retrained loss is trial {record['lowest_retrained_loss']}'s"
    return line
