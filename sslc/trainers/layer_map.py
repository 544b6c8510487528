"""Which student hidden state predicts which teacher hidden state.

Indices follow `EncoderOutput.hidden_states`: 0 is the input of the first layer, i the output of layer i.
"""

from __future__ import annotations

from collections.abc import Sequence

from sslc.errors import UserError

LayerMap = list[tuple[int, int]]


def default_layer_map(kept_teacher_layers: Sequence[int], teacher_depth: int) -> LayerMap:
    """Student layer k predicts the teacher layer it was copied from (kept[k]); the student's last layer also
    predicts the teacher's last, whose output is what downstream tasks mostly use.

    `kept_teacher_layers` holds 0-based teacher layer indices, one per student layer.
    """
    bad = [k for k in kept_teacher_layers if not 0 <= k < teacher_depth]
    if bad:
        raise UserError(f"kept teacher layers {bad} are outside the teacher's {teacher_depth} layers")
    pairs = [(k + 1, teacher_layer + 1) for k, teacher_layer in enumerate(kept_teacher_layers)]
    pairs.append((len(kept_teacher_layers), teacher_depth))
    return list(dict.fromkeys(pairs))  # drops the repeat when the last kept layer is the teacher's last


def spread_layers(student_depth: int, teacher_depth: int) -> list[int]:
    """Teacher layers evenly spaced over the teacher's depth, ending at its last: the guess for a student whose
    origin is unknown (identity when the depths match)."""
    return [round((k + 1) * teacher_depth / student_depth) - 1 for k in range(student_depth)]


def resolve_layer_map(
    layer_map: Sequence[Sequence[int]] | None,
    kept_teacher_layers: Sequence[int] | None,
    student_depth: int,
    teacher_depth: int,
) -> LayerMap:
    """The explicit `layer_map` if given, else the default for `kept_teacher_layers` (or spread layers)."""
    if layer_map is None:
        if kept_teacher_layers is None:
            kept_teacher_layers = spread_layers(student_depth, teacher_depth)
        elif len(kept_teacher_layers) != student_depth:
            raise UserError(
                f"{len(kept_teacher_layers)} kept teacher layers given for a student of {student_depth} layers"
            )
        layer_map = default_layer_map(kept_teacher_layers, teacher_depth)
    pairs = [(int(s), int(t)) for s, t in layer_map]
    problems = [f"[{s}, {t}]" for s, t in pairs if not (0 <= s <= student_depth and 0 <= t <= teacher_depth)]
    if problems:
        raise UserError(
            f"layer map pairs {', '.join(problems)} are out of range (student hidden states 0..{student_depth}, "
            f"teacher 0..{teacher_depth})"
        )
    if len(set(pairs)) != len(pairs):
        raise UserError(f"layer map {pairs} repeats a pair")
    return pairs


def teacher_layers(layer_map: LayerMap) -> list[int]:
    """The distinct teacher hidden indices a layer map needs, sorted."""
    return sorted({t for _, t in layer_map})
