"""Does the `hidden` knob (thin students) push the `combined` front out? Hypervolume with and without it.

On the trained fixture teacher (benchmarks/fixtures, recipe gpu: 3 layers, 192 wide, pretrained on synthesized
English speech), two spaces search the same budget: `combined` as shipped (hidden width 0.5-1.0 of the
teacher's) and `combined` with `hidden: 1.0` (every student keeps the teacher's width, as before the knob
existed). Each search asks TRIALS feasible configs from the search's default sampler exactly as the searcher
does (`OptunaAskTellSearcher.next_feasible`), trains each for STEPS distillation steps with the search's trainer
(`run_short_trial`, default targets and protocol, batches of BATCH 1 s crops, one CPU thread) and scores it on the
held-out crops. Both objectives are minimised: held-out loss and GMACs per 10 s.

Per budget (30% and 50% of the teacher's MACs), the points of both spaces are normalised together (best..worst
per objective), the reference point is the worst value plus 10% of the range, and the exact 2-D hypervolume of
each space's front is computed. The ratio hypervolume(with hidden) / hypervolume(without) above 1 means thin
students add points the full-width search cannot reach at that budget. With SEEDS seeds the ratio is the median
over seeds. The last line is `thin_front: <the smaller of the two budgets' ratios>`.

Run time: on 2 cores about 8 minutes by default (4 searches of TRIALS trials per seed); `--quick` (4 trials,
2 steps, the quick fixture, 50% only) only checks that the benchmark runs (CI runs it).

    python benchmarks/thin_front.py [--trials 14] [--steps 40] [--seeds 1] [--quick]

Measured 2026-11-30 (defaults, 231 s on 2 shared cores), every student's heads started as the least-squares fit
to the targets (sslc.trainers.heads.fit_heads_): ratio 3.200 at 30%, 1.859 at 50%: thin_front 1.859. With the
knob the best loss is the same at about half the MACs (30%: 0.932 at 0.159 GMACs, width 96, against 0.934 at
0.290 GMACs full width; 50%: 0.946 at 0.254 G against 0.942 at 0.426 G), and the front reaches 0.145 GMACs.
Before that start (thin heads placing the kept channels back, pruned ones predicted as zero), the same run gave
1.697 / 1.139 but a worse best loss with the knob (1.203 vs 1.080): 40 steps were too few for a thin student to
recover its pruned channels, so short trials under-rated thin students (benchmarks/probe_fidelity.py: tau -0.067
then, 0.644 now).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks

import optuna  # noqa: E402
import torch  # noqa: E402
from sampler_quality import Normalisation, pareto_2d  # noqa: E402

from sslc.budget import Budget, parse_budget  # noqa: E402
from sslc.metrics import count_macs  # noqa: E402
from sslc.search.inputs import prepare_inputs  # noqa: E402
from sslc.search.runner import SearchSettings  # noqa: E402
from sslc.search.samplers import make_sampler, startup_trials  # noqa: E402
from sslc.search.searcher import OptunaAskTellSearcher  # noqa: E402
from sslc.spaces import SearchSpace  # noqa: E402
from sslc.trainers import TrainerConfig, run_short_trial  # noqa: E402

BUDGETS = ("30%", "50%")
TRIALS = 14
STEPS = 40
SEEDS = 1
BATCH = 4
CROP_SECONDS = 1.0
DEFAULT_SAMPLER = SearchSettings.__dataclass_fields__["sampler"].default

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spaces() -> dict[str, SearchSpace]:
    combined = SearchSpace.load("combined")
    full_width = SearchSpace.from_dict({**combined.to_dict(), "hidden": 1.0}, name="combined-full-width")
    return {"with hidden": combined, "without": full_width}


def search(space, inputs, targets, budget, trainer, trials: int, seed: int) -> dict:
    """`trials` feasible configs of `space`, asked as the search asks them, each short-trained and scored."""
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(DEFAULT_SAMPLER, seed,
                                                                                          trials, 1))
    teacher_config = inputs.teacher.config
    searcher = OptunaAskTellSearcher(study, space, teacher_config, budget, ["loss", "macs"], trials,
                                     startup_trials=startup_trials(DEFAULT_SAMPLER, trials), seed=seed)
    points, thin = [], 0
    for _ in range(trials):
        candidate = searcher.next_feasible()
        torch.manual_seed(seed)
        student = inputs.build_student(candidate.config, quantize=False)
        result = run_short_trial(student, targets, inputs.data.train, inputs.data.heldout, trainer,
                                 kept_layers=candidate.config.layers)
        values = [result.heldout_loss, candidate.macs / 1e9]
        study.tell(candidate.trial, values)
        points.append((tuple(values), candidate.config.width(teacher_config)))
        thin += candidate.config.hidden is not None
    asked = len(study.trials)
    return {"points": [p for p, _ in points], "widths": [w for _, w in points], "thin": thin, "asked": asked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--quick", action="store_true", help="4 trials, 2 steps: does the benchmark still run?")
    from benchmarks.fixtures import add_recipe_option, trained_teacher

    add_recipe_option(parser)
    args = parser.parse_args()
    trials, steps = (4, 2) if args.quick else (args.trials, args.steps)
    torch.set_num_threads(1)  # as a search trial with --cpus-per-trial 1
    wall = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)
    trainer = TrainerConfig(steps=steps, batch_size=BATCH, crop_seconds=CROP_SECONDS, device="cpu")
    with tempfile.TemporaryDirectory(prefix="sslc-thin-") as tmp:
        inputs = prepare_inputs(str(fixture.teacher_dir), str(fixture.train_dir), Path(tmp), CROP_SECONDS, 0)
        targets = inputs.targets()
        teacher_config = inputs.teacher.config
        teacher_macs = count_macs(teacher_config, seconds=fixture.budget_seconds).total
        print(f"teacher: fixture ({fixture.info.get('recipe')}; {teacher_config.num_layers} layers, "
              f"{teacher_config.embed_dim} wide, {teacher_macs / 1e9:.3f} GMACs / 10 s); {trials} trials of {steps} "
              f"steps per search, sampler {DEFAULT_SAMPLER}, {args.seeds} seed(s); held-out "
              f"{len(inputs.data.heldout)} crops")
        ratios: dict[str, list[float]] = {}
        budgets = BUDGETS[1:] if args.quick else BUDGETS  # the quick teacher's full-width configs miss 30%
        for label in budgets:
            budget = Budget(parse_budget(label).resolve(teacher_macs), fixture.budget_seconds, None, None)
            ratios[label] = []
            for seed in range(args.seeds):
                runs = {}
                for name, space in spaces().items():
                    started = time.perf_counter()
                    runs[name] = search(space, inputs, targets, budget, trainer, trials, seed)
                    run = runs[name]
                    print(f"budget {label} seed {seed} {name:11s}: {time.perf_counter() - started:6.1f} s, "
                          f"{run['asked']} asked for {trials} trained ({run['thin']} thin), best loss "
                          f"{min(p[0] for p in run['points']):.4f}, front of {len(pareto_2d(run['points']))}")
                normalise = Normalisation([run["points"] for run in runs.values()])
                volumes = {name: normalise.hypervolume(run["points"]) for name, run in runs.items()}
                ratio = volumes["with hidden"] / volumes["without"] if volumes["without"] > 0 else float("inf")
                ratios[label].append(ratio)
                for name, run in runs.items():
                    front = sorted(pareto_2d(run["points"]), key=lambda p: p[1])
                    widths = {p: w for p, w in zip(run["points"], run["widths"])}
                    print(f"  {name:11s} front (GMACs, loss, width): " + "; ".join(
                        f"{g:.3f} G {loss:.4f} w{widths[(loss, g)]}" for loss, g in front))
                print(f"  hypervolume with hidden {volumes['with hidden']:.4f}, without {volumes['without']:.4f}: "
                      f"ratio {ratio:.3f}")
        for label in budgets:
            print(f"budget {label}: hypervolume ratio with/without hidden, median over seeds "
                  f"{statistics.median(ratios[label]):.3f}")
        print(f"total {time.perf_counter() - wall:.1f} s")
        print(f"thin_front: {min(statistics.median(r) for r in ratios.values()):.3f}")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        main()
