"""Data-parallel retraining throughput: Ray Train workers (DDP) at 1 and 2 workers, same global batch.

The same student (random:hubert-base, 2 evenly spaced layers, full width; `--quick`: random:tiny) is retrained
by `sslc.search.retrain_parallel.train_data_parallel` (what `sslc-retrain --workers N` runs) for `--steps` steps
of the same global batch (`--batch` crops of `--crop` s of the demo corpus), first on 1 worker, then on 2 (each
worker one CPU and one torch thread: its shard of the batch). Throughput is the loop's own time (the training
steps, its one checkpoint and report at the end; without the held-out validation and without Ray's start-up),
as steps/s and samples (crops)/s. With `--gpus` each worker takes one GPU and the second run uses every GPU.

Headline: `retrain_scaling: <2-worker samples/s / 1-worker samples/s>` (ideal 2.0).

Why it may not scale here: the machine has 2 cores, shared with other jobs; two workers need both, and each step
adds a gloo all-reduce of every gradient (the student's ~24 M parameters: ~100 MB through loopback per step) and
the per-step all-reduce of the loss; a batch of 4 crops leaves each worker 2, too little to amortise that.

Measured (2 cores shared with other helpers' jobs, load average falling from ~16 to ~8 during the run, so both
figures are inflated and noisy):
- defaults: 1 worker 0.242 steps/s, 0.97 samples/s (82.6 s); 2 workers 0.276 steps/s, 1.11 samples/s (72.4 s):
  retrain_scaling 1.141.
- --quick (random:tiny, 3 steps): 1.136. No GPU run (no device was used for this).

    python benchmarks/retrain_scaling.py [--steps 20] [--batch 4] [--crop 2] [--gpus]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sslc.compress import CompressionConfig  # noqa: E402
from sslc.search.inputs import prepare_inputs  # noqa: E402
from sslc.search.retrain_parallel import train_data_parallel  # noqa: E402
from sslc.search.runner import start_ray  # noqa: E402
from sslc.trainers import TrainerConfig  # noqa: E402


def measure(context, compression: dict, trainer: TrainerConfig, workers: int, gpus: float, root: Path) -> dict:
    out = root / f"w{workers}"
    out.mkdir()
    result, _, _ = train_data_parallel(context, context.data.train, compression, trainer, out, workers, gpus,
                                       name=f"scaling-{workers}")
    seconds = result.seconds_training - result.seconds_validating
    return {"workers": workers, "seconds": seconds, "steps_per_s": result.steps_done / seconds,
            "samples_per_s": result.steps_done * trainer.batch_size / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="global batch, in crops")
    parser.add_argument("--crop", type=float, default=2.0)
    parser.add_argument("--gpus", action="store_true", help="one GPU per worker; the second run uses every GPU")
    parser.add_argument("--quick", action="store_true", help="random:tiny, 3 steps of 2 x 1 s: checks it runs")
    args = parser.parse_args(argv)
    teacher = "random:tiny" if args.quick else "random:hubert-base"
    steps, batch, crop = (3, 2, 1.0) if args.quick else (args.steps, args.batch, args.crop)

    import ray
    import torch

    many = torch.cuda.device_count() if args.gpus else 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        context = prepare_inputs(teacher, "demo", root / "run", crop, 0)
        context.ship_audio()
        compression = CompressionConfig.evenly_spaced(context.teacher.config, min(2, context.teacher.config.num_layers))
        trainer = TrainerConfig(steps=steps, batch_size=batch, crop_seconds=crop, log_every=1, checkpoint_every=steps,
                                eval_every=steps, eval_batches=1)
        start_ray(None)
        try:
            rows = [measure(context, compression.to_dict(), trainer, w, 1.0 if args.gpus else 0.0, root)
                    for w in (1, many)]
        finally:
            ray.shutdown()
    print(f"{teacher}, 2-layer student, {steps} steps of {batch} x {crop:g} s crops (global), "
          f"{'GPUs' if args.gpus else 'CPU, 1 thread per worker'}; cores here: {os.cpu_count()}")
    for row in rows:
        print(f"  {row['workers']} worker(s): {row['seconds']:.1f} s, {row['steps_per_s']:.3f} steps/s, "
              f"{row['samples_per_s']:.2f} samples/s")
    print(f"retrain_scaling: {rows[1]['samples_per_s'] / rows[0]['samples_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
