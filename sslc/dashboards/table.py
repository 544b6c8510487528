"""The Pareto points as a table (with the teacher and the baselines for reference), as rows and as HTML."""

from __future__ import annotations

import html

from sslc.metrics import format_macs, format_params
from sslc.runs.front import front_row
from sslc.runs.record import RunRecord

COLUMNS = (
    ("trial", "trial"),
    ("loss", "held-out loss"),
    ("fidelity", "fidelity (x steps)"),
    ("params", "params"),
    ("macs", "MACs"),
    ("latency_ms", "latency (ms)"),
    ("mac_ratio", "MACs vs teacher"),
    ("param_ratio", "params vs teacher"),
    ("speedup", "fewer MACs"),
    ("retrained_loss", "retrained loss"),
    ("retrained_steps", "retrained steps"),
    ("retrained_recipe", "retrain recipe"),
    ("finalist", "finalist"),  # sslc-search --finalists: "winner" or "finalist"
    ("probe", "probe (weights)"),
    ("macs_superb", "MACs, SUPERB convention"),  # summed over SUPERB's 32 utterances, as published tables quote
)


def _ratio(value, reference):
    return value / reference if value is not None and reference else None


def pareto_rows(run: RunRecord) -> list[dict]:
    """One row per Pareto point, by MACs: what it costs, how good it is, and what retraining made of it."""
    rows = []
    finalists = run.record.finalists or {}
    chosen = {r["trial"] for r in finalists.get("finalists", [])}
    for trial in run.front():
        retrain = run.record.retrains.get(trial.number) or {}
        rows.append({
            "kind": "pareto",
            **front_row(trial, run.record.objectives, run.record.teacher),
            "retrained_loss": retrain.get("heldout_loss"),
            "retrained_steps": retrain.get("steps"),
            "retrained_recipe": (retrain.get("recipe") or {}).get("name", "quick") if retrain else None,
            "finalist": ("winner" if trial.number == finalists.get("winner") else "finalist")
            if trial.number in chosen else None,
            "probe": "; ".join(
                f"{task} {found[trial.number]['metric']:.3f} ({found[trial.number].get('weights', '?')})"
                for task, found in sorted(run.record.probes.items()) if trial.number in found
            ) or None,
        })
    return rows


def reference_rows(run: RunRecord) -> list[dict]:
    """The teacher and the simple baselines, in the table's columns."""
    teacher = run.record.teacher
    rows = []
    if teacher.macs:
        rows.append({
            "kind": "teacher", "trial": "teacher", "loss": None, "params": teacher.params,
            "macs": teacher.macs, "macs_superb": teacher.macs_superb, "mac_ratio": 1.0, "param_ratio": 1.0,
            "speedup": 1.0,
        })
    for b in run.record.baselines or []:
        over = " (over budget, not trained)" if b.status == "infeasible" else ""
        rows.append({
            "kind": "baseline", "trial": f"baseline: {b.name}{over}", "loss": b.heldout_loss, "fidelity": b.fidelity,
            "params": b.params, "macs": b.macs, "macs_superb": b.macs_superb, "latency_ms": b.latency_ms,
            "mac_ratio": _ratio(b.macs, teacher.macs),
            "param_ratio": _ratio(b.params, teacher.params),
            "speedup": _ratio(teacher.macs, b.macs),
        })
    return rows


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key in ("mac_ratio", "param_ratio"):
        return f"{value:.1%}"
    if key == "speedup":
        return f"{value:.2f}x"
    if key in ("loss", "retrained_loss"):
        return f"{value:.4f}"
    if key == "params":
        return format_params(value)
    if key in ("macs", "macs_superb"):
        return format_macs(value)
    if key == "latency_ms":
        return f"{value:.1f}"
    return html.escape(str(value))


def table_html(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    body = []
    for row in rows:
        cells = "".join(f"<td>{_cell(key, row.get(key))}</td>" for key, _ in COLUMNS)
        body.append(f'<tr class="{row["kind"]}">{cells}</tr>')
    return f'<table class="points"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
