"""Which student hidden state predicts which teacher hidden state.

Indices follow `EncoderOutput.hidden_states`: 0 is the input of the first layer, i the output of layer i. The
teacher side of a layer map is the evaluation protocol's targets (see `sslc.protocol`), one pair per
target, whatever the student's depth; only the student side depends on the architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

from sslc.errors import UserError
from sslc.protocol import default_targets

LayerMap = list[tuple[int, int]]


def target_layer_map(kept_teacher_layers: Sequence[int], targets: Sequence[int]) -> LayerMap:
    """For each teacher target t, the student layer whose teacher origin is the deepest at or below t.

    Why this choice: a student copied from the teacher then starts each prediction head from the hidden state
    that is closest to its target *from below* (identity heads make a kept layer's prediction of its own target
    exact before training), a deeper student layer is never asked to predict a shallower teacher layer, and the
    student's last layer always predicts the teacher's last target. A 2-layer student predicts every target from
    its last layer (DistilHuBERT's heads); a target below every kept layer is predicted from the CNN features
    (hidden state 0). `kept_teacher_layers` holds 0-based teacher layer indices, one per student layer.
    """
    pairs = []
    for target in targets:
        below = [k + 1 for k, origin in enumerate(kept_teacher_layers) if origin + 1 <= target]
        pairs.append((max(below, default=0), int(target)))
    return pairs


def default_layer_map(
    kept_teacher_layers: Sequence[int], teacher_depth: int, targets: Sequence[int] | None = None
) -> LayerMap:
    """`target_layer_map` for the given targets (default: the protocol's default targets of this teacher)."""
    bad = [k for k in kept_teacher_layers if not 0 <= k < teacher_depth]
    if bad:
        raise UserError(f"kept teacher layers {bad} are outside the teacher's {teacher_depth} layers")
    return target_layer_map(kept_teacher_layers, targets if targets is not None else default_targets(teacher_depth))


def spread_layers(student_depth: int, teacher_depth: int) -> list[int]:
    """Teacher layers evenly spaced over the teacher's depth, ending at its last: the guess for a student whose
    origin is unknown (identity when the depths match)."""
    return [round((k + 1) * teacher_depth / student_depth) - 1 for k in range(student_depth)]


def resolve_layer_map(
    layer_map: Sequence[Sequence[int]] | None,
    kept_teacher_layers: Sequence[int] | None,
    student_depth: int,
    teacher_depth: int,
    targets: Sequence[int] | None = None,
) -> LayerMap:
    """The explicit `layer_map` if given, else `target_layer_map` of `kept_teacher_layers` (or spread layers)
    onto `targets` (default: the protocol's default targets). Each teacher target appears once, so the score
    has exactly one term per target."""
    if layer_map is None:
        if kept_teacher_layers is None:
            kept_teacher_layers = spread_layers(student_depth, teacher_depth)
        elif len(kept_teacher_layers) != student_depth:
            raise UserError(
                f"{len(kept_teacher_layers)} kept teacher layers given for a student of {student_depth} layers"
            )
        layer_map = default_layer_map(kept_teacher_layers, teacher_depth, targets)
    pairs = [(int(s), int(t)) for s, t in layer_map]
    problems = [f"[{s}, {t}]" for s, t in pairs if not (0 <= s <= student_depth and 0 <= t <= teacher_depth)]
    if problems:
        raise UserError(
            f"layer map pairs {', '.join(problems)} are out of range (student hidden states 0..{student_depth}, "
            f"teacher 0..{teacher_depth})"
        )
    teacher_side = [t for _, t in pairs]
    if len(set(teacher_side)) != len(teacher_side):
        raise UserError(f"layer map {pairs} predicts a teacher layer twice (one pair per target)")
    return pairs


def teacher_layers(layer_map: LayerMap) -> list[int]:
    """The distinct teacher hidden indices a layer map needs, sorted."""
    return sorted({t for _, t in layer_map})
