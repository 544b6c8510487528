"""The trainer's CUDA path (bf16 autocast) on a HuBERT-Base-sized teacher: loss falls, resume is exact, throughput.

Needs a CUDA GPU (CI has none; run it where one is lent). For random:hubert-base and a student at ~40% of its
MACs, 4 s crops: trains N steps uninterrupted, then the same run interrupted half-way and resumed from its
checkpoint, and compares final weights; also times teacher vs student inference on the GPU.
Headline: student training steps per second.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from sslc.compress import CompressionConfig, compress
from sslc.data import SegmentDataset, discover_audio, make_demo_corpus, make_segments, split_heldout
from sslc.metrics import compare_latency, count_macs
from sslc.models.teachers import load_teacher
from sslc.trainers import TeacherTargets, TrainerConfig, train_full

STEPS, CROP, BATCH = 60, 4.0, 8


class Interrupt(Exception):
    pass


def main() -> None:
    if not torch.cuda.is_available():
        print("gpu_trainer: skipped (no CUDA GPU on this machine)")
        return
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    files = discover_audio(make_demo_corpus(work / "demo", num_files=64, seconds=(3.0, 6.0)))
    train_files, heldout_files = split_heldout(files)
    train = SegmentDataset(make_segments(train_files, CROP, 0))
    heldout = SegmentDataset(make_segments(heldout_files, CROP, 0))
    teacher = load_teacher("random:hubert-base").cuda()
    spec = teacher.config
    config = CompressionConfig.evenly_spaced(spec, 8)
    config.heads = [8] * 8
    config.ffn = [1536] * 8
    config.conv_channels = [384] * len(spec.conv_layers)
    ratio = count_macs(config.student_architecture(spec)).total / count_macs(spec).total
    print(f"student: {ratio:.1%} of the teacher's MACs; {len(train)} training segments of <= {CROP:g} s")
    targets = TeacherTargets(teacher, work / "targets", crop_seconds=CROP)
    trainer = TrainerConfig(steps=STEPS, batch_size=BATCH, lr=2e-4, checkpoint_every=10, log_every=10,
                            crop_seconds=CROP, device="cuda")

    def run(directory: Path, stop_at: int | None = None):
        student = compress(teacher, config)

        def on_report(step: int, loss: float) -> bool:
            if stop_at is not None and step >= stop_at:
                raise Interrupt
            return False

        try:
            result = train_full(student, targets, train, heldout, trainer, directory, progress=False,
                                on_report=on_report, kept_layers=config.layers)
        except Interrupt:
            return None, None
        return student, result

    start = time.perf_counter()
    reference, result = run(work / "uninterrupted")
    seconds = time.perf_counter() - start
    print(f"uninterrupted: loss curve {[(s, round(v, 4)) for s, v in result.curve]}, held-out {result.heldout_loss:.4f}")
    assert result.curve[-1][1] < result.curve[0][1], "training loss did not fall"
    run(work / "resumed", stop_at=STEPS // 2 + 5)
    resumed, second = run(work / "resumed")
    diff = max((a - b).abs().max().item() for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))
    print(f"resumed from step {second.resumed_from_step}: max |weight difference| vs uninterrupted = {diff:.3g}")

    student = reference.eval()
    timing = compare_latency({"teacher": teacher, "student": student}, seconds=10, device="cuda", repeats=20)
    print(f"GPU latency at 10 s: teacher {timing['teacher'].median_ms:.2f} ms, student {timing['student'].median_ms:.2f} ms")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"gpu_trainer: {STEPS / result.seconds_training:.1f} steps/s (batch {BATCH}, {CROP:g} s crops, bf16), "
          f"wall {seconds:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
