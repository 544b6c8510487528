"""Settings of one distillation run (a short search trial or a full retraining), as a JSON-friendly dataclass."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch

from sslc.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
DECAYS = ("cosine", "linear")
# auto: bf16 autocast on CUDA, fp32 elsewhere (what every trial does); bf16 / fp32: that, on any device.
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainerConfig:
    """How to distil a student from its teacher.

    `targets` are the teacher layers (1-based) every student is trained on and scored on, one loss term each,
    averaged (the evaluation protocol, `sslc.protocol`); None: the teacher's layers at 1/3, 2/3 and the
    end. `layer_map` lists [student_hidden_index, teacher_hidden_index] pairs in `EncoderOutput.hidden_states`
    indexing (0 = input of the first layer, i = output of layer i), one per target; None picks
    `target_layer_map` (the student layer whose origin is the deepest at or below each target).
    `epochs`, when set, overrides `steps` in full mode (steps = epochs x batches per epoch).
    """

    steps: int = 200
    batch_size: int = 4
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    decay: str = "cosine"
    grad_clip: float | None = 10.0
    log_every: int = 10
    eval_batches: int | None = None  # None: the whole held-out set
    crop_seconds: float = 4.0
    seed: int = 0
    targets: list[int] | None = None
    layer_map: list[list[int]] | None = None
    checkpoint_every: int = 500
    checkpoint_seconds: float | None = None  # full training: at most one periodic checkpoint this often (after the first)
    epochs: int | None = None
    device: str = "auto"
    num_threads: int | None = None  # None: leave torch's setting alone (a Ray worker may have set it)
    precision: str = "auto"  # see PRECISIONS
    head_fit_frames_per_dim: int | None = None  # full training: fit the heads on at least this many frames per channel
    eval_every: int | None = None  # full training: score the held-out set every this many steps (None: at the end)

    def validate(self) -> TrainerConfig:
        problems = []
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "log_every": self.log_every,
            "checkpoint_every": self.checkpoint_every,
        }
        problems += [f"{name} must be >= 1, got {value}" for name, value in positive.items() if value < 1]
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.decay not in DECAYS:
            problems.append(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.eval_batches is not None and self.eval_batches < 1:
            problems.append(f"eval_batches must be >= 1 or null, got {self.eval_batches}")
        if not self.crop_seconds > 0:
            problems.append(f"crop_seconds must be > 0, got {self.crop_seconds}")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be >= 1 or null, got {self.epochs}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.eval_every is not None and self.eval_every < 1:
            problems.append(f"eval_every must be >= 1 or null, got {self.eval_every}")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"num_threads must be >= 1 or null, got {self.num_threads}")
        if self.targets is not None and (
            not self.targets or any(int(t) < 1 for t in self.targets) or len(set(self.targets)) != len(self.targets)
        ):
            problems.append(f"targets must be distinct teacher layers >= 1, got {self.targets}")
        if self.layer_map is not None and (
            not self.layer_map or any(len(pair) != 2 for pair in self.layer_map)
        ):
            problems.append("layer_map must be a non-empty list of [student_index, teacher_index] pairs")
        if problems:
            raise UserError("invalid trainer config: " + "; ".join(problems))
        return self

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("trainer device 'cuda' was asked for, but no CUDA GPU is available")
        return torch.device(self.device)

    # ---- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> TrainerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"unknown trainer setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        data = dict(data)
        if data.get("targets") is not None:
            data["targets"] = [int(t) for t in data["targets"]]
        if data.get("layer_map") is not None:
            data["layer_map"] = [[int(v) for v in pair] for pair in data["layer_map"]]
        return cls(**data).validate()

    @classmethod
    def from_json(cls, text: str) -> TrainerConfig:
        return cls.from_dict(json.loads(text))
