"""The report's retraining figure: each retrained point's validation curve (the study's protocol, recorded by
`sslc-retrain`) beside the score its short trial had, so the user sees whether the search's ranking held."""

from __future__ import annotations

import html

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


def _ranks(values: dict[int, float]) -> dict[int, int]:
    """1 for the lowest value (the best loss or error rate)."""
    return {n: rank for rank, n in enumerate(sorted(values, key=values.get), 1)}


def ranking_html(run: RunRecord) -> str:
    """Each retrained point beside its short-trial score (and its probe scores where sslc-probe ran), with its rank
    by each, and whether the short trials' order held: "" when fewer than one point was retrained."""
    from scipy.stats import kendalltau

    retrains = {n: r for n, r in sorted(run.record.retrains.items())
                if r.get("heldout_loss") is not None and r.get("short_trial_heldout_loss") is not None}
    if not retrains:
        return ""
    short = {n: r["short_trial_heldout_loss"] for n, r in retrains.items()}
    long = {n: r["heldout_loss"] for n, r in retrains.items()}
    # Probe scores of these trials, by task (lower is better only for error rates: accuracy ranks the other way).
    probes = {}
    for task, rows in sorted(run.record.probes.items()):
        found = {n: rows[n] for n in retrains if n in rows}
        if found:
            sign = -1.0 if next(iter(found.values())).get("metric_name") == "accuracy" else 1.0
            probes[task] = (found, _ranks({n: sign * row["metric"] for n, row in found.items()}))
    short_rank, long_rank = _ranks(short), _ranks(long)
    head = ["trial", "MACs", "short-trial loss (rank)", "retrained loss (rank)", "recipe, steps"]
    head += [f"probe {task} (weights, rank)" for task in probes]
    body = []
    for n, r in retrains.items():
        cells = [str(n), f"{r['macs'] / 1e9:.2f} G" if r.get("macs") else "-",
                 f"{short[n]:.4f} ({short_rank[n]})", f"{long[n]:.4f} ({long_rank[n]})",
                 html.escape(f"{(r.get('recipe') or {}).get('name', 'quick')}, {r.get('steps')}")]
        for found, ranks in probes.values():
            row = found.get(n)
            cells.append(f"{row['metric']:.4f} ({html.escape(str(row.get('weights', '?')))}, {ranks[n]})"
                         if row else "-")
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = ("<table class='points'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
             + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>")
    if len(retrains) < 2:
        verdict = "One retrained point: retrain another to see whether the ranking held."
    else:
        order = list(retrains)
        tau = kendalltau([short[n] for n in order], [long[n] for n in order]).statistic
        held = "held" if short_rank == long_rank else "changed"
        verdict = (f"The short trials' ranking of these {len(order)} points {held} after retraining "
                   f"(Kendall tau {tau:.2f} between the two losses).")
    return f"<p class='note'>{html.escape(verdict)}</p>{table}"
