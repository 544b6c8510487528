"""Data-parallel retraining (`sslc-retrain --workers N [--gpus-per-worker G]`) with Ray Train's TorchTrainer.

Every worker builds the same student (same teacher, data and importance scores), fits the same heads and runs the
same loop (`sslc.trainers.train_full`); each step it reads and takes only its shard of the same global batch (the
recipe's: indices `rank::world`, `prefetched_batches(shard=...)`), and DistributedDataParallel (gloo on CPU, nccl on GPUs) averages the gradients, so 1 and
N workers train the same thing (up to float summation order, and exactly when the shards hold equally many
frames: crops of one length). The loss on the curve is the workers' mean. Teacher targets come from the run's
cache (or a node-local one on another node, `RunInputs.use_node_cache`), as in the search's trials.

Checkpoints go through Ray Train: rank 0 writes its checkpoint directory (last.pt, best.pt) and reports it
(`ray.train.report`); the storage (default `<run_dir>/retrain/<trial>/ray`, on a multi-node cluster a shared
path or s3://...) keeps the latest; a killed run started again with the same command resumes from it
(`ray.train.get_checkpoint`), curve and validation included.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from sslc.errors import UserError
from sslc.trainers.checkpoint import load_checkpoint
from sslc.trainers.distill import BEST_NAME, FullTrainResult, StudentLoop, train_full
from sslc.trainers.step import StudentAndHeads

RAY_DIR = "ray"  # under the trial's retrain directory: Ray Train's storage for this retrain


class DataParallelLoop(StudentLoop):
    """The student loop on one Ray Train worker: its shard of each global batch, DDP over student and heads."""

    def __init__(self, *args, before_step=None, **kwargs):
        import ray.train
        import ray.train.torch

        super().__init__(*args, **kwargs)
        self.before_step = before_step
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.shard = (self.rank, self.world)  # the loader reads this worker's part of each global batch only
        if self.config.batch_size < self.world:
            raise UserError(f"a global batch of {self.config.batch_size} crops cannot be shared by {self.world} workers")
        # Parameters no target reaches (layers above the deepest mapped one) get no gradient: DDP must know.
        self.step.network = ray.train.torch.prepare_model(
            StudentAndHeads(self.student, self.heads), move_to_device=False,
            parallel_strategy_kwargs={"find_unused_parameters": True},
        )

    def train_on(self, indices: list[int]):
        if self.before_step is not None:
            self.before_step(self.rank, self.scheduler.last_epoch + 1)  # the step about to be trained
        outcome = self.step.train(*self.batch(indices))  # `indices`: this worker's shard, as the loader read it
        both = torch.tensor([outcome.loss, outcome.audio_seconds], dtype=torch.float64)
        torch.distributed.all_reduce(both)  # the global batch's loss (mean of the shards) and audio
        return replace(outcome, loss=float(both[0]) / self.world, audio_seconds=float(both[1]))

    def write_checkpoint(self, checkpoint_dir: Path, state) -> Path:
        import ray.train

        path = super().write_checkpoint(checkpoint_dir, state) if self.rank == 0 else Path(checkpoint_dir)
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if self.rank == 0 else None
        # Every worker reports (Ray Train waits for all); only rank 0's carries the checkpoint.
        ray.train.report({"step": state.step, "resumed_from_step": state.resumed_from}, checkpoint=checkpoint)
        return path


def _worker(config: dict) -> None:
    """One Ray Train worker: rebuild the student, restore Ray Train's latest checkpoint if any, train."""
    import ray
    import ray.train

    from sslc.compress import CompressionConfig
    from sslc.trainers import TrainerConfig

    context, train_data = ray.get(config["inputs"])
    context.use_node_cache()
    compression = CompressionConfig.from_dict(config["compression"])
    if config["anytime_dir"]:
        from sslc.trainers.once_for_all import load_once_for_all

        student = load_once_for_all(config["anytime_dir"]).elastic.extract(compression)
    else:
        student = context.build_student(compression, quantize=False)
    local = Path(tempfile.mkdtemp(prefix="sslc-retrain-"))
    found = ray.train.get_checkpoint()
    if found is not None:
        with found.as_directory() as saved:
            for file in Path(saved).iterdir():
                shutil.copy2(file, local / file.name)
    trainer = TrainerConfig.from_dict(config["trainer"])
    loop = functools.partial(DataParallelLoop, before_step=config["before_step"])
    feed = config["on_report"] if ray.train.get_context().get_world_rank() == 0 else None

    def on_report(step: int, loss: float) -> bool:
        if feed is not None:
            feed(step, loss)  # a progress view's feed; a stop would need every worker to agree: not asked here
        return False

    train_full(student, context.targets(), train_data, context.data.heldout, trainer, local, progress=False,
               kept_layers=compression.layers, loop_class=loop, on_report=on_report)


