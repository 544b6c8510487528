"""Do short search trials rank candidates like training 10x longer? (Kendall tau between the two rankings)

The premise of the whole search: a short distillation trial (the search's defaults) scores a candidate so that
better short scores mean better students after full training. Here a set of configs spread over the `combined`
space between 20% and 80% of the teacher's MACs (depths from 2 to the teacher's, width-pruned ones, the
search's baselines) is scored twice, each time by the search's own protocol (mean over the default target layers
of the held-out L1 + cosine loss): after a short trial with the search's default trainer settings, and after a
training run LONG_FACTOR (10) times longer with the same settings (what `sslc-retrain` does by default). The
headline is Kendall's tau between the two scores (scipy); goal >= 0.7.

Teacher: a random 8-layer HuBERT-style encoder, 128 wide (8 heads of 16, FFN 512, 32 conv channels, the real 320x
front end), small enough that every config trains 10x longer on 2 CPU cores within the time limit. Random
weights: its layers carry no learned structure (the trained fixture teacher of the probes issue is the better
test when it exists). Data: the synthetic demo corpus. Trials use the search's default steps, learning rate and
schedule, with the batch of `make demo` (2 crops of 1 s instead of 4 of 2 s: a quarter of the compute, so the
10x longer runs fit the time limit). Configs run in WORKERS processes of one torch thread each.

`--teacher fixture` runs it on the trained fixture teacher instead (`benchmarks/fixtures`, recipe gpu: 3 layers,
192 wide, HuBERT-style pretrained on an eSpeak NG corpus), with the fixture's training voices as data.
Measured there (12 configs, 2 workers): tau 0.815, wall 762 s on 2 shared cores; on the random teacher, the same
day: tau 0.939, wall 657 s. A 3-layer teacher leaves few depths (2 or 3 layers), and its DistilHuBERT baseline is
the same config as "first 2 layers" (one tied pair); the two rank first in both scores (0.28 short, 0.24 long),
far ahead of every width-pruned config.

    python benchmarks/proxy_fidelity.py [--configs 12] [--workers 2] [--teacher random|fixture] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from sslc.compress import CompressionConfig  # noqa: E402
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

TEACHER = "random 8-layer HuBERT-style encoder, 128 wide"
LONG_FACTOR = 10
BATCH_SIZE, CROP_SECONDS = 2, 1.0  # `make demo`'s; everything else is the search's default
MAC_RANGE = (0.2, 0.8)
SEED = 0

optuna.logging.set_verbosity(optuna.logging.WARNING)


def teacher_architecture():
    config = tiny_config("hubert")
    config.embed_dim = 128
    config.layers = [LayerSpec(heads=8, ffn_dim=512) for _ in range(8)]
    config.conv_layers = [ConvLayerSpec(32, c.kernel, c.stride) for c in config.conv_layers]
    return config.validate()


def fixture_teacher(quick: bool):
    from benchmarks.fixtures import trained_teacher

    return trained_teacher("gpu", quick=quick)


def make_context(run_dir: Path, crop_seconds: float, teacher_kind: str = "random") -> RunInputs:
    """What `prepare_inputs` builds for a search, for this benchmark's teacher (no preset names the random one)."""
    if teacher_kind.startswith("fixture"):
        fixture = fixture_teacher(quick=teacher_kind == "fixture-quick")
        return prepare_inputs(str(fixture.teacher_dir), str(fixture.train_dir), run_dir, crop_seconds, SEED)
    teacher = build_encoder(teacher_architecture(), seed=SEED).eval().requires_grad_(False)
    teacher.teacher_spec, teacher.is_random = TEACHER, True
    cache_dir = run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = load_audio_split(DEMO_SPEC, cache_dir, crop_seconds, SEED)
    return RunInputs(TEACHER, teacher, data, cache_dir, crop_seconds, SEED, model_fingerprint(teacher))


def mac_share(config: CompressionConfig, teacher) -> float:
    teacher_macs = count_macs(teacher, seconds=10).total
    return count_macs(config.student_architecture(teacher), seconds=10).total / teacher_macs


