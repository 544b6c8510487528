"""Where each Pareto point was compressed: per teacher layer, the share of heads, FFN units and rank it kept,
and per CNN layer the share of channels — one heatmap row per model, blank cells for dropped layers."""

from __future__ import annotations

import logging

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sslc.errors import first_line
from sslc.models import EncoderConfig
from sslc.runs.record import RunRecord

from .points import TrialPoint

log = logging.getLogger("sslc.dashboards")
PANELS = (
    ("heads", "attention heads kept"),
    ("ffn", "FFN units kept"),
    ("attn_rank", "attention rank (share of full rank)"),
    ("ffn_rank", "FFN rank (share of full rank)"),
    ("conv_channels", "CNN channels kept"),
)


def teacher_architecture(run: RunRecord) -> EncoderConfig | None:
    """The teacher's sizes: recorded by the search, else a random preset's config, else the loaded teacher."""
    teacher = run.record.teacher
    if teacher.architecture:
        return EncoderConfig.from_dict(teacher.architecture)
    spec = str(teacher.spec or run.record.settings.get("teacher") or "")
    from sslc.models import PRESETS

    if spec.startswith("random:") and spec.split(":", 1)[1] in PRESETS:
        return PRESETS[spec.split(":", 1)[1]]()  # sizes only: no weights needed
    try:
        from sslc.models.teachers import load_teacher

        return load_teacher(spec).config
    except Exception as error:  # a checkpoint moved or offline: the view falls back to absolute sizes
        log.warning("per-layer view without the teacher's sizes (%s)", first_line(error))
        return None


def layer_cells(config: dict, teacher: EncoderConfig | None, panel: str) -> list[tuple[float | None, str]]:
    """(share kept or None when dropped, label) per teacher layer (per CNN layer for conv_channels)."""
    if panel == "conv_channels":
        full = [c.channels for c in teacher.conv_layers] if teacher else None
        return [
            (kept / full[i] if full else None, f"{kept}/{full[i]}" if full else str(kept))
            for i, kept in enumerate(config["conv_channels"])
        ]
    depth = teacher.num_layers if teacher else max(config["layers"]) + 1
    cells: list[tuple[float | None, str]] = [(None, "dropped")] * depth
    for k, t in enumerate(config["layers"]):
        heads, ffn = config["heads"][k], config["ffn"][k]
        spec = teacher.layers[t] if teacher else None
        if panel == "heads":
            cells[t] = (heads / spec.heads if spec else None, f"{heads}/{spec.heads}" if spec else str(heads))
        elif panel == "ffn":
            cells[t] = (ffn / spec.ffn_dim if spec else None, f"{ffn}/{spec.ffn_dim}" if spec else str(ffn))
        else:
            rank = config[panel][k]
            if teacher:  # the full rank of the kept projection, as CompressionConfig defines it
                inner = heads * teacher.head_dim if panel == "attn_rank" else ffn
                full = min(config.get("hidden") or teacher.embed_dim, inner)
            else:
                full = None
            if rank is None:
                cells[t] = (1.0, "full")
            else:
                cells[t] = (rank / full if full else None, f"{rank}/{full}" if full else str(rank))
    return cells


def architecture_figure(run: RunRecord, points: list[TrialPoint], teacher: EncoderConfig | None) -> go.Figure | None:
    """One heatmap per panel; rows are the Pareto points by MACs, `customdata` holds their trial numbers."""
    front = sorted((p for p in points if p.pareto and p.config), key=lambda p: (p.macs or 0, p.number))
    if not front:
        return None
    def label(p: TrialPoint) -> str:
        width = f", width {p.config['hidden']}" if p.config.get("hidden") else ""  # a thin student
        return f"#{p.number} ({p.gmacs:.3g} GMACs{width})" if p.gmacs is not None else f"#{p.number}{width}"

    labels = [label(p) for p in front]
    figure = make_subplots(rows=len(PANELS), cols=1, subplot_titles=[title for _, title in PANELS],
                           vertical_spacing=0.35 / len(PANELS))
    for row, (panel, _) in enumerate(PANELS, 1):
        grid = [layer_cells(p.config, teacher, panel) for p in front]
        columns = len(grid[0])
        prefix = "conv" if panel == "conv_channels" else "layer"
        figure.add_trace(
            go.Heatmap(
                z=[[share for share, _ in cells] for cells in grid],
                text=[[label for _, label in cells] for cells in grid],
                x=[f"{prefix} {i}" for i in range(columns)],
                y=labels,
                customdata=[[p.number] * columns for p in front],
                texttemplate="%{text}",
                hovertemplate="%{y}, %{x}: %{text}<extra></extra>",
                zmin=0.0, zmax=1.0, colorscale="Viridis", showscale=row == 1,
                colorbar={"title": "share kept"}, name=panel, meta=panel, xgap=1, ygap=1,
            ),
            row=row, col=1,
        )
    note = "" if teacher else " (teacher sizes unknown: absolute sizes shown, no colour)"
    figure.update_layout(
        title=f"per-layer architecture of the Pareto points (blank = layer dropped){note}",
        height=len(PANELS) * (90 + 26 * len(front)),
    )
    return figure
