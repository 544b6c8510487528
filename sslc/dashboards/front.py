"""The Pareto front figure: held-out loss against cost (GMACs, or measured latency) for every trial.

Top panel: trials with a held-out loss (the Pareto points, the dominated complete ones, retrained points, and
the simple baselines). Trials without one (stopped early, over budget, failed) have no loss to plot, so they
sit on a strip below at their cost, each category on its own row. Vertical lines mark the budget and the
teacher. Each trace carries `meta` = its kind, and `customdata` = trial numbers, so tests can read them back.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sslc.metrics import format_macs
from sslc.runs.record import RunRecord

from .points import CATEGORY_LABELS, UNSCORED, TrialPoint

# A loss more than this many times the front's highest is drawn at the top edge instead of stretching the axis.
OFF_SCALE = 3.0
SCORED_KINDS = ("pareto", "complete", "lower_fidelity", "retrained", "baseline")  # the traces whose y is a held-out loss
AXES = {
    "macs": ("GMACs for {seconds:g} s of audio", lambda p: p.gmacs),
    "latency": ("latency (ms, CPU, {seconds:g} s of audio)", lambda p: p.latency_ms),
}
COLORS = {
    "pareto": "#d62728",
    "complete": "#7f7f7f",
    "lower_fidelity": "#c7c7c7",
    "retrained": "#2ca02c",
    "baseline": "#1f77b4",
    "pruned": "#ff7f0e",
    "infeasible": "#9467bd",
    "failed": "#000000",
    "interrupted": "#8c564b",
    "running": "#17becf",
}


def retrain_label(retrain: dict) -> str:
    """How a point was retrained, e.g. "quick, 20 steps" (a result older than recipes was quick)."""
    return retrain.get("label") or f"quick, {retrain.get('steps')} steps"


def _scatter(points: list[TrialPoint], x_of, y_of, kind: str, name: str, row: int, symbol="circle", size=9):
    shown = [p for p in points if x_of(p) is not None and y_of(p) is not None]
    return go.Scatter(
        x=[x_of(p) for p in shown],
        y=[y_of(p) for p in shown],
        mode="markers",
        name=f"{name} ({len(shown)})",
        meta=kind,
        customdata=[p.number for p in shown],
        text=[p.hover() for p in shown],
        hovertemplate="%{text}<extra></extra>",
        marker={"color": COLORS[kind], "symbol": symbol, "size": size, "line": {"width": 0.5, "color": "white"}},
        legendgroup=kind,
    ), row


def pareto_figure(run: RunRecord, points: list[TrialPoint], axis: str = "macs") -> go.Figure:
    """Loss vs `axis` ("macs" or "latency") for every trial of the run that has a value on that axis."""
    title, x_of = AXES[axis]
    seconds = run.record.budget_seconds
    strip = [c for c in UNSCORED if any(p.category == c and x_of(p) is not None for p in points)]
    # The strip only when something sits on it: an empty one still took the shared x-axis (its ticks and title)
    # away from the panel above, which left the latency chart with no visible x-axis at all.
    rows = 2 if strip else 1
    figure = make_subplots(
        rows=rows, cols=1, shared_xaxes=True, row_heights=[0.78, 0.22] if strip else None, vertical_spacing=0.04,
    )
    traces = []
    dominated = [p for p in points if p.category == "complete" and not p.pareto and not p.lower_fidelity]
    traces.append(_scatter(dominated, x_of, lambda p: p.loss, "complete", CATEGORY_LABELS["complete"], 1))
    # Multi-fidelity: the front is built at the top fidelity; trials that stopped below it are drawn apart.
    top = max((p.top_fidelity for p in points), default=1)
    lower = [p for p in points if p.lower_fidelity]
    traces.append(_scatter(lower, x_of, lambda p: p.loss, "lower_fidelity",
                           f"complete at a lower fidelity than {top}x (not comparable with the front)", 1,
                           symbol="circle-open"))
    front = sorted((p for p in points if p.pareto), key=lambda p: (x_of(p) is None, x_of(p) or 0))
    pareto, row = _scatter(front, x_of, lambda p: p.loss, "pareto",
                           f"Pareto front (at fidelity {top}x)" if top > 1 else "Pareto front", 1, size=12)
    if axis == "macs" and len(run.record.objectives) == 2:
        pareto.mode = "lines+markers"  # two objectives: the front falls monotonically in this plane
        pareto.line = {"color": COLORS["pareto"], "width": 1, "dash": "dot"}
    traces.append((pareto, row))

    retrained = [p for p in points if p.retrain and p.retrain.get("heldout_loss") is not None]
    x_retrained = {
        "macs": lambda p: (p.retrain.get("macs") or p.macs or 0) / 1e9,
        "latency": lambda p: p.retrain.get("latency_ms"),
    }[axis]
    traces.append(
        _scatter(retrained, x_retrained, lambda p: p.retrain["heldout_loss"], "retrained",
                 f"retrained ({'; '.join(sorted({retrain_label(p.retrain) for p in retrained}))})", 1,
                 symbol="star", size=14)
    )
    for point in retrained:  # a thin line from the short-trial point to its retrained result
        if x_of(point) is not None and x_retrained(point) is not None and point.loss is not None:
            traces.append((
                go.Scatter(
                    x=[x_of(point), x_retrained(point)], y=[point.loss, point.retrain["heldout_loss"]],
                    mode="lines", line={"color": COLORS["retrained"], "width": 1, "dash": "dot"},
                    showlegend=False, hoverinfo="skip", meta="retrain-link",
                ),
                1,
            ))
    baselines = [b for b in (run.record.baselines or []) if b.heldout_loss is not None]
    x_baseline = {"macs": lambda b: (b.macs or 0) / 1e9, "latency": lambda b: b.latency_ms}[axis]
    baselines = [b for b in baselines if x_baseline(b) is not None]
    if baselines:
        traces.append((
            go.Scatter(
                x=[x_baseline(b) for b in baselines], y=[b.heldout_loss for b in baselines],
                mode="markers+text", text=[b.name for b in baselines], textposition="top center",
                name=f"baselines ({len(baselines)})", meta="baseline", customdata=[b.name for b in baselines],
                hovertemplate="baseline %{text}: loss %{y:.4f}, %{x:.3f}<extra></extra>",
                marker={"color": COLORS["baseline"], "symbol": "diamond", "size": 12},
            ),
            1,
        ))

    for category in strip:
        members = [p for p in points if p.category == category]
        traces.append(
            _scatter(members, x_of, lambda p, c=category: CATEGORY_LABELS[c], category, CATEGORY_LABELS[category],
                     2, symbol="x" if category in ("failed", "interrupted") else "circle-open")
        )
    loss_range, off_scale = _readable_loss_range([t for t, row in traces if row == 1])
    if off_scale is not None:
        traces.append((off_scale, 1))
    for trace, row in traces:
        if len(trace.x or ()):  # an empty category would only clutter the legend
            figure.add_trace(trace, row=row, col=1)

    _cost_lines(figure, run, axis, rows)
    missing = sum(1 for p in points if x_of(p) is None)
    subtitle = f" ({missing} trial(s) without a {axis} value not shown)" if missing else ""
    figure.update_layout(
        title=f"held-out distillation loss vs {'MACs' if axis == 'macs' else 'latency'}{subtitle}",
        height=620 if strip else 520, legend={"orientation": "v"}, margin={"t": 90},
    )
    figure.update_yaxes(title_text="held-out loss (lower is better)", range=loss_range, row=1, col=1)
    if strip:
        figure.update_yaxes(title_text="no loss", type="category", row=2, col=1)
    figure.update_xaxes(title_text=title.format(seconds=seconds), showticklabels=True, row=rows, col=1)
    return figure


def _readable_loss_range(traces: list[go.Scatter]) -> tuple[list[float] | None, go.Scatter | None]:
    """(loss axis range, marker trace) when some loss is more than OFF_SCALE times the front's worst: one
    outlier (a baseline that failed to learn, at 32 where the front is below 1) would otherwise squash the front
    into the bottom few percent of the chart. The axis then spans the other losses, and each off-scale point is
    drawn at the top edge, at its cost, as a triangle labelled with its loss. (None, None) when all fit."""
    front = [y for t in traces if t.meta == "pareto" for y in t.y or ()]
    if not front or max(front) <= 0:  # a front at zero loss gives no scale to judge others by
        return None, None
    cap = OFF_SCALE * max(front)
    scored = [(t, x, y, c) for t in traces if t.meta in SCORED_KINDS
              for x, y, c in zip(t.x or (), t.y or (), t.customdata or [None] * len(t.x or ()))]
    outside = [(t, x, y, c) for t, x, y, c in scored if y > cap]
    if not outside:
        return None, None
    kept = [y for _, _, y, _ in scored if y <= cap]
    low, high = min(kept), max(kept)
    pad = 0.06 * (high - low) if high > low else 0.1 * abs(high) or 0.1
    top = high + 3 * pad  # room above the highest kept point for the markers and their labels
    names = [f"trial {c}" if isinstance(c, int) else str(c) for _, _, _, c in outside]
    marker = go.Scatter(
        x=[x for _, x, _, _ in outside], y=[top - pad] * len(outside), mode="markers+text", meta="off-scale",
        name=f"off the scale ({len(outside)}): loss > {OFF_SCALE:g}x the front's highest",
        text=[f"{name}: {y:.3g}" for name, (_, _, y, _) in zip(names, outside)], textposition="bottom center",
        customdata=[y for _, _, y, _ in outside], hovertemplate="%{text} (off the scale)<extra></extra>",
        marker={"symbol": "triangle-up", "size": 12, "color": [COLORS[t.meta] for t, _, _, _ in outside]},
    )
    return [low - pad, top], marker


def _cost_lines(figure: go.Figure, run: RunRecord, axis: str, rows: int) -> None:
    budget, teacher = run.record.budget, run.record.teacher
    lines = []  # (x, colour, dash, label)
    if axis == "macs":
        if budget is not None and budget.convention == "seconds":  # the axis's convention
            lines.append((budget.max_macs / 1e9, COLORS["pareto"], "dash", f"budget {format_macs(budget.max_macs)} MACs"))
        if teacher.macs:
            lines.append((teacher.macs / 1e9, "black", "dot", f"teacher {format_macs(teacher.macs)} MACs"))
    elif budget is not None and budget.max_latency_ms:
        limit = budget.max_latency_ms
        lines.append((limit, COLORS["pareto"], "dash", f"latency limit {limit:g} ms"))
    for index, (x, color, dash, label) in enumerate(lines):
        # Through every panel, labelled once above the plot area, where no point or baseline label can sit
        # under it (inside, the budget label covered the uniform baseline's, which sits just below the budget).
        # The budget's label reads leftwards from its line, the teacher's rightwards, so the two never meet.
        for row in range(1, rows + 1):
            figure.add_vline(x=x, line={"color": color, "dash": dash}, row=row, col=1)
        figure.add_annotation(
            x=x, xref="x", y=1.0, yref="paper", yanchor="bottom", xanchor="right" if index == 0 else "left",
            text=label, showarrow=False, font={"color": color},
        )


def has_latency(points: list[TrialPoint]) -> bool:
    return any(p.latency_ms is not None for p in points)
