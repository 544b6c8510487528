"""Teacher-target cache build throughput against a bare batched teacher forward over the same crops, in one run.

The build is what a search's driver runs before its trials (`TeacherTargets.build`: crops read by seeking from
flac files on disk, equal-length batches, the teacher under inference mode on the fastest device with all the
process's threads, hidden states converted to fp16 and written into memmaps in resumable chunks, a done-marker per
chunk). The reference is the teacher's forward alone over the same batches of the same crops, already decoded in
memory, with the same threads: what the build could at best reach. Both are timed in audio seconds per second;
the reference runs before and after the build and the mean of its two runs is taken (a shared machine drifts).

Default: a HuBERT-Base-shaped random teacher (`random:hubert-base`), 48 random 2 s crops from 32 generated 4 s
flac files, the default targets 4, 8, 12, batch 8, on CUDA where present, else the CPU. `--quick`: the tiny
teacher on 16 crops, seconds; its figure means little.

Measured (2 CPU cores shared with other helpers' jobs, load average ~20, no GPU lent to this task, so no CUDA
figure): bare forward 106.7 s and 164.2 s, build 146.6 s over 96 s of audio (0.7 audio s/s each): target_build
0.924. The two bare runs differ by 1.5x on the shared machine, so the ratio is uncertain by about that much; on
the tiny teacher (`--quick`) it was 0.991. The last line is the headline `target_build: <bare forward s / build
s>` (goal >= 0.8).

    python benchmarks/target_build.py [--teacher random:hubert-base] [--crops 48] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from sslc.data import SAMPLE_RATE, SegmentDataset, discover_audio, random_crops  # noqa: E402
from sslc.models.teachers import load_teacher  # noqa: E402
from sslc.protocol import default_targets  # noqa: E402
from sslc.trainers import TeacherTargets  # noqa: E402
from sslc.trainers.cache import equal_length_batches  # noqa: E402
from sslc.trainers.targets import build_device  # noqa: E402

CROP_SECONDS = 2.0
BATCH = 8


def write_corpus(root: Path, files: int, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    for i in range(files):
        n = int(seconds * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(n)
        sf.write(str(root / f"utt{i:03d}.flac"), wave.astype(np.float32), SAMPLE_RATE)
    return root


def bare_forward(teacher, crops: SegmentDataset, device: torch.device) -> float:
    """Seconds of the teacher's forward alone over the build's batches (crops decoded beforehand)."""
    batch_size = BATCH * (4 if device.type == "cuda" else 1)  # as TeacherTargets.build batches
    batches = [torch.from_numpy(np.stack([crops[i] for i in batch]))
               for batch in equal_length_batches(crops.lengths, batch_size)]
    teacher.to(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for waves in batches:
            teacher(waves.to(device)).hidden_states[-1].float().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="random:hubert-base")
    parser.add_argument("--crops", type=int, default=48)
    parser.add_argument("--quick", action="store_true", help="the tiny teacher on 16 crops")
    args = parser.parse_args()
    spec, count = ("random:tiny", 16) if args.quick else (args.teacher, args.crops)
    torch.set_num_threads(os.cpu_count() or 1)  # as the driver builds: with all its threads
    device = build_device()
    with tempfile.TemporaryDirectory(prefix="sslc-target-build-") as tmp:
        corpus = write_corpus(Path(tmp), 32, 4.0)
        segments = random_crops(discover_audio(corpus), count, CROP_SECONDS, seed=0)
        teacher = load_teacher(spec, seed=0).eval()
        layers = default_targets(teacher.config.num_layers)
        audio = count * CROP_SECONDS
        warm = SegmentDataset(segments)
        bare_forward(teacher, SegmentDataset(segments[:BATCH]), device)  # first-call costs, not timed
        before = bare_forward(teacher, warm, device)
        targets = TeacherTargets(teacher.cpu(), Path(tmp) / "cache", crop_seconds=CROP_SECONDS, batch_size=BATCH)
        started = time.perf_counter()
        targets.build(SegmentDataset(segments), layers, device=device)  # a fresh dataset: crops read from disk
        build = time.perf_counter() - started
        after = bare_forward(teacher, warm, device)
    bare = (before + after) / 2
    print(f"teacher {spec} on {device} ({torch.get_num_threads()} threads), {count} crops of {CROP_SECONDS:g} s "
          f"({audio:g} s of audio), layers {layers}, batch {BATCH}")
    print(f"bare batched forward (crops in memory): {before:.2f} s and {after:.2f} s -> {audio / bare:.1f} audio s/s")
    print(f"cache build (read by seeking, forward, fp16, memmaps, chunk markers): {build:.2f} s "
          f"-> {audio / build:.1f} audio s/s")
    print(f"target_build: {bare / build:.3f}")


if __name__ == "__main__":
    main()
