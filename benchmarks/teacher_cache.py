"""Per-step time of a short trial with cached teacher targets vs running the teacher at every step.

Teacher: random:hubert-base; student: the same architecture cut to ~40% of its MACs (352 CNN channels, 4 of the
12 layers, as `compress` would build it); 10 s crops of the synthetic demo corpus, batch 1. Each round runs one
short trial (`run_short_trial`) with targets from the on-disk cache (`TeacherTargets(teacher, cache_root)`) and
one recomputing them with the teacher every step (`TeacherTargets(teacher)` -> `LiveTeacherTargets`), from the
same initial weights, in alternating order. A step's time is the interval between two consecutive report
callbacks (log_every=1): sampling, collating, fetching targets, forward, backward, clip, update. Each trial's
first step (one-off allocations) is not timed, and the trial stops at its last report (no held-out pass).

Printed: the student's MAC share, the one-off cache build time, per-round medians and their ratio, and the
median per-step time of each variant over all rounds. The last line is the headline:
`teacher_cache: <median cached s/step / median recompute s/step>` (the goal is <= 0.6).

Threads: one by default, so that a busy second core (other jobs on a 2-core machine) does not make two intra-op
threads wait for each other; --threads 2 on an idle machine.

Run time: no new round starts once `--time-limit` seconds have passed since launch (at least two rounds run),
so a slow machine does fewer rounds rather than taking longer; it prints how many it did. `--quick` runs one
round of 2 steps on 1 s crops with the random:tiny teacher: it checks that the benchmark still works (CI runs
it), its figure means little.

    python benchmarks/teacher_cache.py [--rounds 7] [--steps 4] [--batch-size 1] [--threads 1] [--time-limit 240]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

import sslc  # noqa: E402
from sslc.compress import CompressionConfig, compress  # noqa: E402
from sslc.data import SegmentDataset, discover_audio, make_demo_corpus, make_segments  # noqa: E402
from sslc.metrics import count_macs  # noqa: E402
from sslc.models import build_encoder  # noqa: E402
from sslc.trainers import TeacherTargets, TrainerConfig, default_layer_map, run_short_trial  # noqa: E402

CROP_SECONDS = 10.0
GOAL = 0.6
MIN_ROUNDS = 2


def student_compression(teacher_config) -> CompressionConfig:
    """4 evenly spaced layers (2, 5, 8, 11) at full size and 352 CNN channels: ~40% of the teacher's MACs."""
    config = CompressionConfig.evenly_spaced(teacher_config, min(4, teacher_config.num_layers))
    config.conv_channels = [c.channels * 11 // 16 for c in teacher_config.conv_layers]  # 352 of Base's 512
    return config


def step_times(student, targets, train, heldout, config, kept_layers) -> list[float]:
    """Seconds of each step after the first; the trial stops at its last report, so no held-out pass runs."""
    stamps = []

    def report(step: int, loss: float) -> bool:
        stamps.append(time.perf_counter())
        return step >= config.steps

    result = run_short_trial(student, targets, train, heldout, config, on_report=report, kept_layers=kept_layers)
    if result.status not in ("completed", "stopped"):
        raise RuntimeError(f"trial failed: {result.reason}")
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4, help="steps per trial (the first one is not timed)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see the docstring)")
    parser.add_argument("--time-limit", type=float, default=240.0,
                        help=f"start no new round after this many seconds since launch (at least {MIN_ROUNDS} run)")
    parser.add_argument("--quick", action="store_true",
                        help="random:tiny, one round of 2 steps on 1 s crops (a smoke test)")
    args = parser.parse_args(argv)
    launched = time.perf_counter()
    crop = 1.0 if args.quick else CROP_SECONDS
    if args.quick:
        args.rounds, args.steps = 1, 2
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="sslc-bench-cache-") as tmp:
        work = Path(tmp)
        # Files 0.5-2 s longer than a crop: every crop is full length, so no batch is padded.
        corpus = make_demo_corpus(work / "corpus", num_files=5, seconds=(crop + 0.5, crop + 2.0), seed=0)
        files = discover_audio(corpus)
        train = SegmentDataset(make_segments(files[:-1], crop, seed=0))
        heldout = SegmentDataset(make_segments(files[-1:], crop, seed=0))

        teacher = sslc.load_teacher("random:tiny" if args.quick else "random:hubert-base")
        compression = student_compression(teacher.config)
        architecture = compression.student_architecture(teacher.config)
        initial = compress(teacher, compression).state_dict()  # the same start (teacher's weights) for every trial
        kept = compression.layers
        share = count_macs(architecture, seconds=crop).total / count_macs(teacher.config, seconds=crop).total
        layer_map = default_layer_map(kept, teacher.config.num_layers)

        cached = TeacherTargets(teacher, work / "targets", crop_seconds=crop)
        live = TeacherTargets(teacher)
        started = time.perf_counter()
        cached.source(train, sorted({t for _, t in layer_map}))
        build_seconds = time.perf_counter() - started

        print(
            f"random:hubert-base teacher; student {len(kept)} layers {kept}, "
            f"{compression.conv_channels[0]} CNN channels: {share:.1%} of the teacher's MACs on "
            f"{crop:g} s; layer map {layer_map}"
        )
        print(
            f"{len(train)} train crops of {crop:g} s, batch {args.batch_size}, {torch.get_num_threads()} "
            f"torch threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
            f"CPUs; cache build (once per search, not per trial): {build_seconds:.1f} s"
        )
        trial = TrainerConfig(
            steps=args.steps, batch_size=args.batch_size, log_every=1, crop_seconds=crop, device="cpu",
            num_threads=args.threads,
        )
        variants = {"cached": cached, "recompute": live}
        times: dict[str, list[float]] = {name: [] for name in variants}
        print(f"{'round':>5} {'cached s/step':>14} {'recompute s/step':>17} {'ratio':>7}")
        round_ratios = []
        for round_index in range(args.rounds):
            if round_index >= MIN_ROUNDS and time.perf_counter() - launched > args.time_limit:
                print(f"time limit: stopped after {round_index} of {args.rounds} rounds")
                break
            order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
            this_round = {}
            for name in order:
                student = build_encoder(architecture)
                student.load_state_dict(initial)
                this_round[name] = step_times(student, variants[name], train, heldout, trial, kept)
                times[name] += this_round[name]
            medians = {name: statistics.median(values) for name, values in this_round.items()}
            round_ratios.append(medians["cached"] / medians["recompute"])
            print(f"{round_index + 1:>5} {medians['cached']:>14.3f} {medians['recompute']:>17.3f} "
                  f"{round_ratios[-1]:>7.3f}")

    cached_median, live_median = statistics.median(times["cached"]), statistics.median(times["recompute"])
    ratio = cached_median / live_median
    print(
        f"median s/step over {len(times['cached'])} steps each: cached {cached_median:.3f}, recompute "
        f"{live_median:.3f} (the teacher's forward pass is {live_median - cached_median:.3f} s of it); "
        f"median of the per-round ratios {statistics.median(round_ratios):.3f}"
    )
    print(f"goal: cached <= {GOAL} x recompute; {'met' if ratio <= GOAL else 'MISSED'}")
    print(f"teacher_cache: {ratio:.3f}")


if __name__ == "__main__":
    main()
