"""The published compressed models (anchors.json) as reference markers beside a run's Pareto points.

Anchors are drawn at their published params and SUPERB-convention MACs, with their published SUPERB phoneme
error rate where the paper gives one; sslc's Pareto points are drawn on the same axes as a rug (their PER is
not known until `sslc-probe` measures one, on other data, so it is never plotted against published PERs).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sslc.runs.record import RunRecord

ANCHORS_FILE = "anchors.json"


@cache
def published_anchors() -> tuple[dict, ...]:
    """Every anchor of anchors.json: name, params_m, superb_gmacs, pr_per, asr_wer (None where not reported)
    and source."""
    data = json.loads(resources.files(__package__).joinpath(ANCHORS_FILE).read_text())
    return tuple(data["anchors"])


def anchors_figure(run: RunRecord) -> tuple[go.Figure, str]:
    """Two panels, published PR PER vs SUPERB-convention GMACs and vs M params: anchors as labelled markers,
    the run's Pareto points as a rug at the bottom."""
    anchors = published_anchors()
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True,
                           subplot_titles=["vs MACs (SUPERB convention)", "vs parameters"])
    front = run.front()
    for col, key, sslc_x, unit in (
        (1, "superb_gmacs", lambda t: t.macs_superb / 1e9 if t.macs_superb is not None else None, "GMACs"),
        (2, "params_m", lambda t: t.model_params / 1e6 if t.model_params is not None else None, "M params"),
    ):
        placed = [a for a in anchors if a[key] is not None and a["pr_per"] is not None]
        widest = max((a[key] for a in placed), default=None)
        figure.add_trace(go.Scatter(
            x=[a[key] for a in placed], y=[a["pr_per"] for a in placed], mode="markers+text",
            text=[a["name"] for a in placed], name="published (not sslc runs)",
            # Beside the marker (above it, ARMHuBERT's label covered LightHuBERT Small's, 1 PER point apart); the
            # rightmost reads leftwards: centred, "HuBERT Base" ran off the panel.
            textposition=["middle left" if a[key] == widest else "middle right" for a in placed],
            marker={"symbol": "diamond-open", "size": 11, "color": "grey"}, showlegend=col == 1, meta="anchors",
            hovertext=[f"{a['name']} (published): {a[key]:g} {unit}, PR PER {a['pr_per']}%, ASR WER "
                       f"{a['asr_wer']}%<br>{a['source']}" for a in placed],
        ), row=1, col=col)
        # A size but no PER: ticks on the floor, named on hover and in the note (their sizes sit within a few
        # percent of each other, so labels drawn there piled up into one unreadable smudge).
        unplaced = [a for a in anchors if a[key] is not None and a["pr_per"] is None]
        figure.add_trace(go.Scatter(
            x=[a[key] for a in unplaced], y=[0.0] * len(unplaced), mode="markers",
            hovertext=[f"{a['name']} (published): {a[key]:g} {unit}, no PR PER reported<br>{a['source']}"
                       for a in unplaced], hoverinfo="text", customdata=[a["name"] for a in unplaced],
            name="published, no PER reported", marker={"symbol": "line-ns-open", "size": 14, "color": "grey"},
            showlegend=col == 1, meta="anchors-size-only",
        ), row=1, col=col)
        points = [(t, sslc_x(t)) for t in front if sslc_x(t) is not None]
        figure.add_trace(go.Scatter(
            x=[x for _, x in points], y=[0.0] * len(points), mode="markers", name="this run's Pareto points",
            marker={"symbol": "line-ns-open", "size": 18, "color": "#1f77b4"}, showlegend=col == 1, meta="sslc",
            customdata=[t.number for t, _ in points],
            hovertext=[f"trial {t.number}: {x:.4g} {unit} (its PER: measure it with sslc-probe)" for t, x in points],
        ), row=1, col=col)
        shown = [a[key] for a in anchors if a[key] is not None] + [x for _, x in points]
        right = max(shown) * 1.06  # room for the rightmost marker; its label reads leftwards
        figure.update_xaxes(title_text=unit + (" (SUPERB convention)" if col == 1 else ""), range=[-0.04 * right, right],
                            row=1, col=col)
    figure.update_yaxes(title_text="published SUPERB PR PER (%)", row=1, col=1)
    figure.update_layout(height=460)
    teacher = run.record.teacher
    note = ("Grey: figures published by their authors (HuBERT Base teacher, SUPERB PR), not sslc runs; sources in "
            "sslc/dashboards/anchors.json. Blue ticks: this run's Pareto points at their exact MACs (summed over "
            "SUPERB's 32 utterances) and parameters.")
    size_only = [a for a in anchors if a["pr_per"] is None and (a["superb_gmacs"] or a["params_m"])]
    if size_only:
        sizes = ", ".join(f"{a['name']} ({_size(a)})" for a in size_only)
        note += f" Grey ticks on the floor: published sizes without a PR PER: {sizes}."
    if "hubert" not in str(teacher.description or "").lower() or teacher.is_random:
        note += " This run's teacher is not a trained HuBERT Base, so only the axes are comparable."
    return figure, note


def _size(anchor: dict) -> str:
    parts = [f"{anchor['superb_gmacs']:g} GMACs" if anchor["superb_gmacs"] else "",
             f"{anchor['params_m']:g} M params" if anchor["params_m"] else ""]
    return ", ".join(p for p in parts if p)
