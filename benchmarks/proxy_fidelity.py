"""Do short search trials rank candidates like training 10x and 30x longer? (Kendall tau between the rankings)

The premise of the whole search: a short distillation trial (the search's defaults) scores a candidate so that
better short scores mean better students after full training. Here a set of configs spread over the `combined`
space between 20% and 80% of the teacher's MACs (at the fixture's `budget_seconds`; depths from 2 to the
teacher's, width-pruned ones, the search's baselines) is scored by the search's own protocol (mean over the
default target layers of the held-out L1 + cosine loss) three times: after a short trial with the search's default
trainer settings, and after the retrain driver's `quick` recipe (`sslc.trainers.recipes`: the trial's settings,
10x the steps, the schedule stretched; what `sslc-retrain` does by default) and the same recipe at 30x, the 30x on
every other config of the list (6 of 12, fixed before anything trains; on all twelve the benchmark took 40
minutes). The headline is Kendall's tau (scipy) between the short and the 10x scores over all configs; the 30x tau
is printed too, with the 10x tau on the same six beside it. Goal >= 0.7.

Teacher: by default the trained fixture teacher of `--teacher-recipe` (`benchmarks/fixtures`), with its training
voices as data; `--teacher random` takes a random 8-layer HuBERT-style encoder, 128 wide (8 heads of 16, FFN 512,
32 conv channels, the real 320x front end) on the synthetic demo corpus. Trials use the search's default steps,
learning rate and schedule, with the batch of `make demo` (2 crops of 1 s instead of 4 of 2 s: a quarter of the
compute, so the long runs fit the time limit). Configs run in WORKERS processes of one torch thread each.

Measured before (10x only, the trainer's settings x 10): on the 3-layer gpu-recipe fixture (12 configs, 2
workers) tau 0.815, wall 762 s on 2 shared cores; on the random teacher, the same day, tau 0.939, wall 657 s. A
3-layer teacher leaves few depths (2 or 3 layers), and its DistilHuBERT baseline is the same config as "first 2
layers" (one tied pair); the two rank first in both scores (0.28 short, 0.24 long), far ahead of every
width-pruned config.

Measured 2026-12-07 19:29 UTC on the mini-HuBERT at the defaults (12 configs, the 30x on 6, 2 workers; 2 idle
cores, wall 1197 s, 2356 s of training): **tau 0.848** at 10x (goal >= 0.7 met; every score the same as in the run
below), 0.733 at 30x on its six configs, against 0.867 at 10x on the same six: at 30x `uniform keep 75%` (short
rank 6 of 12) passes `first 2 layers` and `LightHuBERT-Small-like`, the wide 12-layer students' gain with training
that the run below shows.
Before (the 30x on all 12 configs): measured 2026-12-07 on the mini-HuBERT (2 workers; wall 2435 s, 4839 s of
training, the first 20 minutes beside a one-thread benchmark): **tau 0.848** at 10x and 0.818 at 30x. Scores
short / 10x / 30x, in the 30x order: first 6 layers 0.129 / 0.095 / 0.081; first 4 0.163 / 0.129 / 0.114;
FitHuBERT-like baseline (12 layers, 52% of the MACs) 0.228 / 0.147 / 0.115; uniform keep 75% 0.311 / 0.162 / 0.126;
first 2 0.215 / 0.160 / 0.135; LightHuBERT-Small-like 0.275 / 0.177 / 0.136; uniform keep 55% 0.520 / 0.268 /
0.187; combined 43% (12 layers) 0.459 / 0.280 / 0.200; combined 27% (8) 0.513 / 0.302 / 0.210; combined 31% (3)
0.554 / 0.351 / 0.262; uniform keep 35% 0.660 / 0.402 / 0.273; combined 20% (5) 0.651 / 0.428 / 0.297. Where the
short trial errs, it is against the wide 12-layer students: at 100 steps `first 2 layers` ranks 3rd and the
FitHuBERT-like and uniform-75% students 4th and 6th; with longer training the 12-layer students gain most (uniform
75%: 0.311 -> 0.126, against 0.215 -> 0.135 for 2 layers) and pass it. A short trial undervalues deep, thin
students: the reason `--finalists` retrains the candidates and spreads them over depth before the pick.

Measured 2026-12-03 on the mini-HuBERT with --configs 6 (shared cores): tau 1.000 at 10x and at 30x, but the six
were three depth cuts and three combined configs, two groups far apart in score: a weak test, which is why the
fixed configs are now taken in turn from depth cuts, width cuts and baselines.

    python benchmarks/proxy_fidelity.py [--configs 12] [--workers 2] [--teacher fixture|random]
                                        [--teacher-recipe gpu|cpu|mini] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from benchmarks.fixtures import add_recipe_option  # noqa: E402
from sslc.compress import CompressionConfig, config_key  # noqa: E402
from sslc.data.demo import DEMO_SPEC  # noqa: E402
from sslc.metrics import count_macs  # noqa: E402
from sslc.models import ConvLayerSpec, LayerSpec, build_encoder  # noqa: E402
from sslc.models.builders import tiny_config  # noqa: E402
from sslc.models.fingerprint import model_fingerprint  # noqa: E402
from sslc.search.baselines import baseline_configs, uniform_config  # noqa: E402
from sslc.search.inputs import RunInputs, load_audio_split, prepare_inputs  # noqa: E402
from sslc.search.runner import SearchSettings, trainer_config  # noqa: E402
from sslc.spaces import SearchSpace  # noqa: E402
from sslc.trainers import default_targets, run_short_trial  # noqa: E402
from sslc.trainers.recipes import QUICK_STEPS_FACTOR, apply_recipe  # noqa: E402

TEACHER = "random 8-layer HuBERT-style encoder, 128 wide"
LONG_FACTORS = (QUICK_STEPS_FACTOR, 30)  # the quick retrain recipe (10x the trial), and a longer run
BATCH_SIZE, CROP_SECONDS = 2, 1.0  # `make demo`'s; everything else is the search's default
MAC_RANGE = (0.2, 0.8)
LONGEST_EVERY = 2  # the longest run (30x) on every LONGEST_EVERY-th config
SEED = 0

optuna.logging.set_verbosity(optuna.logging.WARNING)


def teacher_architecture():
    config = tiny_config("hubert")
    config.embed_dim = 128
    config.layers = [LayerSpec(heads=8, ffn_dim=512) for _ in range(8)]
    config.conv_layers = [ConvLayerSpec(32, c.kernel, c.stride) for c in config.conv_layers]
    return config.validate()


def fixture_teacher(recipe: str, quick: bool):
    from benchmarks.fixtures import trained_teacher

    return trained_teacher(recipe, quick=quick)


def make_context(run_dir: Path, crop_seconds: float, teacher_kind: str = "random") -> RunInputs:
    """What `prepare_inputs` builds for a search, for this benchmark's teacher (no preset names the random one).
    `teacher_kind`: "random", or "fixture:<recipe>" ("fixture:quick" for the quick fixture)."""
    if teacher_kind.startswith("fixture"):
        fixture = fixture_teacher(teacher_kind.split(":")[1], quick=teacher_kind == "fixture:quick")
        return prepare_inputs(str(fixture.teacher_dir), str(fixture.train_dir), run_dir, crop_seconds, SEED)
    teacher = build_encoder(teacher_architecture(), seed=SEED).eval().requires_grad_(False)
    teacher.teacher_spec, teacher.is_random = TEACHER, True
    cache_dir = run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = load_audio_split(DEMO_SPEC, cache_dir, crop_seconds, SEED)
    return RunInputs(TEACHER, teacher, data, cache_dir, crop_seconds, SEED, model_fingerprint(teacher))


def mac_share(config: CompressionConfig, teacher, seconds: float) -> float:
    teacher_macs = count_macs(teacher, seconds=seconds).total
    return count_macs(config.student_architecture(teacher), seconds=seconds).total / teacher_macs


def choose_configs(teacher, count: int, seconds: float) -> list[tuple[str, CompressionConfig]]:
    """Named configs within MAC_RANGE: depth cuts (2 .. all layers), uniform width cuts and the search's
    baselines, taken in turn (one of each kind, then the next of each), then random `combined`-space configs
    spread over the MAC range, `count` in all. In turn, so a short list is not all depth cuts: on a 12-layer
    teacher six depth cuts fall within the range, and listed first they were every fixed config."""
    depth = teacher.num_layers
    cuts = [(f"first {n} layers", CompressionConfig.first_n(teacher, n)) for n in range(2, depth + 1, 2)]
    cuts += [(f"evenly {n} layers", CompressionConfig.evenly_spaced(teacher, n)) for n in (3, 5) if n < depth]
    widths = [(f"uniform keep {keep:.0%}", uniform_config(teacher, keep)) for keep in (0.35, 0.55, 0.75)]
    teacher_macs = count_macs(teacher, seconds=seconds).total
    baselines = [(f"baseline {name}", c)  # uniform pruning is a width cut already
                 for name, c in baseline_configs(teacher, int(0.5 * teacher_macs), seconds).items() if name != "uniform"]
    kinds = [[(name, c) for name, c in kind if MAC_RANGE[0] <= mac_share(c, teacher, seconds) <= MAC_RANGE[1]]
             for kind in (cuts, widths, baselines)]
    in_turn, seen = [], set()
    for name, config in (kind[i] for i in range(max(map(len, kinds))) for kind in kinds if i < len(kind)):
        key = config_key(config.to_dict())  # a baseline can be a depth cut (DistilHuBERT's: the first 2 layers)
        if key not in seen:
            in_turn.append((name, config))
            seen.add(key)
    chosen = in_turn[: max(count // 2, count - 4)]  # leave room for random configs
    space = SearchSpace.load("combined")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=SEED))
    pool = []
    while len(pool) < 40:
        config = space.suggest(study.ask(), teacher)
        if MAC_RANGE[0] <= mac_share(config, teacher, seconds) <= MAC_RANGE[1]:
            pool.append(config)
    pool.sort(key=lambda c: mac_share(c, teacher, seconds))
    need = count - len(chosen)
    picks = [pool[round(i * (len(pool) - 1) / max(1, need - 1))] for i in range(need)]
    chosen += [(f"combined #{i}", c) for i, c in enumerate(picks)]
    return chosen


_WORKER: dict = {}


def _init_worker(run_dir: str, crop_seconds: float, teacher_kind: str = "random") -> None:
    torch.set_num_threads(1)
    context = make_context(Path(run_dir), crop_seconds, teacher_kind)
    _WORKER.update(context=context, targets=context.targets())


def _score(job: tuple[str, dict, dict]) -> tuple[str, float, float]:
    """(name, held-out score, seconds) of one config trained with one trainer setting."""
    name, config_dict, trainer_dict = job
    from sslc.trainers import TrainerConfig

    context, targets = _WORKER["context"], _WORKER["targets"]
    config = CompressionConfig.from_dict(config_dict)
    student = context.build_student(config, quantize=False)
    trainer = TrainerConfig.from_dict(trainer_dict)
    started = time.perf_counter()
    result = run_short_trial(
        student, targets, context.data.train, context.data.heldout, trainer, kept_layers=config.layers
    )
    if result.status != "completed":
        raise RuntimeError(f"{name}: {result.status} ({result.reason})")
    return name, result.heldout_loss, time.perf_counter() - started


def _report(index: int, total: int, result: tuple[str, float, float]) -> tuple[str, float, float]:
    name, score, seconds = result
    print(f"  [{index}/{total}] {name}: score {score:.4f} ({seconds:.0f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a few configs and steps: checks the script runs")
    parser.add_argument("--teacher", choices=("random", "fixture"), default="fixture",
                        help="the trained fixture teacher of --teacher-recipe (default) or a random 8-layer one")
    add_recipe_option(parser)
    args = parser.parse_args()

    kind, seconds = "random", 10.0
    if args.teacher == "fixture":
        kind = "fixture:quick" if args.quick else f"fixture:{args.teacher_recipe}"
        fixture = fixture_teacher(args.teacher_recipe, quick=args.quick)  # built (or found) once, before the workers
        from sslc import load_teacher

        teacher = load_teacher(str(fixture.teacher_dir)).config
        seconds = fixture.budget_seconds
        description = f"trained fixture teacher {fixture.teacher_dir} ({teacher.num_layers} layers, " \
                      f"{teacher.embed_dim} wide); data: its training voices"
    else:
        teacher = teacher_architecture()
        description = f"{TEACHER} (random weights); data: demo corpus"
    defaults = SearchSettings(budget="100%", batch_size=BATCH_SIZE, crop_seconds=CROP_SECONDS)
    targets = default_targets(teacher.num_layers)
    short = replace(trainer_config(defaults, targets), device="cpu", num_threads=1)
    count = args.configs
    if args.quick:
        count, short, args.workers = 4, replace(short, steps=2, log_every=1), 1
    # The long runs are the retrain driver's `quick` recipe (10x the trial, its schedule stretched) and 30x.
    longs = [replace(apply_recipe(short, "quick", steps=short.steps * factor)[0],
                     log_every=max(1, short.steps * factor // 10)) for factor in LONG_FACTORS]
    configs = choose_configs(teacher, count, seconds)
    # The 30x point on every other config (their list alternates depth cuts, width cuts, baselines, then random
    # configs by MACs, so half keeps every kind), fixed before anything is trained: the 30x runs are three
    # quarters of the work, and on all twelve the benchmark took 40 minutes, over its 30.
    longest = [name for name, _ in configs][::LONGEST_EVERY]
    print(f"teacher: {description}, {short.crop_seconds:g} s crops")
    print(f"score: mean held-out loss over teacher layers {targets}; short trial {short.steps} steps "
          f"(batch {short.batch_size}, lr {short.lr:g}), long {' and '.join(str(t.steps) for t in longs)} steps "
          f"(retrain recipe quick, steps set; the {longs[-1].steps} on {len(longest)}); {len(configs)} configs, "
          f"{args.workers} workers")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        make_context(Path(tmp), short.crop_seconds, kind)  # the corpus crops are written once, before the workers
        jobs = [(name, c.to_dict(), t.to_dict()) for t in (*reversed(longs), short) for name, c in configs
                if t is not longs[-1] or name in longest]  # the longest first: the workers finish together
        if args.workers == 1:
            _init_worker(tmp, short.crop_seconds, kind)
            results = [_report(i, len(jobs), _score(job)) for i, job in enumerate(jobs, 1)]
        else:
            # spawn: fork after torch has started threads can deadlock; an executor's workers are not daemonic,
            # so each trial's DataLoader may start its own reader processes (a multiprocessing.Pool's may not).
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.workers, spawn, _init_worker, (tmp, short.crop_seconds, kind)) as pool:
                results = [_report(i, len(jobs), r) for i, r in enumerate(pool.map(_score, jobs), 1)]
    scores: dict[int, dict[str, float]] = {}  # steps -> {config name: score}
    for (name, _, trainer), (_, score, _) in zip(jobs, results):
        scores.setdefault(trainer["steps"], {})[name] = score
    training_seconds = sum(s for _, _, s in results)

    names = [name for name, _ in configs]
    order = sorted(scores)  # short first
    ranks = {steps: {c: r for r, c in enumerate(sorted(scores[steps], key=scores[steps].get), 1)} for steps in order}
    header = "".join(f" {f'{steps} steps':>11} {'rank':>4}" for steps in order)
    print(f"\n{'config':<24} {'MACs':>6} {'depth':>5}{header}  (ranks among the configs trained that long)")
    for name, config in sorted(configs, key=lambda item: ranks[order[1]][item[0]]):
        row = "".join(f" {scores[steps][name]:>11.4f} {ranks[steps][name]:>4}" if name in scores[steps]
                      else f" {'-':>11} {'':>4}" for steps in order)
        print(f"{name:<24} {mac_share(config, teacher, seconds):>6.0%} {len(config.layers):>5}{row}")

    def tau(steps: int, among: list[str]) -> float:
        return kendalltau([scores[short.steps][c] for c in among], [scores[steps][c] for c in among]).statistic

    print(f"\ntraining time {training_seconds:.0f} s over {args.workers} workers, wall {time.perf_counter() - started:.0f} s")
    for steps in order[1:]:
        among = [c for c in names if c in scores[steps]]
        print(f"tau short vs {steps} steps ({steps // short.steps}x), {len(among)} configs: {tau(steps, among):.3f}")
    if len(longest) < len(names):  # the same subset at 10x: what the smaller sample alone does to tau
        print(f"tau short vs {longs[0].steps} steps on the {len(longest)} configs trained "
              f"{LONG_FACTORS[-1]}x: {tau(longs[0].steps, longest):.3f}")
    # Headline: the agreement with the quick retrain recipe (10x), what sslc-retrain does by default.
    print(f"proxy_fidelity: {tau(longs[0].steps, names):.3f}")


if __name__ == "__main__":
    main()