def train_data_parallel(
    context, train_data, compression: dict, trainer, out_dir: Path, workers: int, gpus_per_worker: float = 0.0,
    storage_path: str | None = None, name: str = "retrain", anytime_dir: Path | None = None, before_step=None,
    on_report=None,
) -> tuple[FullTrainResult, dict, dict | None]:
    """Train on `workers` Ray Train workers (Ray must be initialised); returns (the result as `train_full` gives
    it, the last checkpoint, the best checkpoint or None). `best_checkpoint` in the result names a copy of the
    best under `out_dir`. `before_step(rank, step)` (picklable) runs on every worker before it trains each step:
    a seam for tests that crash a worker. `on_report(step, loss)` (picklable) gets rank 0's training reports."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Time-based checkpoints would let workers disagree on when to report: step-based only.
    trainer = replace(trainer, checkpoint_seconds=None, num_threads=1 if not gpus_per_worker else trainer.num_threads,
                      device="cuda" if gpus_per_worker else "cpu")
    resources = {"CPU": 1, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    storage = storage_path or str((out_dir / RAY_DIR).resolve())
    fit = TorchTrainer(
        _worker,
        train_loop_config={
            "inputs": ray.put((context, train_data)), "compression": compression, "trainer": trainer.to_dict(),
            "anytime_dir": str(anytime_dir) if anytime_dir else None, "before_step": before_step,
            "on_report": on_report,
        },
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpus_per_worker), resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage, checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    try:
        result = fit.fit()
    except Exception as error:  # Ray wraps a worker's error; its first line says what failed
        from sslc.errors import first_line

        cause = getattr(error, "__cause__", None) or error
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        raise UserError(f"data-parallel retraining failed: {first_line(cause)}") from None
    with result.checkpoint.as_directory() as saved:
        last = load_checkpoint(Path(saved) / "last.pt")
        best = load_checkpoint(Path(saved) / BEST_NAME)
        kept = out_dir / BEST_NAME
        if best is not None:
            shutil.copy2(Path(saved) / BEST_NAME, kept)
    validation = [(int(s), float(v), dict(t)) for s, v, t in last["validation"]]
    final = validation[-1] if validation and validation[-1][0] == last["step"] else None
    outcome = FullTrainResult(
        status="completed" if last["step"] == last["total_steps"] else "stopped",
        steps_done=int(last["step"]),
        heldout_loss=final[1] if final else None,
        curve=[(int(s), float(v)) for s, v in last["curve"]],
        seconds_training=float(last["seconds"]),
        layer_map=[tuple(p) for p in last["layer_map"]],
        heldout_loss_by_target=final[2] if final else None,
        resumed_from_step=int(result.metrics.get("resumed_from_step", 0)) if result.metrics else 0,
        validation=validation,
        best_step=last.get("best_step"),
        best_checkpoint=str(kept) if best is not None else None,
        seconds_validating=float(last.get("seconds_validating", 0.0)),
    )
    return outcome, last, best
