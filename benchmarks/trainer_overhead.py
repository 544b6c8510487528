"""Throughput of sslc's short-trial training loop vs a minimal hand-written PyTorch loop.

Same student (hubert-base cut to ~40% of its MACs), same batch (the same two 2 s crops every step), same loss
(sslc.losses.distillation_loss against the same cached teacher targets), same optimizer (fused AdamW) and
clipping. sslc's time per step covers everything its loop does: sampling, collating, reading the target cache,
the step, the finiteness check, the LR schedule and the report callback. Rounds interleave the two; medians of
the per-step times are compared. The last line is the headline: `trainer_overhead: <sslc / plain throughput>`
(the goal is >= 0.95).

    python benchmarks/trainer_overhead.py [--rounds 4] [--steps 5] [--crop 2]
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
from torch import nn  # noqa: E402

from sslc.data import SegmentDataset, collate, discover_audio, make_demo_corpus, make_segments  # noqa: E402
from sslc.losses import distillation_loss  # noqa: E402
from sslc.models import ConvLayerSpec, LayerSpec, build_encoder  # noqa: E402
from sslc.models.teachers import load_teacher  # noqa: E402
from sslc.trainers import TeacherTargets, TrainerConfig, default_layer_map, run_short_trial  # noqa: E402

KEPT_LAYERS = [2, 5, 8, 11]
LR, CLIP = 2e-4, 10.0


def student_config(teacher_config):
    """hubert-base with 352 conv channels and 4 full-size layers (~40% of the teacher's MACs)."""
    config = teacher_config.copy()
    config.conv_layers = [ConvLayerSpec(352, c.kernel, c.stride) for c in config.conv_layers]
    config.layers = [LayerSpec(heads=12, ffn_dim=3072) for _ in KEPT_LAYERS]
    return config.validate()


def plain_loop(student, layer_map, waves, lengths, targets, mask, steps: int) -> list[float]:
    """The reference: what one would write by hand for the same training step."""
    heads = nn.ModuleList(nn.Linear(768, 768) for _ in layer_map)
    params = list(student.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=LR, fused=True)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        out = student(waves, lengths)
        predictions = [head(out.hidden_states[s]) for head, (s, _) in zip(heads, layer_map)]
        loss, _ = distillation_loss(predictions, targets, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times[1:]  # the first step pays one-off allocations


def sslc_loop(student, targets, train, config) -> list[float]:
    stamps = []

    def report(step: int, loss: float) -> bool:
        stamps.append(time.perf_counter())
        return step >= config.steps  # stop at the last report: no held-out pass

    result = run_short_trial(student, targets, train, train, config, on_report=report, kept_layers=KEPT_LAYERS)
    if result.status not in ("completed", "stopped"):
        raise RuntimeError(f"trial failed: {result.reason}")
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="steps per loop per round (first one not timed)")
    parser.add_argument("--crop", type=float, default=2.0, help="seconds per crop (batch of 2)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sslc-bench-overhead-"))
    corpus = make_demo_corpus(work / "corpus", num_files=2, seconds=(args.crop + 0.5, args.crop + 1.0), seed=0)
    train = SegmentDataset(make_segments(discover_audio(corpus), args.crop, seed=0))

    teacher = load_teacher("random:hubert-base")
    config = student_config(teacher.config)
    initial = build_encoder(config, seed=1).state_dict()
    layer_map = default_layer_map(KEPT_LAYERS, teacher.config.num_layers)
    targets = TeacherTargets(teacher, work / "targets", crop_seconds=args.crop)
    needed = sorted({t for _, t in layer_map})
    batch = targets.source(train, needed).get([0, 1])
    waves, lengths = collate([train[0], train[1]])
    fixed_targets = [batch.hidden[needed.index(t)] for _, t in layer_map]
    print(f"torch threads: {torch.get_num_threads()}; batch 2 x {args.crop:g} s; layer map {layer_map}")

    trial = TrainerConfig(steps=args.steps, batch_size=2, lr=LR, grad_clip=CLIP, log_every=1,
                          crop_seconds=args.crop, device="cpu")
    times = {"plain": [], "sslc": []}
    for round_index in range(args.rounds):
        for name in ("plain", "sslc"):
            student = build_encoder(config)
            student.load_state_dict(initial)
            student.train()
            if name == "plain":
                times[name] += plain_loop(student, layer_map, waves, lengths, fixed_targets, batch.frame_mask,
                                          args.steps)
            else:
                times[name] += sslc_loop(student, targets, train, trial)
        print(f"round {round_index + 1}: plain {statistics.median(times['plain']):.3f} s/step, "
              f"sslc {statistics.median(times['sslc']):.3f} s/step")

    plain, ours = statistics.median(times["plain"]), statistics.median(times["sslc"])
    audio = float(lengths.sum()) / 16000
    print(f"median over {len(times['plain'])} steps each: plain {audio / plain:.2f} audio s/s, "
          f"sslc {audio / ours:.2f} audio s/s")
    print(f"trainer_overhead: {plain / ours:.3f}")


if __name__ == "__main__":
    main()
