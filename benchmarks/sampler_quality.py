"""Hypervolume of the search's default sampler (`SearchSettings.sampler`) vs random search, same number of trials.

Cheap trials: 0 training steps. A trial's objectives are the ones the search minimises by default, the held-out
distillation loss of the teacher-initialised student with its prediction heads started as every trial's start
(`score_at_start`: fitted on its first training batches; so this is the score a trial starts from, before any
training step) and its GMACs for 10 s of audio.
Everything else is the search's own machinery, in-process and without Ray: the `combined` space, the MAC budget,
`make_sampler`, and `OptunaAskTellSearcher.next_feasible` (over-budget configs are recorded as infeasible, never
evaluated, and do not count as trials; the samplers see the budget as constraint values, see issue 13). The teacher is a random HuBERT-Base at half width (12 post-LN layers,
384 wide, 6 heads, FFN 1536, 256 conv channels: the same split of MACs between CNN and transformer as Base): 12
layers make configs differ a lot, and half the width keeps the SVDs of low-rank configs cheap enough to evaluate
hundreds of configs on 2 cores (on Base a config with many low-rank layers takes 10-30 s). The held-out set is the demo corpus's, in 1 s
crops, as `prepare_inputs` makes it for a search with 1 s crops.

The default search is measured as `sslc-search` runs it: its sampler after its warm start (every anchor family
scaled to the budget, `warm_start_configs`, asked first as the searcher asks them), the arm named `gp+warm`; the
plain sampler without the warm start (`gp`) is printed beside it. (The default search is single-fidelity,
`--fidelities 1`: the multi-fidelity search's gain is `benchmarks/fidelity_gain.py`'s, since a zero-step trial
has no rungs.) Every arm runs TRIALS trials for each of SEEDS seeds, warm-started ones included. Objectives are normalised to [0, 1] by the best and worst
values seen over all runs, and the reference point is the worst value plus 10% of the range in each objective;
the hypervolume (2-D, exact) of each run's Pareto front is computed against it. The headline is the median over
seeds of the per-seed ratio hypervolume(default search, `gp+warm`) / hypervolume(random), goal >= 1.1; `--also
tpe,nsga2` adds other samplers to the table (not to the headline). Also printed, per sampler: the share of asked configs that
were over budget (over-budget asks / all asks, over all seeds), which constraint-aware sampling should keep low.

Run time: seeds run one after another (every sampler on a seed), and no new seed starts once `--time-limit`
seconds have passed since launch (at least MIN_SEEDS run), so a slower machine compares fewer seeds rather
than taking longer; it prints how many it did. `--quick` (4 trials, 1 seed, a 4-layer teacher) checks that the
benchmark still works (CI runs it); its figure means nothing.

    python benchmarks/sampler_quality.py [--trials 32] [--seeds 5] [--also gp,nsga2] [--time-limit 420] [--quick]

Measured 2026-12-07 at the defaults (648 s on 2 cores beside `anchor_margin`, so the time limit allowed 2 seeds),
zero-step trials scored with their heads fitted as a trial starts: **sampler_quality 1.593** (gp+warm / random per
seed 1.478, 1.707; gp alone 1.423, 1.808, median 1.615). The warm start's best loss is 0.174 in both seeds against
gp's 0.327-0.329 and random's 0.354-0.377 (its DistilHuBERT-like 2-layer shape at the budget), while the
hypervolume, which weighs the whole front, is about gp's. Over-budget asks: gp+warm 3 of 67, gp 0 of 64, random 3
of 67. (Before, with placed heads and without the warm start: gp 1.22-1.32x.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import torch  # noqa: E402

from sslc.budget import Budget, parse_budget  # noqa: E402
from sslc.data.demo import DEMO_SPEC  # noqa: E402
from sslc.metrics import count_macs  # noqa: E402
from sslc.models import ConvLayerSpec, LayerSpec, build_encoder  # noqa: E402
from sslc.models.builders import base_config  # noqa: E402
from sslc.models.fingerprint import model_fingerprint  # noqa: E402
from sslc.search.baselines import warm_start_configs  # noqa: E402
from sslc.search.inputs import RunInputs, load_audio_split  # noqa: E402
from sslc.search.runner import SearchSettings  # noqa: E402
from sslc.search.samplers import make_sampler, startup_trials  # noqa: E402
from sslc.search.searcher import OptunaAskTellSearcher  # noqa: E402
from sslc.spaces import SearchSpace  # noqa: E402
from sslc.trainers import TrainerConfig, score_at_start  # noqa: E402

TEACHER = "random HuBERT-Base at half width"
SPACE = "combined"
BUDGET = "40%"  # of the teacher's MACs for 10 s of audio
TRIALS = 32
SEEDS = 5
DEFAULT = SearchSettings.__dataclass_fields__["sampler"].default  # the search's default sampler
WARM = "+warm"  # an arm whose trials start with the search's warm start
SEARCH = DEFAULT + WARM  # the default search, as sslc-search runs it (the headline's arm)
CROP_SECONDS = 1.0
EVAL_BATCH = 4
REFERENCE_MARGIN = 0.1
# How a zero-step trial is scored: the search's protocol (default targets), batches of EVAL_BATCH, on the CPU.
SCORING = TrainerConfig(steps=1, batch_size=EVAL_BATCH, crop_seconds=CROP_SECONDS, device="cpu")
MIN_SEEDS = 2
TIME_LIMIT = 420.0

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_context(run_dir: Path, layers: int = 12) -> RunInputs:
    """What `prepare_inputs` builds for a search, for the half-width teacher (a preset name would not reach it);
    `--quick` gives it 4 layers, a third of the low-rank factorisations to compute."""
    config = base_config("hubert")
    config.embed_dim = 384
    config.layers = [LayerSpec(heads=6, ffn_dim=1536) for _ in range(layers)]
    config.conv_layers = [ConvLayerSpec(256, c.kernel, c.stride) for c in config.conv_layers]
    teacher = build_encoder(config.validate(), seed=0).eval().requires_grad_(False)
    teacher.teacher_spec, teacher.is_random = TEACHER, True
    cache_dir = run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = load_audio_split(DEMO_SPEC, cache_dir, CROP_SECONDS, 0)
    return RunInputs(TEACHER, teacher, data, cache_dir, CROP_SECONDS, 0, model_fingerprint(teacher))


class ZeroStepObjective:
    """Held-out distillation loss of a config's student straight after `compress`, its heads started as a trial's
    are (`score_at_start`: fitted on its first training batches), no training step."""

    def __init__(self, context):
        self.context = context
        self.targets = context.targets()
        self.cache: dict[str, float] = {}
        self.evaluations = 0
        self.seconds = 0.0

    def __call__(self, config) -> float:
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key not in self.cache:
            started = time.perf_counter()
            self.cache[key] = self.evaluate(config)
            self.evaluations += 1
            self.seconds += time.perf_counter() - started
        return self.cache[key]

    def evaluate(self, config) -> float:
        """The search's score (mean over the protocol's default targets) of the untrained student."""
        student = self.context.build_student(config, quantize=False)
        score, _ = score_at_start(student, self.targets, self.context.data.train, self.context.data.heldout, SCORING,
                                  config.layers)
        return score


def check_against_trainer(context, objective: ZeroStepObjective, config) -> tuple[float, float]:
    """The same loss from the trainer itself: a 1-step trial at a negligible learning rate."""
    from sslc.trainers import run_short_trial

    trainer = replace(SCORING, lr=1e-12, warmup_fraction=0.0)
    student = context.build_student(config, quantize=False)
    result = run_short_trial(
        student, objective.targets, context.data.train, context.data.heldout, trainer, kept_layers=config.layers
    )
    return objective.evaluate(config), result.heldout_loss


def run_search(name: str, seed: int, space, teacher_config, budget, objective) -> dict:
    """TRIALS feasible trials of arm `name` (a sampler's name, `+warm` when the search's warm start comes first),
    asked exactly as the search's searcher asks them."""
    sampler_name = name.removesuffix(WARM)
    warm_start = (warm_start_configs(teacher_config, budget.max_macs, budget.seconds) if name.endswith(WARM)
                  else None)
    sampler = make_sampler(sampler_name, seed, TRIALS, 1)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    searcher = OptunaAskTellSearcher(study, space, teacher_config, budget, ["loss", "macs"], TRIALS,
                                     startup_trials=startup_trials(sampler_name, TRIALS), seed=seed,
                                     warm_start=warm_start)
    points, started, evaluating = [], time.perf_counter(), objective.seconds
    for _ in range(TRIALS):
        candidate = searcher.next_feasible()
        values = [objective(candidate.config), candidate.macs / 1e9]
        study.tell(candidate.trial, values)
        points.append(tuple(values))
    asked = study.get_trials(deepcopy=False)
    infeasible = sum(1 for t in asked if t.user_attrs.get("infeasible"))
    seconds = time.perf_counter() - started
    return {"points": points, "infeasible": infeasible, "asked": len(asked), "seconds": seconds,
            "evaluating": objective.seconds - evaluating}


