"""Does a multi-fidelity search (`--fidelities 1,3,9`) find a better front than a single-fidelity one in the same
CPU time, judged after retraining?

On the trained fixture teacher (benchmarks/fixtures, `--teacher-recipe`, default mini: the 12-layer mini-HuBERT),
two real searches (in-process `run_search`: Ray Tune trials, the default sampler, the `combined` space, the warm
start, no baselines) run at the same budget, steps per rung, seed and concurrency:

1. multi-fidelity, `--fidelities 1,3,9` (ParetoHalving promotes the top third at each rung), `--trials` trials;
2. single-fidelity, as many trials of `--steps` as its trials' CPU time fits in the first search's: it runs in
   rounds (the study resumed with more trials each time) until its trials' time passes the first search's, and
   only its first trials (by number) whose CPU seconds add up to no more than the first search's are kept. A
   trial's CPU time is its own process's measured parts (build, latency, head fit, training, scoring, saving; one
   thread each), or for a trial the early-stopping rule stopped, its seconds from start to its last report
   (`seconds_until_stopped`); the driver's Ray start and teacher-target build, the same for both, are left out.

Each search's front (multi: at its top fidelity, as `pareto.json` has it; single: of the kept trials) is thinned
to at most `--retrain` points spread evenly over its MACs, and each is retrained by sslc-retrain's `retrain_trial`
with the `quick` recipe (10 x --steps from the teacher's weights, the best validated weights kept): the retrained
held-out loss is what a user gets from picking that point. The headline is the hypervolume of the multi-fidelity
search's retrained (GMACs, loss) front over the single-fidelity one's, both normalised over the union of the
points with the reference point at the worst value plus 10% of the range (`sampler_quality.Normalisation`):
`fidelity_gain: X` (goal >= 1.1).

Run time: `--quick` (the quick fixture, 3 trials, 2 steps, rungs 1,3, 2 points retrained for 4 steps) only checks
that the benchmark runs; its figure means nothing. At the defaults on mini: 19-27 minutes (below).

    python benchmarks/fidelity_gain.py [--budget 40%] [--trials 16] [--steps 30] [--fidelities 1,3,9]
                                       [--retrain 4] [--teacher-recipe gpu|cpu|mini] [--quick]

Measured 2026-12-07 18:55 UTC on mini at the defaults (2 idle cores, 1158 s), with every accounting fix below
(repeats and interrupted trials never charged, early-stopped trials charged to their last report, a resumed
search's stopper seeded from the study): **fidelity_gain 0.874**, the goal (>= 1.1) missed. The multi-fidelity
search: 16 trials, 1626 training steps, 412 trial CPU s (317 s wall), fidelities reached 1x: 5, 3x: 4, 9x: 4.
The single-fidelity search: 30 trials in its rounds (480 s wall), its first 20 trained kept (392 CPU s). Fronts:
multi 4 points at 9x, single 8. Retrained (quick recipe, 300 steps): multi 0.93 / 0.98 / 1.52 / 2.19 GMACs at
0.450 / 0.445 / 0.421 / 0.182 (the same points as the run below, each 9x score within 0.006 of its retrained
loss); single 0.93 / 0.93 / 1.87 / 2.18 at 0.451 / 0.450 / 0.340 / 0.182. Hypervolume multi 0.279, single 0.319
(normalised over the union of the two fronts, so not comparable with the runs below). The same story as below:
after the same 10 warm-start shapes the multi-fidelity search tried 6 configs of its own, the single-fidelity
one 10, and one of those (1.87 GMACs, 0.340) beats the multi-fidelity front's mid-range (1.52, 0.421).
Before the last accounting fix: measured 2026-12-07 17:10 UTC (2 idle cores, 1643 s), promotion by crowded order, early
stopping on, the warm start in both searches: **fidelity_gain 0.834**, the goal (>= 1.1) missed. The
multi-fidelity search: 17 trials trained, 1896 training steps, 604 trial CPU s (336 s wall); of them 13 complete
(5 ended at 1x, 4 at 3x, 4 reached 9x), the other 4 not (the printout does not say which were stopped early).
The single-fidelity search: 51 trials in its rounds (874 s wall), its first 42 trained kept (603 CPU s). Both
counts charged any repeat (a config asked again, answered from its earlier trial) at its original's cost, a
fault found after the run and mended since (`trial_seconds`; re-measured above). Fronts: multi 4 points at 9x, single 11. Retrained (quick recipe, 300
steps): multi 0.93 / 0.98 / 1.52 / 2.19 GMACs at 0.450 / 0.445 / 0.421 / 0.182; single 0.61 / 0.98 / 2.16 / 2.19
at 0.631 / 0.378 / 0.183 / 0.173. Hypervolume multi 0.537, single 0.643. Why: both start with the same 10
warm-start shapes at the budget, so in the same time the multi-fidelity search tried 7 configs of its own and the
single-fidelity one 32. Training 4 of them to 9x made their scores exact (each 9x score is within 0.006 of its
retrained loss) but did not make them good: its mid-range points retrain to 0.42-0.45 where the single-fidelity
search found 0.378 at the same MACs, and its top point is the warm start's (0.182) where the other found 0.173.
Successive halving pays when short trials rank configs badly; on this judge they rank them well
(`proxy_fidelity`: Kendall tau 0.85 between 100-step trials and the 10x recipe), so exploring more configs beats
training fewer longer, and `--fidelities` stays off by default.
Two runs the same day while the accounting was mended: 0.812 when early-stopped trials were left out of the CPU
time (the single-fidelity search then ended with 32 trained trials counted, 440 of 560 s), and 0.604 with the
single-fidelity search in rounds whose early stopping forgot the earlier rounds' trials (1 of 56 stopped; a
resumed search now compares against them, `stopping_history`). The spread says how much one seed's path moves it.
Before: measured 2026-12-03 on mini at the defaults (2 idle cores, 2539 s), with the promotion rule of then (non-dominated
rank alone) and the combined space of then (hidden width from 0.5, per-layer knobs past the shallowest depth drawn
at random by the GP): **fidelity_gain 0.860**, the goal (>= 1.1) missed. The multi-fidelity search trained 15
trials, 3330 steps, 1013 trial CPU s; 12 of the 15 reached 9x (3 stopped at 1x, none at 3x). The single-fidelity
search got 145 trials and kept its first 60 (1012 CPU s). Fronts: multi 7 points at 9x, single 23. Retrained (quick
recipe, 300 steps): multi 0.81 / 1.29 / 2.10 / 2.19 GMACs at 0.460 / 0.313 / 0.202 / 0.182; single 0.28 / 0.66 /
1.55 / 2.19 GMACs at 0.615 / 0.438 / 0.214 / 0.182. Hypervolume multi 0.612, single 0.712. Why: by rank alone
nearly every trial is non-dominated at its rung (MACs differ between all of them), so promotion did not halve
anything: the multi-fidelity search spent its time on 9x training of 15 configs, while the single-fidelity one
explored 60 and found the small end of the front (0.28-0.66 GMACs) that the other never reached; at the top both
found the same point (trial 1, the warm start's DistilHuBERT 2-layer shape at the budget, 0.182). Promotion now
takes the top third by NSGA-II's crowded order (`sslc.search.scheduler`), which does halve (above).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks

import torch  # noqa: E402
from sampler_quality import Normalisation, pareto_2d  # noqa: E402

from benchmarks.fixtures import add_recipe_option, trained_teacher  # noqa: E402
from sslc.runs.record import open_run  # noqa: E402
from sslc.runs.trials import SECONDS_PARTS, SECONDS_UNTIL_STOPPED, Outcome, outcome_of  # noqa: E402
from sslc.search.retrain import prepare_context, retrain_plan, retrain_trial  # noqa: E402
from sslc.search.runner import SearchSettings, run_search  # noqa: E402
from sslc.search.settings import parse_fidelities  # noqa: E402

BUDGET = "40%"
TRIALS = 16
STEPS = 30
FIDELITIES = "1,3,9"
RETRAIN_POINTS = 4
CONCURRENCY = 2
MAX_SINGLE_TRIALS = 400  # rounds of the single-fidelity search stop here even if its trials cost nearly nothing


def trial_seconds(frozen) -> float | None:
    """The CPU seconds one trial's process spent on it (one thread): its measured parts, or for a trial the
    early-stopping rule stopped, its seconds until then. None: never trained (over budget, interrupted, or a
    repeat, which carries its original's measurements but cost nothing)."""
    attrs = frozen.user_attrs
    if not outcome_of(frozen).trained:
        return None
    if attrs.get(SECONDS_UNTIL_STOPPED) is not None:
        return float(attrs[SECONDS_UNTIL_STOPPED])
    parts = [p for p in SECONDS_PARTS if p != "seconds_data"]  # waiting for data is inside seconds_training
    return float(attrs.get("seconds_training") or 0.0) + sum(float(attrs.get(p) or 0.0) for p in parts)


def kept_in_time(run, seconds: float) -> tuple[list[int], float, bool]:
    """The numbers of `run`'s first trained trials (by number) whose CPU seconds add up to no more than
    `seconds` (at least the first: a search given any time trains one trial; in `--quick` a single trial can cost
    more than the whole multi-fidelity search, whose front then had nothing to be compared with), their sum, and
    whether every trained trial fits (the search ran out of trials before the time). Early-stopped trials count:
    their seconds were spent (before 2026-12-07 they were left out, which gave the single-fidelity search their
    time free)."""
    costs = {t.number: trial_seconds(t) for t in run.study.get_trials(deepcopy=False)}
    costs = {number: cost for number, cost in sorted(costs.items()) if cost is not None}
    kept, spent = [], 0.0
    for number, cost in costs.items():
        if kept and spent + cost > seconds:
            break
        spent += cost
        kept.append(number)
    return kept, spent, len(kept) == len(costs)


def spread(points: list, count: int) -> list:
    """At most `count` of `points` (sorted by MACs), evenly spaced, both ends kept."""
    if len(points) <= count:
        return points
    return [points[round(i * (len(points) - 1) / (count - 1))] for i in range(count)]


def search(settings: SearchSettings) -> tuple[object, float]:
    started = time.perf_counter()
    result = run_search(settings)
    return open_run(result.run_dir), time.perf_counter() - started


def retrained_front(run, trials, plan, context, label: str) -> list[tuple[float, float]]:
    points = []
    for trial in trials:
        t0 = time.perf_counter()
        summary = retrain_trial(run, trial, plan, context, progress=False)
        points.append((trial.macs / 1e9, summary["heldout_loss"]))
        print(f"  {label} trial {trial.number:3d}: {trial.macs / 1e9:.4f} GMACs, fidelity {trial.fidelity}x, "
              f"search score {trial.heldout_loss:.4f}, retrained {summary['heldout_loss']:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default=BUDGET, help="MACs budget of both searches, e.g. 40%%")
    parser.add_argument("--trials", type=int, default=TRIALS, help="trials of the multi-fidelity search")
    parser.add_argument("--steps", type=int, default=STEPS, help="steps of a trial's first rung (both searches)")
    parser.add_argument("--fidelities", default=FIDELITIES, help="the multi-fidelity search's rungs")
    parser.add_argument("--retrain", type=int, default=RETRAIN_POINTS, help="front points retrained per search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="quick fixture, 3 trials, few steps (smoke test)")
    add_recipe_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.steps, args.fidelities, args.retrain = 3, 2, "1,3", 2
    fidelities = parse_fidelities(args.fidelities)
    logging.getLogger("sslc").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    started = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)

    with tempfile.TemporaryDirectory(prefix="sslc-fidelity-") as tmp:
        common = dict(teacher=str(fixture.teacher_dir), data=str(fixture.train_dir), budget=args.budget,
                      steps=args.steps, baselines=False, report=False, seed=args.seed, quiet=True,
                      concurrency=CONCURRENCY)
        multi, multi_wall = search(SearchSettings(trials=args.trials, fidelities=fidelities, name="multi",
                                                  run_dir=Path(tmp) / "multi", **common))
        numbers, cpu, _ = kept_in_time(multi, math.inf)
        trained = [t for t in multi.trials() if t.number in numbers]
        steps = sum(t.steps_done or t.stopped_at_step or 0 for t in trained)
        reached = sorted(t.fidelity for t in multi.trials() if t.outcome == Outcome.COMPLETE)
        print(f"multi-fidelity search ({args.fidelities}): {len(trained)} trials, {steps} training steps, "
              f"{cpu:.0f} trial CPU s ({multi_wall:.0f} s wall); fidelities reached "
              f"{ {f: reached.count(f) for f in fidelities} }", flush=True)

        # The single-fidelity search runs in rounds, each resuming the study with more trials, until its trials'
        # time passes the multi-fidelity search's (how many that takes is not known before: early stopping makes
        # trials cost anything from a few steps to all of them).
        given, single_wall, ran_out = len(trained), 0.0, True
        while ran_out and given <= MAX_SINGLE_TRIALS:
            single, wall = search(SearchSettings(trials=given, name="single", run_dir=Path(tmp) / "single",
                                                 **common))
            single_wall += wall
            kept, spent, ran_out = kept_in_time(single, cpu)
            given += 2 if args.quick else max(4, len(trained) // 2)
        print(f"single-fidelity search: {len(single.trials())} trials ({single_wall:.0f} s wall), the first "
              f"{len(kept)} trained kept "
              f"({spent:.0f} trial CPU s of the multi-fidelity search's {cpu:.0f})"
              + (" -- it ran out of trials before the time: the comparison favours the multi-fidelity search"
                 if ran_out else ""), flush=True)

        complete = [t for t in single.trials() if t.outcome == Outcome.COMPLETE and t.number in set(kept)]
        front_points = set(pareto_2d([(t.macs, t.heldout_loss) for t in complete]))
        single_front = sorted((t for t in complete if (t.macs, t.heldout_loss) in front_points), key=lambda t: t.macs)
        multi_front = sorted(multi.front(), key=lambda t: t.macs)
        print(f"fronts: multi-fidelity {len(multi_front)} points (at fidelity "
              f"{max((t.fidelity for t in multi_front), default=1)}x), single-fidelity {len(single_front)}; "
              f"retraining up to {args.retrain} of each (quick recipe)", flush=True)

        retrained = {}
        for label, run, front in (("multi", multi, multi_front), ("single", single, single_front)):
            plan = retrain_plan(run, recipe="quick", **({"steps": 4} if args.quick else {}))
            context = prepare_context(run)
            retrained[label] = retrained_front(run, spread(front, args.retrain), plan, context, label)

    normalise = Normalisation(list(retrained.values()))
    volumes = {label: normalise.hypervolume(points) for label, points in retrained.items()}
    print(f"hypervolume of the retrained fronts (normalised, reference {normalise.reference}): "
          f"multi {volumes['multi']:.4f}, single {volumes['single']:.4f}; total {time.perf_counter() - started:.0f} s")
    gain = volumes["multi"] / volumes["single"] if volumes["single"] > 0 else float("inf")
    print(f"fidelity_gain: {gain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
