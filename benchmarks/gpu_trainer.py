"""The trainer's CUDA path (bf16 autocast) on a HuBERT-Base-sized teacher: loss falls, resume is exact, throughput.

Needs a CUDA GPU (CI has none; run it where one is lent). For random:hubert-base and a student at ~40% of its
MACs, 4 s crops: trains N steps uninterrupted, then the same run interrupted half-way and resumed from its
checkpoint, and compares final weights; also times teacher vs student inference on the GPU.
Headline: student training steps per second.

Without a GPU the default run says so and exits 0. `--quick` runs the same steps (train, interrupt, resume,
compare, time) on the random:tiny teacher for 6 steps of 1 s crops, on the GPU when there is one and on the
CPU otherwise: it checks that the benchmark still works (CI runs it); its figures mean nothing.

    python benchmarks/gpu_trainer.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from sslc.compress import CompressionConfig, compress  # noqa: E402
from sslc.data import SegmentDataset, discover_audio, make_demo_corpus, make_segments, split_heldout  # noqa: E402
from sslc.metrics import compare_latency, count_macs  # noqa: E402
from sslc.models.teachers import load_teacher  # noqa: E402
from sslc.trainers import TeacherTargets, TrainerConfig, train_full  # noqa: E402

STEPS, CROP, BATCH = 60, 4.0, 8


class Interrupt(Exception):
    pass


def student_config(spec, quick: bool) -> CompressionConfig:
    """~40% of a HuBERT Base's MACs (8 of 12 layers, 8 heads, FFN 1536, 384 CNN channels); tiny: 2 layers, halved."""
    depth = 2 if quick else 8
    config = CompressionConfig.evenly_spaced(spec, depth)
    config.heads = [max(1, spec.layers[i].heads // 2) if quick else 8 for i in config.layers]
    config.ffn = [spec.layers[i].ffn_dim // 2 for i in config.layers]
    config.conv_channels = [max(1, c.channels * 3 // 4) for c in spec.conv_layers]
    return config


def main(argv: list[str] | None = None) -> None:
    global STEPS, CROP, BATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="random:tiny, 6 steps, GPU or CPU (a smoke test)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("gpu_trainer: skipped (no CUDA GPU on this machine; --quick runs a CPU smoke test)")
        return
    device = "cuda" if cuda else "cpu"
    if args.quick:
        STEPS, CROP, BATCH = 6, 1.0, 2
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    files = discover_audio(make_demo_corpus(work / "demo", num_files=8 if args.quick else 64,
                                            seconds=(CROP, CROP + 2.0) if args.quick else (3.0, 6.0)))
    train_files, heldout_files = split_heldout(files)
    train = SegmentDataset(make_segments(train_files, CROP, 0))
    heldout = SegmentDataset(make_segments(heldout_files, CROP, 0))
    teacher = load_teacher("random:tiny" if args.quick else "random:hubert-base").to(device)
    spec = teacher.config
    config = student_config(spec, args.quick)
    ratio = count_macs(config.student_architecture(spec)).total / count_macs(spec).total
    print(f"student: {ratio:.1%} of the teacher's MACs; {len(train)} training segments of <= {CROP:g} s; {device}")
    targets = TeacherTargets(teacher, work / "targets", crop_seconds=CROP)
    every = max(1, STEPS // 6)
    trainer = TrainerConfig(steps=STEPS, batch_size=BATCH, lr=2e-4, checkpoint_every=every, log_every=every,
                            crop_seconds=CROP, device=device)

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
    run(work / "resumed", stop_at=STEPS // 2 + max(1, every // 2))  # between two checkpoints
    resumed, second = run(work / "resumed")
    diff = max((a - b).abs().max().item() for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))
    print(f"resumed from step {second.resumed_from_step}: max |weight difference| vs uninterrupted = {diff:.3g}")

    student = reference.eval()
    timing = compare_latency({"teacher": teacher, "student": student}, seconds=1 if args.quick else 10,
                             device=device, repeats=2 if args.quick else 20)
    print(f"{device} latency at {1 if args.quick else 10} s: teacher {timing['teacher'].median_ms:.2f} ms, "
          f"student {timing['student'].median_ms:.2f} ms")
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}")
    print(f"gpu_trainer: {STEPS / result.seconds_training:.1f} steps/s (batch {BATCH}, {CROP:g} s crops"
          f"{', bf16' if cuda else ', CPU float32'}), wall {seconds:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