def choose_configs(teacher, count: int) -> list[tuple[str, CompressionConfig]]:
    """Named configs within MAC_RANGE: depth cuts (2 .. all layers), uniform width cuts, the search's baselines,
    then random `combined`-space configs spread over the MAC range, `count` in all."""
    depth = teacher.num_layers
    fixed = [(f"first {n} layers", CompressionConfig.first_n(teacher, n)) for n in range(2, depth + 1, 2)]
    fixed += [(f"evenly {n} layers", CompressionConfig.evenly_spaced(teacher, n)) for n in (3, 5) if n < depth]
    fixed += [(f"uniform keep {keep:.0%}", uniform_config(teacher, keep)) for keep in (0.35, 0.55, 0.75)]
    teacher_macs = count_macs(teacher, seconds=10).total
    fixed += [(f"baseline {name}", c) for name, c in baseline_configs(teacher, int(0.5 * teacher_macs), 10).items()]
    chosen = [(name, c) for name, c in fixed if MAC_RANGE[0] <= mac_share(c, teacher) <= MAC_RANGE[1]]
    chosen = chosen[: max(count // 2, count - 4)]  # leave room for random configs
    space = SearchSpace.load("combined")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=SEED))
    pool = []
    while len(pool) < 40:
        config = space.suggest(study.ask(), teacher)
        if MAC_RANGE[0] <= mac_share(config, teacher) <= MAC_RANGE[1]:
            pool.append(config)
    pool.sort(key=lambda c: mac_share(c, teacher))
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
    parser.add_argument("--teacher", choices=("random", "fixture"), default="random",
                        help="the random 8-layer teacher (default) or the trained fixture teacher")
    args = parser.parse_args()

    kind = "random"
    if args.teacher == "fixture":
        kind = "fixture-quick" if args.quick else "fixture"
        fixture = fixture_teacher(quick=args.quick)  # built (or found) once, before the workers
        from sslc import load_teacher

        teacher = load_teacher(str(fixture.teacher_dir)).config
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
    long = replace(short, steps=short.steps * LONG_FACTOR, log_every=max(1, short.steps * LONG_FACTOR // 10))
    configs = choose_configs(teacher, count)
    print(f"teacher: {description}, {short.crop_seconds:g} s crops")
    print(f"score: mean held-out loss over teacher layers {targets}; short trial {short.steps} steps "
          f"(batch {short.batch_size}, lr {short.lr:g}), long {long.steps} steps; {len(configs)} configs, "
          f"{args.workers} workers")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        make_context(Path(tmp), short.crop_seconds, kind)  # the corpus crops are written once, before the workers
        jobs = [(name, c.to_dict(), t.to_dict()) for t in (long, short) for name, c in configs]  # long ones first
        if args.workers == 1:
            _init_worker(tmp, short.crop_seconds, kind)
            results = [_report(i, len(jobs), _score(job)) for i, job in enumerate(jobs, 1)]
        else:
            spawn = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
            with spawn.Pool(args.workers, _init_worker, (tmp, short.crop_seconds, kind)) as pool:
                results = [_report(i, len(jobs), r) for i, r in enumerate(pool.imap(_score, jobs), 1)]
    half = len(configs)
    long_scores = {name: score for name, score, _ in results[:half]}
    short_scores = {name: score for name, score, _ in results[half:]}
    seconds = sum(s for _, _, s in results)

    names = [name for name, _ in configs]
    short_rank = {n: r for r, n in enumerate(sorted(names, key=short_scores.get), 1)}
    long_rank = {n: r for r, n in enumerate(sorted(names, key=long_scores.get), 1)}
    print(f"\n{'config':<24} {'MACs':>6} {'depth':>5} {'short':>8} {'rank':>4} {'long':>8} {'rank':>4}")
    for name, config in sorted(configs, key=lambda item: long_rank[item[0]]):
        print(f"{name:<24} {mac_share(config, teacher):>6.0%} {len(config.layers):>5} {short_scores[name]:>8.4f} "
              f"{short_rank[name]:>4} {long_scores[name]:>8.4f} {long_rank[name]:>4}")
    tau = kendalltau([short_scores[n] for n in names], [long_scores[n] for n in names]).statistic
    print(f"\ntraining time {seconds:.0f} s over {args.workers} workers, wall {time.perf_counter() - started:.0f} s")
    print(f"proxy_fidelity: {tau:.3f}")


if __name__ == "__main__":
    main()
