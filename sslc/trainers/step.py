"""One distillation step (forward, loss, backward, clip, update) and the held-out loss, shared by short trials
and full training so both optimise exactly the same thing."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from sslc.data import SAMPLE_RATE, SegmentDataset, collate
from sslc.losses import distillation_loss
from sslc.trainers.cache import equal_length_batches
from sslc.trainers.heads import PredictionHeads
from sslc.trainers.target_batch import TargetBatch, TargetSource


@dataclass
class StepOutcome:
    loss: float
    grad_norm: float
    audio_seconds: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)

    def problem(self) -> str:
        """Why the step was not applied ('' when it was)."""
        if not math.isfinite(self.loss):
            return f"training loss became {self.loss}"
        if not math.isfinite(self.grad_norm):
            return f"gradient norm became {self.grad_norm} (loss {self.loss:.4g})"
        return ""


class StudentAndHeads(nn.Module):
    """Student and prediction heads as one module (what a data-parallel wrapper needs): (output, predictions)."""

    def __init__(self, student: nn.Module, heads: PredictionHeads):
        super().__init__()
        self.student, self.heads = student, heads

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor):
        out = self.student(waves, lengths)
        return out, self.heads(out.hidden_states)


class DistillationStep:
    """Student + heads against teacher targets. The forward pass runs under bf16 autocast on CUDA (precision
    "auto") or on any device ("bf16"), in float32 with "fp32"; the loss is always computed in float32."""

    def __init__(
        self,
        student: nn.Module,
        heads: PredictionHeads,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        grad_clip: float | None = None,
        device: torch.device | str = "cpu",
        precision: str = "auto",
    ):
        self.student, self.heads = student, heads
        self.precision = precision
        # When set (a data-parallel wrapper of student and heads, see `StudentAndHeads`), training's forward pass
        # goes through it, so its gradient hooks see the backward pass.
        self.network: nn.Module | None = None
        self.optimizer, self.scheduler = optimizer, scheduler
        self.grad_clip = grad_clip
        self.device = torch.device(device)
        self.parameters = [p for m in (student, heads) for p in m.parameters() if p.requires_grad]

    def _autocast(self):
        if self.precision == "bf16" or (self.precision == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(
        self, waves: torch.Tensor, lengths: torch.Tensor, targets: TargetBatch
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(distillation loss averaged over the targets, each target's term, [B, T] mask of the frames they
        averaged over)."""
        waves = waves.to(self.device, non_blocking=True)
        lengths = lengths.to(self.device, non_blocking=True)
        with self._autocast():
            out, predictions = (self.network or StudentAndHeads(self.student, self.heads))(waves, lengths)
        # Students and teachers share the conv strides, so frame counts agree; trimming guards odd front ends.
        frames = min(predictions[0].shape[1], targets.hidden[0].shape[1])
        predictions = [p[:, :frames].float() for p in predictions]
        hidden = [t[:, :frames].to(self.device, non_blocking=True) for t in targets.hidden]
        mask = targets.frame_mask[:, :frames].to(self.device, non_blocking=True)
        student_mask = out.frame_mask()
        if student_mask is not None:
            mask = mask & student_mask[:, :frames]
        loss, terms = distillation_loss(predictions, hidden, mask)
        return loss, terms, mask

    def train(self, waves: torch.Tensor, lengths: torch.Tensor, targets: TargetBatch) -> StepOutcome:
        """One update. A non-finite loss or gradient leaves the weights and optimizer state untouched.

        The previous step's gradients are dropped right before this step's backward pass (not at the end of the
        previous step): the allocator then hands the freed gradient buffers straight to the new gradients of the
        same sizes. Freed earlier, the forward pass's activations take those buffers and every backward pass
        faults in fresh pages for all gradients (on CPU ~5x the minor page faults and ~5% of a short trial's
        step time). `release_gradients` frees them when training is over.
        """
        loss, _, _ = self.loss(waves, lengths, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return self.update(loss.detach(), lengths)

    def update(self, loss: torch.Tensor, lengths: torch.Tensor) -> StepOutcome:
        """Clip the gradients accumulated since the optimizer's last `zero_grad` and apply them (optimizer and
        scheduler step), unless `loss` (the step's loss, detached) or the gradient norm is non-finite; `lengths`:
        the batch's lengths in samples (for the throughput)."""
        # An infinite max_norm still returns the norm (without scaling), which tells us the gradients are finite.
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip or math.inf)
        loss_value, norm_value = torch.stack([loss, norm.to(loss.device)]).tolist()  # one host sync
        outcome = StepOutcome(loss_value, norm_value, float(lengths.sum()) / SAMPLE_RATE)
        if outcome.finite:
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
        return outcome

    def release_gradients(self) -> None:
        """Free the last step's gradients (training is over, or paused for a held-out pass or a checkpoint)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(
        self, dataset: SegmentDataset, targets: TargetSource, batch_size: int, max_batches: int | None = None
    ) -> list[float]:
        """Each target's frame-weighted mean loss over the dataset (one value per head, in head order).

        Batches hold segments of one length only (as the target cache does): nothing is padded, so a segment's
        score never depends on its batch-mates (padding would leak into the front end's GroupNorm) and every
        student is graded on exactly the same frames. Same weights, same numbers.
        """
        modes = [(m, m.training) for m in (self.student, self.heads)]
        for module, _ in modes:
            module.eval()
        try:
            totals = None
            frames = torch.zeros((), dtype=torch.float64, device=self.device)
            for count, indices in enumerate(equal_length_batches(dataset.lengths, batch_size)):
                if max_batches is not None and count >= max_batches:
                    break
                waves, lengths = collate([dataset[i] for i in indices])
                _, terms, mask = self.loss(waves, lengths, targets.get(indices, waves, lengths))
                n = mask.sum()
                weighted = torch.stack(terms).double() * n
                totals = weighted if totals is None else totals + weighted
                frames += n
            if totals is None:
                raise ValueError("no held-out segments to evaluate")
            return (totals / frames.clamp(min=1)).tolist()
        finally:
            for module, was_training in modes:
                module.train(was_training)
