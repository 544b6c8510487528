"""Per-step time of a short trial with cached teacher targets vs running the teacher at every step.

Teacher: random:hubert-base; student: the same architecture cut to ~40% of its MACs (narrower CNN, 4 layers);
10 s crops of the synthetic demo corpus. Both variants run in the same process, interleaved round by round, and
the medians of the per-step times are compared. The last line is the headline: `teacher_cache: <ratio>`
(cached / recompute; the goal is <= 0.6).

    python benchmarks/teacher_cache.py [--rounds 3] [--steps 4] [--batch-size 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sslc.data import SegmentDataset, discover_audio, make_demo_corpus, make_segments  # noqa: E402
from sslc.models import ConvLayerSpec, LayerSpec, build_encoder  # noqa: E402
from sslc.models.teachers import load_teacher  # noqa: E402
from sslc.trainers import TeacherTargets, TrainerConfig, run_short_trial  # noqa: E402

CROP_SECONDS = 10.0
KEPT_LAYERS = [2, 5, 8, 11]  # the teacher layers the 4 student layers stand for (default layer map)


def student_config(teacher_config):
    """hubert-base with 352 conv channels and 4 full-size layers: ~40% of the teacher's MACs on 10 s."""
    config = teacher_config.copy()
    config.conv_layers = [ConvLayerSpec(352, c.kernel, c.stride) for c in config.conv_layers]
    config.layers = [LayerSpec(heads=12, ffn_dim=3072) for _ in KEPT_LAYERS]
    return config.validate()


def step_times(student, targets, train, heldout, config) -> list[float]:
    """Seconds of each step after the first (the first pays one-off allocations); the trial stops at the last
    report, so no held-out pass is timed or run."""
    stamps = []

    def report(step: int, loss: float) -> bool:
        stamps.append(time.perf_counter())
        return step >= config.steps

    result = run_short_trial(student, targets, train, heldout, config, on_report=report, kept_layers=KEPT_LAYERS)
    if result.status not in ("completed", "stopped"):
        raise RuntimeError(f"trial failed: {result.reason}")
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="steps per trial per round (first one not timed)")
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sslc-bench-cache-"))
    corpus = make_demo_corpus(work / "corpus", num_files=5, seconds=(10.5, 12.0), seed=0)
    files = discover_audio(corpus)
    train = SegmentDataset(make_segments(files[:-1], CROP_SECONDS, seed=0))
    heldout = SegmentDataset(make_segments(files[-1:], CROP_SECONDS, seed=0))

    teacher = load_teacher("random:hubert-base")
    config = student_config(teacher.config)
    initial = build_encoder(config, seed=1).state_dict()
    try:
        from sslc.metrics.macs import count_macs

        ratio = count_macs(config, CROP_SECONDS).total / count_macs(teacher.config, CROP_SECONDS).total
        print(f"student MACs on {CROP_SECONDS:g} s: {ratio:.1%} of the teacher's")
    except ImportError:
        pass
    print(f"torch threads: {torch.get_num_threads()}; {len(train)} train segments of {CROP_SECONDS:g} s, "
          f"batch {args.batch_size}")

    cached = TeacherTargets(teacher, work / "targets", crop_seconds=CROP_SECONDS)
    live = TeacherTargets(teacher)
    started = time.perf_counter()
    cached.source(train, [k + 1 for k in KEPT_LAYERS] + [teacher.config.num_layers])
    print(f"cache build (once per search): {time.perf_counter() - started:.1f} s")

    trial = TrainerConfig(steps=args.steps, batch_size=args.batch_size, log_every=1, crop_seconds=CROP_SECONDS,
                          device="cpu")
    times = {"cached": [], "recompute": []}
    for round_index in range(args.rounds):
        for name, targets in (("cached", cached), ("recompute", live)):
            student = build_encoder(config)
            student.load_state_dict(initial)
            times[name] += step_times(student, targets, train, heldout, trial)
        print(f"round {round_index + 1}: cached {statistics.median(times['cached']):.2f} s/step, "
              f"recompute {statistics.median(times['recompute']):.2f} s/step")

    cached_median, live_median = statistics.median(times["cached"]), statistics.median(times["recompute"])
    print(f"median s/step over {len(times['cached'])} steps each: cached {cached_median:.3f}, "
          f"recompute {live_median:.3f}")
    print(f"teacher_cache: {cached_median / live_median:.3f}")


if __name__ == "__main__":
    main()