def pareto_2d(points):
    front, best = [], float("inf")
    for x, y in sorted(set(points)):
        if y < best:
            front.append((x, y))
            best = y
    return front


def hypervolume_2d(points, reference) -> float:
    """Exact area dominated by `points` (minimised) and bounded by `reference`."""
    area, ceiling = 0.0, reference[1]
    for x, y in pareto_2d([p for p in points if p[0] < reference[0] and p[1] < reference[1]]):
        area += (reference[0] - x) * (ceiling - y)
        ceiling = y
    return area


class Normalisation:
    """Both objectives mapped to [0, 1] over every point of every set compared, and the shared reference point
    (the worst value plus `margin` of the range): hypervolumes of different runs are only comparable so."""

    def __init__(self, point_sets, margin: float = REFERENCE_MARGIN):
        every = [p for points in point_sets for p in points]
        self.low = [min(p[i] for p in every) for i in range(2)]
        self.high = [max(p[i] for p in every) for i in range(2)]
        self.margin = margin
        self.reference = (1.0 + margin, 1.0 + margin)

    def __call__(self, point):
        return tuple((point[i] - self.low[i]) / ((self.high[i] - self.low[i]) or 1.0) for i in range(2))

    def hypervolume(self, points) -> float:
        return hypervolume_2d([self(p) for p in points], self.reference)


