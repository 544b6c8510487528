"""Named retraining recipes (`sslc-retrain --recipe`): how long and how a chosen point is trained to completion.

One place for every value a recipe sets. A value of None means "as the search's short trials had it", which is
what `quick` uses everywhere: `quick` is the behaviour of sslc-retrain before recipes existed (10x the trials'
steps, their batch, crop, lr and schedule), so old runs keep their meaning.

The published recipes, as their papers and repositories state them (see /work/shared/RESEARCH.md):

- `distilhubert` (Chang et al. 2022, s3prl's distiller config): 200k steps, batch 24 utterances of LibriSpeech
  (mean ~12.3 s: 24 x 12 s = 288 s of audio a step), lr 2e-4, linear warm-up over 7% of the steps then linear
  decay, gradient clipping at 10, fp16. Here: 12 s crops, bf16 autocast on CUDA (no loss scaler needed), fp32
  on CPU.
- `dphubert` (Peng et al. 2023): 50k distill+prune updates then 25k final distillation, 160 s of audio per GPU
  on 4 GPUs (640 s a step), fp16. sslc's structure is fixed by the search, so the two stages are one 75k-step
  distillation; lr 2e-4, warm-up 20% of the steps (15k of 75k; our reading of its scripts), linear decay,
  clipping at 10, 10 s crops, bf16 as above.

The batch is given in seconds of audio per optimizer step (global: the same whatever the number of workers);
the trainer's batch size is that many crops, `round(batch_seconds / crop_seconds)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from sslc.errors import UserError
from sslc.trainers.config import DECAYS, PRECISIONS, TrainerConfig

# quick: this many times the short trials' steps (the retrain default before recipes).
QUICK_STEPS_FACTOR = 10


@dataclass(frozen=True)
class Recipe:
    """A retraining schedule. None: the search's short-trial value (for `steps`: QUICK_STEPS_FACTOR x it)."""

    name: str
    steps: int | None = None
    batch_seconds: float | None = None  # seconds of audio per optimizer step, over all workers
    crop_seconds: float | None = None  # length of the training crops
    lr: float | None = None  # peak learning rate
    warmup: float | None = None  # linear warm-up, as a fraction of the steps
    decay: str | None = None  # after the warm-up, to zero at the last step: cosine | linear
    grad_clip: float | None = None  # max gradient norm (0: none)
    precision: str | None = None  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "quick": Recipe("quick"),
    "distilhubert": Recipe(
        "distilhubert", steps=200_000, batch_seconds=288.0, crop_seconds=12.0, lr=2e-4, warmup=0.07,
        decay="linear", grad_clip=10.0, precision="auto",
    ),
    "dphubert": Recipe(
        "dphubert", steps=75_000, batch_seconds=640.0, crop_seconds=10.0, lr=2e-4, warmup=0.2,
        decay="linear", grad_clip=10.0, precision="auto",
    ),
}
OVERRIDABLE = tuple(f.name for f in fields(Recipe) if f.name != "name")


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return RECIPES[name]


def apply_recipe(short: TrainerConfig, name: str = "quick", **overrides) -> tuple[TrainerConfig, dict]:
    """The trainer settings of recipe `name` (values left None taken from the search's `short` trainer), with
    `overrides` (a Recipe field -> value; None: not overridden). Returns (settings, what to record: the recipe's
    name, its resolved values and the overrides given). UserError (one line) on a bad name or value."""
    chosen = recipe(name)
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise UserError(f"unknown recipe setting(s): {', '.join(unknown)} (known: {', '.join(OVERRIDABLE)})")
    given = {k: v for k, v in overrides.items() if v is not None}
    _check(given)
    merged = replace(chosen, **given)
    crop = merged.crop_seconds if merged.crop_seconds is not None else short.crop_seconds
    batch_seconds = merged.batch_seconds if merged.batch_seconds is not None else short.batch_size * short.crop_seconds
    batch_size = max(1, round(batch_seconds / crop))
    grad_clip = merged.grad_clip if merged.grad_clip is not None else short.grad_clip
    config = replace(
        short,
        steps=merged.steps if merged.steps is not None else short.steps * QUICK_STEPS_FACTOR,
        batch_size=batch_size,
        crop_seconds=crop,
        lr=merged.lr if merged.lr is not None else short.lr,
        warmup_fraction=merged.warmup if merged.warmup is not None else short.warmup_fraction,
        decay=merged.decay or short.decay,
        grad_clip=grad_clip or None,
        precision=merged.precision or short.precision,
    )
    resolved = {
        "name": name,
        "steps": config.steps,
        "batch_seconds": batch_size * crop,
        "batch_size": batch_size,
        "crop_seconds": crop,
        "lr": config.lr,
        "warmup": config.warmup_fraction,
        "decay": config.decay,
        "grad_clip": config.grad_clip,
        "precision": config.precision,
        "overrides": given,
    }
    return config, resolved


def _check(given: dict) -> None:
    """Each override's own range, stated with the option that sets it."""
    problems = []
    for key in ("steps",):
        if key in given and (not isinstance(given[key], int) or given[key] < 1):
            problems.append(f"--steps must be an integer >= 1, got {given[key]}")
    for key, option in (("batch_seconds", "--batch-seconds"), ("crop_seconds", "--crop-seconds"), ("lr", "--lr")):
        if key in given and not given[key] > 0:
            problems.append(f"{option} must be > 0, got {given[key]:g}")
    if "warmup" in given and not 0.0 <= given["warmup"] < 1.0:
        problems.append(f"--warmup is a fraction of the steps in [0, 1), got {given['warmup']:g}")
    if "decay" in given and given["decay"] not in DECAYS:
        problems.append(f"--decay must be one of {', '.join(DECAYS)}, got {given['decay']!r}")
    if "grad_clip" in given and given["grad_clip"] < 0:
        problems.append(f"--grad-clip must be >= 0 (0: no clipping), got {given['grad_clip']:g}")
    if "precision" in given and given["precision"] not in PRECISIONS:
        problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {given['precision']!r}")
    if problems:
        raise UserError("; ".join(problems))
