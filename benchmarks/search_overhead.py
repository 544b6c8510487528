"""Share of a search's wall time not spent inside trial training (Ray + Tune + Optuna + counting + building).

Runs a real search (`sslc.search.runner.run_search`: a local Ray started for it, Tune, Optuna ask/tell on SQLite,
the default sampler, GP) of 16 trials on the `random:tiny` teacher with demo audio, at the CLI's batch (4 crops of
2 s) and enough steps that training is most of a trial, and times it from outside. Definitions:

- W: wall time of the whole `run_search` call (teacher and data, Ray start, all trials, Pareto front, Ray stop);
- K: the trial concurrency the search used (Ray slots); K x W is the capacity in slot-seconds;
- T: the sum over COMPLETE trials of `seconds_training` (the time each trial spent in its training loop);
- overhead share = 1 - T / (K x W): the part of the capacity spent on anything but training steps, one-off
  costs and idle slots included. This is the headline.

It also prints where the overhead goes: one-off phases timed in the driver; per-trial overhead from the study's
timestamps (ask -> tell of a trial, minus its training time; plus the gaps between one trial and the next on a
slot); slot idle time at the start and at the tail (one slot waiting for the other's last trial); and, replayed
in this process on the same configs without Ray, how much of a trial is building the student, measuring latency,
the held-out evaluation and saving the checkpoint. Two more views: the share without the one-off start-up (what
a long search converges to) and the share if trial lengths were perfectly balanced across slots.

The trial length is chosen for a time target: before the search, one trial of the largest uniformly pruned config
within the budget is timed in this process, and the steps are set so that the trials fill about
`--time-target` seconds of every slot (at least MIN_STEPS); it prints what it chose. So the whole run takes about
the target plus a minute or two on any machine (the fixed start-up weighs more on a short run: at ~12 s trials
the share was ~2x that at ~30 s). `--quick` runs 2 trials of 5 steps at a 40% budget with the random sampler (so
over-budget configs, COMPLETE in Optuna but never trained, are read as a default run may read them): it checks
that the benchmark still works (CI runs it), its figure means nothing. Trials are read by the run record's
outcomes (`sslc.runs.trials.outcome_of`), never by Optuna's state alone.

The last line is the headline: `search_overhead: <share>` (goal <= 0.05).

    python benchmarks/search_overhead.py [--time-target 240] [--steps N] [--trials 16] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sslc.search.runner as runner  # noqa: E402
from sslc.runs.storage import load_study  # noqa: E402
from sslc.runs.trials import Outcome, outcome_of  # noqa: E402

TEACHER = "random:tiny"
TRIALS = 16
# Seconds of training per slot the steps are sized for: with Ray's start-up and the in-process replay the run
# takes ~5 min here and stays under 10 min on a machine 2.4x slower.
TIME_TARGET = 240.0
MIN_STEPS = 100
CALIBRATION_STEPS = 30
BATCH_SIZE = 4
CROP_SECONDS = 2.0
LATENCY_REPEATS = 1


BUDGET = "70%"
# --quick: a budget and sampler that propose over-budget configs, so the quick run reads trials Optuna holds as
# COMPLETE with placeholder values (never trained, no seconds_training), as a default run may.
QUICK_BUDGET, QUICK_SAMPLER = "40%", "random"


def settings_for(run_dir: Path, steps: int, trials: int = TRIALS, budget: str = BUDGET,
                 sampler: str = runner.SearchSettings.sampler) -> runner.SearchSettings:
    return runner.SearchSettings(
        teacher=TEACHER, data="demo", budget=budget, trials=trials, steps=steps, batch_size=BATCH_SIZE,
        crop_seconds=CROP_SECONDS, name="overhead", run_dir=run_dir, latency_repeats=LATENCY_REPEATS,
        baselines=False, quiet=True, early_stopping=False, sampler=sampler, seed=0,
    )


def trial_setup(run_dir: Path, steps: int):
    """What a trial of the benchmark's search gets, built in this process with the search's public functions."""
    from sslc.metrics import count_macs
    from sslc.search.inputs import prepare_inputs
    from sslc.search.trial import TrialSetup

    settings = settings_for(run_dir, steps)
    context = prepare_inputs(TEACHER, "demo", run_dir, CROP_SECONDS, 0)
    budget = runner.search_budget(settings, count_macs(context.teacher.config).total)
    return TrialSetup(context, run_dir, runner.trainer_config(settings), budget, LATENCY_REPEATS)


def seconds_per_step(run_dir: Path) -> float:
    """Training seconds a step takes here (one thread, as a trial) for the largest uniformly pruned config
    within the budget (trials are mostly smaller), from one short trial."""
    import torch

    from sslc.metrics import count_macs
    from sslc.search.baselines import uniform_to_budget
    from sslc.search.trial import train_and_measure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setup = trial_setup(run_dir, CALIBRATION_STEPS)
        teacher = setup.run.teacher.config
        config = uniform_to_budget(teacher, setup.budget.max_macs, setup.budget.seconds)
        macs = count_macs(config.student_architecture(teacher), seconds=setup.budget.seconds).total
        train_and_measure(setup, config.to_dict(), None, None, macs)  # first-call costs, the targets cache
        result = train_and_measure(setup, config.to_dict(), None, None, macs)
    finally:
        torch.set_num_threads(threads)
    if result["status"] != "completed":
        raise RuntimeError(f"calibration trial ended {result['status']}: {result.get('reason')}")
    return result["seconds_training"] / result["steps_done"]


class Phases:
    """Wraps driver-side functions to time the phases of one search (wall time; first start, total)."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.first_start: dict[str, float] = {}
        self.saved = []

    def wrap(self, owner, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        self.saved.append((owner, attr, original))

        def timed(*args, **kwargs):
            started = time.time()
            self.first_start.setdefault(label, started)
            try:
                return original(*args, **kwargs)
            finally:
                self.total[label] = self.total.get(label, 0.0) + time.time() - started

        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, original in reversed(self.saved):
            setattr(owner, attr, original)


def run_timed_search(run_dir: Path, settings: runner.SearchSettings) -> tuple[float, float, Phases]:
    import ray
    from ray.tune import Tuner

    phases = Phases()  # public entry points only: the runner's own helpers may change shape
    phases.wrap(runner, "prepare_inputs", "prepare_inputs")
    phases.wrap(ray, "init", "ray_start")
    phases.wrap(Tuner, "fit", "tuner_fit")
    phases.wrap(ray, "shutdown", "ray_shutdown")
    started = time.time()
    try:
        runner.run_search(settings)
    finally:
        phases.restore()
    return started, time.time() - started, phases


def assign_slots(trials, slots: int) -> list[list]:
    """Which trials ran one after the other on the same slot: greedy by start time (at most `slots` overlap)."""
    lanes: list[list] = [[] for _ in range(slots)]
    for trial in sorted(trials, key=lambda t: t.datetime_start):
        free = [lane for lane in lanes if not lane or lane[-1].datetime_complete <= trial.datetime_start]
        lane = min(free or lanes, key=lambda ln: ln[-1].datetime_complete if ln else trial.datetime_start)
        lane.append(trial)
    return lanes


def replay_in_process(run_dir: Path, trials) -> dict[str, list[float]]:
    """A trial's work other than training, timed in this process on the same configs (no Ray, 1 step)."""
    import torch

    import sslc.search.trial as trial_module
    from sslc.search.inputs import RunInputs
    from sslc.search.trial import train_and_measure
    from sslc.trainers import DistillationStep

    torch.set_num_threads(1)  # as in a trial (cpus_per_trial=1)
    setup = trial_setup(run_dir, steps=1)
    parts: dict[str, list[float]] = {}
    current: dict[str, float] = {}
    saved = []

    def wrap(owner, attr, label):
        original = getattr(owner, attr)
        saved.append((owner, attr, original))

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                current[label] = current.get(label, 0.0) + time.perf_counter() - started

        setattr(owner, attr, timed)

    wrap(RunInputs, "build_student", "build student")
    wrap(trial_module, "measure_latency", "measure latency")
    wrap(DistillationStep, "evaluate", "held-out eval")
    wrap(trial_module.torch, "save", "save checkpoint")
    try:
        first = trials[0]  # builds the teacher-targets cache and pays first-call costs: not counted
        train_and_measure(setup, first.user_attrs["config"], run_dir / "warm", None, first.user_attrs["macs"])
        for trial in trials:
            current.clear()
            started = time.perf_counter()
            result = train_and_measure(
                setup, trial.user_attrs["config"], run_dir / str(trial.number), None, trial.user_attrs["macs"]
            )
            total = time.perf_counter() - started - result["seconds_training"]
            current["other (targets lookup, heads, optimizer, ...)"] = total - sum(current.values())
            current["total"] = total
            for key, value in current.items():
                parts.setdefault(key, []).append(value)
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps per trial (default: sized for --time-target)")
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--time-target", type=float, default=TIME_TARGET,
                        help="seconds of training per slot the steps are sized for")
    parser.add_argument("--quick", action="store_true", help="2 trials of 5 steps: does the benchmark still run?")
    args = parser.parse_args()
    n_trials, steps = (2, 5) if args.quick else (args.trials, args.steps)
    with tempfile.TemporaryDirectory(prefix="sslc-overhead-") as tmp:
        slots_planned = max(1, min(os.cpu_count() or 1, n_trials))
        if steps is None:
            per_step = seconds_per_step(Path(tmp) / "calibrate")
            steps = max(MIN_STEPS, int(args.time_target * slots_planned / (n_trials * per_step)))
            print(f"calibration: {per_step:.4f} s a step for the largest uniform config within the budget (one "
                  f"thread); {steps} steps a trial fill ~{args.time_target:g} s on each of {slots_planned} slot(s)")
        else:
            print(f"{'quick mode: ' if args.quick else ''}{n_trials} trials x {steps} steps, as asked")
        run_dir = Path(tmp) / "run"
        settings = (settings_for(run_dir, steps, n_trials, QUICK_BUDGET, QUICK_SAMPLER) if args.quick
                    else settings_for(run_dir, steps, n_trials))
        search_start, wall, phases = run_timed_search(run_dir, settings)
        search_end = search_start + wall
        study = load_study(run_dir)
        trials = study.get_trials(deepcopy=False)
        settings = study.user_attrs["settings"]
        # By the run record's outcomes: Optuna's COMPLETE also holds over-budget configs (never trained).
        complete = [t for t in trials if outcome_of(t) == Outcome.COMPLETE]
        infeasible = [t for t in trials if outcome_of(t) == Outcome.INFEASIBLE]
        others = [t for t in trials if outcome_of(t) not in (Outcome.COMPLETE, Outcome.INFEASIBLE)]
        slots = max(1, min(settings.get("concurrency") or int(os.cpu_count() // settings["cpus_per_trial"]), n_trials))

        def seconds(t) -> float:
            return (t.datetime_complete - t.datetime_start).total_seconds()

        training = {t.number: t.user_attrs["seconds_training"] for t in complete}
        total_training = sum(training.values())
        share = 1.0 - total_training / (slots * wall)

        # ---- the trial window, slot by slot ---------------------------------------------------------------
        asked = [t for t in trials if t.datetime_start and t.datetime_complete]
        lanes = assign_slots([t for t in asked if not t.user_attrs.get("infeasible")], slots)
        first_ask = min(t.datetime_start for t in asked).timestamp()
        last_tell = max(t.datetime_complete for t in asked).timestamp()
        lane_ends = [lane[-1].datetime_complete.timestamp() for lane in lanes if lane]
        tail_idle = sum(last_tell - end for end in lane_ends) + (slots - len(lane_ends)) * (last_tell - first_ask)
        firsts = {lane[0].number for lane in lanes if lane}
        in_lanes = [t for lane in lanes for t in lane]
        startup_overhead = [seconds(t) - training.get(t.number, 0.0) for t in in_lanes if t.number in firsts]
        steady = [seconds(t) - training.get(t.number, 0.0) for t in in_lanes if t.number not in firsts]
        gaps = []  # previous tell -> next ask on the same slot (Tune's loop; infeasible asks happen in here too)
        for lane in lanes:
            gaps += [(b.datetime_start - a.datetime_complete).total_seconds() for a, b in zip(lane, lane[1:])]
        lead_in = sum(lane[0].datetime_start.timestamp() - first_ask for lane in lanes if lane)

        one_off = {
            "prepare_inputs (teacher, demo audio, fingerprint)": phases.total.get("prepare_inputs", 0.0),
            "study, budget and MAC counting before Ray": phases.first_start.get("ray_start", search_start)
            - phases.first_start.get("prepare_inputs", search_start) - phases.total.get("prepare_inputs", 0.0),
            "Ray start": phases.total.get("ray_start", 0.0),
            "Tune set-up until the first ask": first_ask - phases.first_start.get("ray_start", first_ask)
            - phases.total.get("ray_start", 0.0),
            f"after the last tell (Tune and Ray stop: ray.shutdown {phases.total.get('ray_shutdown', 0.0):.2f} s; "
            "Pareto files)": search_end - last_tell,
            "before prepare_inputs (space, settings)": phases.first_start.get("prepare_inputs", search_start) - search_start,
        }
        in_window = slots * (last_tell - first_ask)
        print(f"search: {n_trials} trials x {steps} steps (batch {BATCH_SIZE} x {CROP_SECONDS:g} s) on {TEACHER}, "
              f"demo audio, {slots} concurrent slot(s), sampler {runner.SearchSettings.sampler}, {os.cpu_count()} CPU cores")
        print(f"trials: {len(complete)} complete, {len(infeasible)} over budget (not trained), {len(others)} other")
        print(f"W   run_search wall time              {wall:8.2f} s   K x W = {slots * wall:.2f} slot-s")
        print(f"T   training (sum of seconds_training) {total_training:7.2f} s   "
              f"median {statistics.median(training.values()):.2f} s a trial")
        print(f"    not training: K x W - T            {slots * wall - total_training:7.2f} slot-s, made of:")
        print("  one-off, driver wall time x K slots idle:")
        for label, value in one_off.items():
            print(f"    {label:50s} {value:6.2f} s  -> {slots * value:6.2f} slot-s")
        print(f"  inside the trial window ({last_tell - first_ask:.2f} s x {slots} = {in_window:.2f} slot-s):")
        print(f"    first trial on each slot, beyond training (worker process, imports incl. torch._dynamo, "
              f"targets cache): {', '.join(f'{v:.2f}' for v in startup_overhead)} s")
        print(f"    slots waiting for their first trial                {lead_in:6.2f} slot-s")
        if steady:
            print(f"    later trials, ask -> tell minus training: median {statistics.median(steady):.3f} s, "
                  f"sum {sum(steady):6.2f} slot-s")
        if gaps:
            print(f"    gaps between trials on a slot (tell -> next ask, incl. {len(infeasible)} over-budget asks): "
                  f"median {statistics.median(gaps):.3f} s, sum {sum(gaps):6.2f} slot-s")
        print(f"    tail: slots idle after their last trial            {tail_idle:6.2f} slot-s")

        replay = replay_in_process(Path(tmp) / "replay", complete)
        print("  per trial, the same configs replayed in this process without Ray (median):")
        for key, values in replay.items():
            if key != "total":
                print(f"    {key:46s} {statistics.median(values):.3f} s")
        in_process = statistics.median(replay["total"])
        if steady:
            print(f"    => of the {statistics.median(steady) + statistics.median(gaps or [0.0]):.3f} s a trial costs "
                  f"beyond training in the search, ~{in_process:.3f} s is this work and the rest Ray/Tune/Optuna")

        one_off_slot_s = slots * sum(one_off.values()) + sum(startup_overhead) + lead_in
        accounted = one_off_slot_s + sum(steady) + sum(gaps) + tail_idle
        print(f"  check: the parts above add up to {accounted:.2f} of the {slots * wall - total_training:.2f} "
              "slot-s not spent training")
        steady_share = 1.0 - total_training / (slots * wall - one_off_slot_s)
        balanced_share = 1.0 - total_training / (slots * wall - tail_idle)
        print(f"share without the one-off start-up/shut-down (a long search's limit): {steady_share:.3f}")
        print(f"share without the tail (as if the slots' trial lengths were balanced): {balanced_share:.3f}")
        print(f"overhead share = 1 - T / (K x W) = 1 - {total_training:.2f} / ({slots} x {wall:.2f})")
        print(f"search_overhead: {share:.3f}")


if __name__ == "__main__":
    main()