def main() -> None:
    global TRIALS, SEEDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--also", default="", help="other samplers to compare, e.g. gp,nsga2 (not in the headline)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT,
                        help=f"start no new seed after this many seconds since launch (at least {MIN_SEEDS} run)")
    parser.add_argument("--quick", action="store_true", help="4 trials, 1 seed: does the benchmark still run?")
    args = parser.parse_args()
    TRIALS, SEEDS = (4, 1) if args.quick else (args.trials, args.seeds)
    samplers = [SEARCH, DEFAULT, "random"] + [n for n in args.also.split(",") if n and n not in (DEFAULT, "random")]
    torch.manual_seed(0)
    # One thread, as a search trial with --cpus-per-trial 1: with two, LAPACK's SVD (low-rank configs) slows down
    # by up to 100x whenever another process is busy on this 2-core machine.
    torch.set_num_threads(1)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sslc-sampler-") as tmp:
        context = make_context(Path(tmp), layers=4 if args.quick else 12)
        teacher_config = context.teacher.config
        teacher_macs = count_macs(teacher_config, seconds=10.0).total
        budget = Budget(parse_budget(BUDGET).resolve(teacher_macs), 10.0, None, None)
        space = SearchSpace.load(SPACE)
        objective = ZeroStepObjective(context)
        setup = time.perf_counter() - wall
        print(f"teacher {TEACHER} ({teacher_macs / 1e9:.2f} GMACs / 10 s), space '{SPACE}', budget {BUDGET} = "
              f"{budget.max_macs / 1e9:.2f} GMACs; {TRIALS} trials x {SEEDS} seeds per sampler; held-out: "
              f"{len(context.data.heldout)} crops of {CROP_SECONDS:g} s; set-up {setup:.1f} s")

        smallest = space.smallest(teacher_config)
        mine, trainer = check_against_trainer(context, objective, smallest)
        print(f"check: zero-step loss of the smallest config {mine:.5f}, trainer's held-out loss after one "
              f"lr=1e-12 step {trainer:.5f}")

        runs: dict[str, list[dict]] = {name: [] for name in samplers}
        for seed in range(SEEDS):
            if seed >= MIN_SEEDS and time.perf_counter() - wall > args.time_limit:
                print(f"time limit: stopped after {seed} of {SEEDS} seeds")
                SEEDS = seed
                break
            for name in samplers if seed % 2 == 0 else reversed(samplers):
                run = run_search(name, seed, space, teacher_config, budget, objective)
                runs[name].append(run)
                best = min(p[0] for p in run["points"])
                print(f"  seed {seed} {name:7s}: {run['seconds']:6.1f} s ({run['evaluating']:5.1f} s evaluating), "
                      f"{run['infeasible']:3d} over-budget asks, "
                      f"best loss {best:.4f}, Pareto front of {len(pareto_2d(run['points']))}")

        normalise = Normalisation([run["points"] for name in samplers for run in runs[name]])
        low, high, reference = normalise.low, normalise.high, normalise.reference
        print(f"normalisation: loss {low[0]:.4f}..{high[0]:.4f}, GMACs {low[1]:.2f}..{high[1]:.2f}; "
              f"reference point {reference} (worst + {REFERENCE_MARGIN:.0%} of the range)")
        volumes = {name: [normalise.hypervolume(run["points"]) for run in runs[name]] for name in samplers}
        try:  # cross-check the 2-D sweep against Optuna's (private) WFG implementation
            import numpy as np
            from optuna._hypervolume import compute_hypervolume

            run = runs[SEARCH][0]
            theirs = compute_hypervolume(np.array([normalise(p) for p in run["points"]]), np.array(reference))
            print(f"check: hypervolume of the first {SEARCH} run {volumes[SEARCH][0]:.6f}, Optuna's WFG {theirs:.6f}")
        except ImportError:
            pass
        ratios = {name: [v / r for v, r in zip(volumes[name], volumes["random"])] for name in samplers}
        for seed in range(SEEDS):
            print(f"seed {seed}: hypervolume " + "  ".join(f"{n} {volumes[n][seed]:.4f}" for n in samplers)
                  + f"  ratio {SEARCH}/random {ratios[SEARCH][seed]:.3f}")
        for name in samplers:
            over = sum(run["infeasible"] for run in runs[name])
            asked = sum(run["asked"] for run in runs[name])
            print(f"{name:7s}: {over} of {asked} asked configs over budget ({over / asked:.1%}; per seed "
                  f"{', '.join(str(run['infeasible']) for run in runs[name])})")
        for name in samplers:
            print(f"{name:7s}: median hypervolume {statistics.median(volumes[name]):.4f}, median ratio to random "
                  f"{statistics.median(ratios[name]):.3f} (per seed {', '.join(f'{r:.3f}' for r in ratios[name])})")
        print(f"{objective.evaluations} distinct configs evaluated in {objective.seconds:.1f} s; "
              f"total {time.perf_counter() - wall:.1f} s")
        print(f"sampler_quality: {statistics.median(ratios[SEARCH]):.3f}")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        main()
