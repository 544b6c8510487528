"""The report's retraining figure: each retrained point's validation curve (the study's protocol, recorded by
`sslc-retrain`) beside the score its short trial had, so the user sees whether the search's ranking held."""

from __future__ import annotations

import plotly.graph_objects as go

from sslc.runs.record import RunRecord

from .front import retrain_label


def retrain_figure(run: RunRecord) -> tuple[go.Figure | None, str]:
    """Held-out loss vs retraining step per retrained trial, its short-trial score as a dotted line; None when
    nothing was retrained with validation."""
    retrains = {n: r for n, r in sorted(run.record.retrains.items()) if r.get("validation")}
    if not retrains:
        return None, ""
    figure = go.Figure()
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    for index, (number, retrain) in enumerate(retrains.items()):
        color = palette[index % len(palette)]
        steps, losses = zip(*retrain["validation"])
        figure.add_trace(go.Scatter(
            x=list(steps), y=list(losses), mode="lines+markers", name=f"trial {number} ({retrain_label(retrain)})",
            line={"color": color}, meta=f"validation-{number}", customdata=[number] * len(steps),
            hovertemplate=f"trial {number}: step %{{x}}, held-out loss %{{y:.4f}}<extra></extra>",
        ))
        short = retrain.get("short_trial_heldout_loss")
        if short is not None:
            figure.add_trace(go.Scatter(
                x=[steps[0], steps[-1]], y=[short, short], mode="lines", line={"color": color, "dash": "dot"},
                name=f"trial {number}: short trial ({retrain.get('short_trial_steps')} steps)",
                meta=f"short-{number}", hoverinfo="skip",
            ))
    figure.update_layout(height=420, xaxis_title="retraining step", yaxis_title="held-out loss (the study's protocol)")
    note = ("Scored every --eval-every steps on the same held-out segments and targets as the short trials (dotted: "
            "each point's short-trial score). The exported student is the one at its curve's lowest point.")
    return figure, note
