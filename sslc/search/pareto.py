"""The Pareto front of a study, as files (pareto.json / pareto.csv) and a terminal table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna

from sslc.files import write_atomically, write_json_atomically
from sslc.runs.front import front_row
from sslc.runs.study import StudyRecord
from sslc.runs.trials import TrialRecord, front_trials

ROW_FIELDS = ("trial", "loss", "fidelity", "gmacs", "gmacs_superb", "params_m", "latency_ms", "mac_ratio", "param_ratio")
RETRAINED_FIELDS = ("retrained_loss", "retrained_recipe", "retrained_steps", "retrained_best_step")


def write_pareto(study: optuna.Study, run_dir: Path) -> list[dict]:
    """pareto.json: {"study", "protocol" (how every loss was measured), "objectives", "points": rows,
    "finalists" (None without the finalist stage)};
    pareto.csv: the rows. Returns the rows (by MACs)."""
    record = StudyRecord.read(study)
    rows = [front_row(TrialRecord.read(t), record.objectives, record.teacher) for t in front_trials(study)]
    for row in rows:  # what sslc-retrain made of the point, when it ran
        row["retrained"] = retrained_summary(record.retrains.get(row["trial"]))
    run_dir = Path(run_dir)
    document = {
        "study": study.study_name,
        "protocol": record.protocol,
        "objectives": record.metric_names,
        "points": rows,
        # sslc-search --finalists: the points retrained at the end of the search and the winner within the budget
        "finalists": record.finalists,
    }
    write_json_atomically(run_dir / "pareto.json", document, indent=2)

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*ROW_FIELDS, "macs", "params", *RETRAINED_FIELDS, "config"])
            for row in rows:
                retrained = [(row["retrained"] or {}).get(f.removeprefix("retrained_")) for f in RETRAINED_FIELDS]
                writer.writerow([row[f] for f in ROW_FIELDS] + [row["macs"], row["params"], *retrained,
                                                                json.dumps(row["config"])])

    write_atomically(run_dir / "pareto.csv", write_csv)
    return rows


def retrained_summary(retrain: dict | None) -> dict | None:
    """A retrain's result as the Pareto files give it (None: not retrained to completion)."""
    if not retrain or retrain.get("status") != "completed":
        return None
    return {
        "loss": retrain.get("heldout_loss"),
        "recipe": (retrain.get("recipe") or {}).get("name", "quick"),  # a result older than recipes was quick
        "steps": retrain.get("steps"),
        "best_step": retrain.get("best_step"),
        "latency_ms": retrain.get("latency_ms"),
        "loss_by_target": retrain.get("heldout_loss_by_target"),
    }


def pareto_table(rows: list[dict], title: str = "Pareto front"):
    from rich.table import Table

    from sslc.metrics import format_macs, format_params

    table = Table(title=title)
    fidelities = any((row.get("fidelity") or 1) > 1 for row in rows)  # a multi-fidelity front says its fidelity
    names = ("trial", "held-out loss", *(["fidelity"] if fidelities else []), "MACs", "params", "latency (ms)",
             "MACs vs teacher")
    for name in names:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            str(row["trial"]),
            f"{row['loss']:.4f}" if row["loss"] is not None else "-",
            *([f"{row.get('fidelity') or 1}x"] if fidelities else []),
            format_macs(row["macs"]) if row["macs"] is not None else "-",
            format_params(row["params"]) if row["params"] is not None else "-",
            f"{row['latency_ms']:.1f}" if row["latency_ms"] is not None else "-",
            f"{row['mac_ratio']:.1%}" if row["mac_ratio"] is not None else "-",
        )
    return table
