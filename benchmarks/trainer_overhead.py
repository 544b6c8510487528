"""Throughput of sslc's short-trial training loop vs a minimal hand-written PyTorch loop.

Same student (random:hubert-base compressed to ~40% of its MACs: 4 of 12 layers, 352 CNN channels), same batch
(both 2 s crops of a two-file corpus, every step), same loss (`sslc.losses.distillation_loss` against the same
cached teacher targets, through one linear head per layer-map pair), same optimizer (fused AdamW) and gradient
clipping. sslc's time per step is the interval between two report callbacks of `run_short_trial` (log_every=1),
so it covers everything its loop does: sampling, collating, reading the target cache, masks, the step, the
finiteness check, the LR schedule and the callback. The plain loop's time per step covers forward, loss,
backward, clipping and the update on tensors prepared once. Each loop's first step (one-off allocations) is not
timed. Rounds alternate the order of the two loops; the medians of the per-step times are compared.

The last line is the headline: `trainer_overhead: <sslc throughput / plain throughput>` (= plain median s/step
over sslc median s/step, all rounds pooled; the goal is >= 0.95).

Threads: one by default, so that a busy second core (other jobs on a 2-core machine) does not make two intra-op
threads wait for each other; --threads 2 on an idle machine.

Run time: no new round starts once `--time-limit` seconds have passed since launch (at least two rounds run);
it prints how many it did. `--quick` runs one round of 2 steps on 1 s crops with the random:tiny teacher: it
checks that the benchmark still works (CI runs it), its figure means little.

    python benchmarks/trainer_overhead.py [--rounds 10] [--steps 4] [--crop 2] [--threads 1] [--time-limit 240]
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
from torch import nn  # noqa: E402

import sslc  # noqa: E402
from sslc.compress import CompressionConfig, compress  # noqa: E402
from sslc.data import SegmentDataset, collate, discover_audio, make_demo_corpus, make_segments  # noqa: E402
from sslc.losses import distillation_loss  # noqa: E402
from sslc.models import build_encoder  # noqa: E402
from sslc.trainers import TeacherTargets, TrainerConfig, default_layer_map, run_short_trial  # noqa: E402

LR, CLIP = 2e-4, 10.0
GOAL = 0.95
MIN_ROUNDS = 2


def student_compression(teacher_config) -> CompressionConfig:
    """4 evenly spaced layers (2, 5, 8, 11) at full size and 352 CNN channels: ~40% of the teacher's MACs."""
    config = CompressionConfig.evenly_spaced(teacher_config, min(4, teacher_config.num_layers))
    config.conv_channels = [c.channels * 11 // 16 for c in teacher_config.conv_layers]  # 352 of Base's 512
    return config


def plain_loop(student, layer_map, waves, lengths, targets, mask, steps: int) -> list[float]:
    """The reference: what one would write by hand for the same training step."""
    dim = student.config.embed_dim
    heads = nn.ModuleList(nn.Linear(dim, dim) for _ in layer_map)
    params = list(student.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, fused=True)
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
        loss.item()  # a hand-written loop logs the loss too
        times.append(time.perf_counter() - started)
    return times[1:]  # the first step pays one-off allocations


def sslc_loop(student, targets, train, config, kept_layers) -> list[float]:
    stamps = []

    def report(step: int, loss: float) -> bool:
        stamps.append(time.perf_counter())
        return step >= config.steps  # stop at the last report: no held-out pass

    result = run_short_trial(student, targets, train, train, config, on_report=report, kept_layers=kept_layers)
    if result.status not in ("completed", "stopped"):
        raise RuntimeError(f"trial failed: {result.reason}")
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4, help="steps per loop per round (the first is not timed)")
    parser.add_argument("--crop", type=float, default=2.0, help="seconds per crop (batch of 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see the docstring)")
    parser.add_argument("--time-limit", type=float, default=240.0,
                        help=f"start no new round after this many seconds since launch (at least {MIN_ROUNDS} run)")
    parser.add_argument("--quick", action="store_true",
                        help="random:tiny, one round of 2 steps on 1 s crops (a smoke test)")
    args = parser.parse_args(argv)
    launched = time.perf_counter()
    if args.quick:
        args.rounds, args.steps, args.crop = 1, 2, 1.0
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="sslc-bench-overhead-") as tmp:
        work = Path(tmp)
        corpus = make_demo_corpus(work / "corpus", num_files=2, seconds=(args.crop + 0.5, args.crop + 1.0), seed=0)
        train = SegmentDataset(make_segments(discover_audio(corpus), args.crop, seed=0))

        teacher = sslc.load_teacher("random:tiny" if args.quick else "random:hubert-base")
        compression = student_compression(teacher.config)
        architecture = compression.student_architecture(teacher.config)
        initial = compress(teacher, compression).state_dict()
        kept = compression.layers
        layer_map = default_layer_map(kept, teacher.config.num_layers)
        targets = TeacherTargets(teacher, work / "targets", crop_seconds=args.crop)
        needed = sorted({t for _, t in layer_map})
        batch = targets.source(train, needed).get([0, 1])  # builds the cache, outside any timing
        waves, lengths = collate([train[0], train[1]])
        fixed_targets = [batch.hidden[needed.index(t)] for _, t in layer_map]
        print(
            f"student: {len(kept)} layers {kept}, {compression.conv_channels[0]} CNN channels; batch 2 x "
            f"{args.crop:g} s; layer map {layer_map}; {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )

        trial = TrainerConfig(steps=args.steps, batch_size=2, lr=LR, grad_clip=CLIP, log_every=1,
                              crop_seconds=args.crop, device="cpu", num_threads=args.threads)
        times: dict[str, list[float]] = {"plain": [], "sslc": []}
        print(f"{'round':>5} {'plain s/step':>13} {'sslc s/step':>12} {'ratio':>7}")
        round_ratios = []
        for round_index in range(args.rounds):
            if round_index >= MIN_ROUNDS and time.perf_counter() - launched > args.time_limit:
                print(f"time limit: stopped after {round_index} of {args.rounds} rounds")
                break
            this_round = {}
            for name in ("plain", "sslc") if round_index % 2 == 0 else ("sslc", "plain"):
                student = build_encoder(architecture)
                student.load_state_dict(initial)
                student.train()
                if name == "plain":
                    this_round[name] = plain_loop(student, layer_map, waves, lengths, fixed_targets,
                                                  batch.frame_mask, args.steps)
                else:
                    this_round[name] = sslc_loop(student, targets, train, trial, kept)
                times[name] += this_round[name]
            plain, ours = (statistics.median(this_round[n]) for n in ("plain", "sslc"))
            round_ratios.append(plain / ours)
            print(f"{round_index + 1:>5} {plain:>13.3f} {ours:>12.3f} {plain / ours:>7.3f}")

    plain, ours = statistics.median(times["plain"]), statistics.median(times["sslc"])
    audio = float(lengths.sum()) / 16000
    ratio = plain / ours
    print(f"median over {len(times['plain'])} steps each: plain {plain:.3f} s/step ({audio / plain:.2f} audio s/s), "
          f"sslc {ours:.3f} s/step ({audio / ours:.2f} audio s/s); median of the per-round ratios "
          f"{statistics.median(round_ratios):.3f}")
    print(f"goal: sslc >= {GOAL} x the plain loop's throughput; {'met' if ratio >= GOAL else 'MISSED'}")
    print(f"trainer_overhead: {ratio:.3f}")


if __name__ == "__main__":
    main()
