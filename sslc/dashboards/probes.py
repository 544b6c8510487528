"""The report's probe figure: what `sslc-probe` recorded on the run, downstream metric vs MACs."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sslc.runs.record import RunRecord

_LABELS = {"error_rate": "held-out error rate (lower is better)", "accuracy": "held-out accuracy (higher is better)"}


def probe_figure(run: RunRecord) -> tuple[go.Figure | None, str]:
    """One panel per probed task: each probed trial at its MACs, the teacher as a dotted line; None when none."""
    found = run.record.probes
    if not found:
        return None, ""
    tasks = sorted(found)
    figure = make_subplots(rows=1, cols=len(tasks), subplot_titles=[f"probe: {t}" for t in tasks])
    for col, task in enumerate(tasks, 1):
        rows = found[task]
        trials = sorted((k, r) for k, r in rows.items() if isinstance(k, int))
        metric = next(iter(rows.values()))["metric_name"]
        figure.add_trace(go.Scatter(
            x=[r["macs"] / 1e9 for _, r in trials], y=[r["metric"] for _, r in trials], mode="markers+text",
            text=[f"#{k}" for k, _ in trials], textposition="top center", name=f"{task}: trials",
            hovertext=[f"trial {k}: {r['metric']:.4f}, {r['macs'] / 1e9:.2f} GMACs, {r['params'] / 1e6:.2f} M params"
                       for k, r in trials],
        ), row=1, col=col)
        teacher = rows.get("teacher")
        if teacher is not None:
            figure.add_hline(y=teacher["metric"], line_dash="dot", row=1, col=col,
                             annotation_text=f"teacher {teacher['metric']:.3f}")
        figure.update_xaxes(title_text="GMACs (10 s of audio)", row=1, col=col)
        figure.update_yaxes(title_text=_LABELS.get(metric, metric), row=1, col=col)
    figure.update_layout(height=420, showlegend=False)
    note = ("Recorded by sslc-probe (frozen encoder, softmax-weighted sum of its hidden states, only the head "
            "trained), on held-out audio. Compare with the front above: a good search score puts the same trials "
            "at the bottom left of both.")
    return figure, note
