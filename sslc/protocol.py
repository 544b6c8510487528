"""The evaluation protocol: what a candidate's score means, fixed once per study.

Every candidate of a study is scored on the same teacher target layers, the same held-out segments and the same
per-target loss, and its score is the mean over those targets. Which student layer predicts a target depends on
the student's architecture (see `target_layer_map`), but how many terms the score has never does: a 2-layer
student and a 12-layer one are graded on the same questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from sslc.errors import UserError

# 2: the held-out set is sized in audio (at most HELDOUT_SEGMENTS segments), not 10% of the files; version 1
# studies score on other segments, so they are never resumed under version 2.
PROTOCOL_VERSION = 2
# Held-out segments of a study by default: a tenth of the files, one crop each, but never more than this many, so
# scoring costs the same on 30 files and on 281k (128 crops of 2 s: 256 s of audio, ~0.1 of a 100-step trial's
# training compute at batch 4).
HELDOUT_SEGMENTS = 128
HELDOUT_RULE = f"one crop from each of 10% of the files (by a hash of their path), at most {HELDOUT_SEGMENTS}"
LOSS_NAME = "l1+cosine"  # DistilHuBERT's L1 + -log sigmoid(cos), shifted so a perfect prediction scores 0
WEIGHTING = "frame"  # each target's loss averages over the real frames of all held-out segments
AVERAGE = "mean over targets"


def default_targets(teacher_depth: int) -> list[int]:
    """Teacher layers at 1/3, 2/3 and the end (4, 8, 12 for 12 layers): the DistilHuBERT / DPHuBERT targets."""
    return sorted({max(1, round(teacher_depth * k / 3)) for k in (1, 2, 3)})


def parse_targets(spec: str | Sequence[int] | None, teacher_depth: int | None = None) -> list[int] | str:
    """`None`/"default" -> the default targets; "all" -> every layer; "4,8,12" or [4, 8, 12] -> those layers.

    Teacher layers are 1-based (layer L's output is hidden state L). Without `teacher_depth` only the syntax is
    checked (so a typo fails before the teacher loads) and "default"/"all" come back as the words.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "default")):
        return default_targets(teacher_depth) if teacher_depth is not None else "default"
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(1, teacher_depth + 1)) if teacher_depth is not None else "all"
    if isinstance(spec, str):
        items = [item.strip() for item in spec.split(",")]
        if not all(item.isdigit() for item in items):
            raise UserError(f"--targets {spec!r}: give 'default', 'all' or teacher layers such as 4,8,12")
        layers = [int(item) for item in items]
    else:
        layers = [int(item) for item in spec]
    if not layers:
        raise UserError("--targets is empty: give 'default', 'all' or teacher layers such as 4,8,12")
    if len(set(layers)) != len(layers):
        raise UserError(f"--targets {layers} repeats a layer")
    low = 1
    high = teacher_depth if teacher_depth is not None else None
    bad = [t for t in layers if t < low or (high is not None and t > high)]
    if bad:
        where = f"1..{high}" if high is not None else "1 or more"
        raise UserError(f"--targets {bad} out of range: the teacher's layers are {where}")
    return sorted(layers)


def target_key(layer: int) -> str:
    """How a target is named in records (`heldout_loss_by_target`): its 1-based teacher layer, as a string."""
    return str(int(layer))


def mean_score(by_target: Mapping[str, float]) -> float:
    """The score of a candidate: the plain mean of its per-target held-out losses."""
    if not by_target:
        raise ValueError("no per-target losses to average")
    return sum(by_target.values()) / len(by_target)


@dataclass(frozen=True)
class EvaluationProtocol:
    """How every candidate of one study is scored. Part of the study's identity: a study is never resumed
    under another protocol, so all of its scores stay comparable."""

    targets: tuple[int, ...]
    heldout_segments: int
    heldout_fingerprint: str  # the held-out segments: files (relative to their common folder), crops, sizes
    crop_seconds: float
    heldout_seconds: float = 0.0  # the held-out audio in all
    heldout_rule: str = HELDOUT_RULE
    loss: str = LOSS_NAME
    weighting: str = WEIGHTING
    average: str = AVERAGE
    version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def for_heldout(cls, targets: Sequence[int], heldout, crop_seconds: float) -> EvaluationProtocol:
        """The protocol of scoring on `targets` over the segments of `heldout` (a SegmentDataset)."""
        # Imported here: the CLI's early input checks read this module before torch (which sslc.data needs).
        from sslc.data.audio import SAMPLE_RATE
        from sslc.data.segments import segments_fingerprint

        fingerprint = segments_fingerprint(heldout.segments)
        seconds = sum(heldout.lengths) / SAMPLE_RATE
        return cls(tuple(int(t) for t in targets), len(heldout), fingerprint, float(crop_seconds), round(seconds, 3))

    @classmethod
    def from_dict(cls, data: Mapping) -> EvaluationProtocol:
        return cls(**{**data, "targets": tuple(int(t) for t in data["targets"])})

    def describe(self) -> str:
        layers = ", ".join(str(t) for t in self.targets)
        return (
            f"score = mean over teacher layers {layers} of the held-out {self.loss} loss ({self.weighting}-weighted), "
            f"on {self.heldout_segments} held-out segments ({_duration(self.heldout_seconds)} of audio, crops of at "
            f"most {self.crop_seconds:g} s)"
        )


def _duration(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds < 600 else f"{seconds / 60:.3g} min"
