"""The Pareto front of a study, as rows, files (pareto.json / pareto.csv) and a terminal table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna

from sslc.files import write_atomically, write_json_atomically

from .storage import OBJECTIVE_ATTRS, front_trials, objective_names

ROW_FIELDS = ("trial", "loss", "gmacs", "params_m", "latency_ms", "mac_ratio", "param_ratio")


def pareto_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The non-dominated COMPLETE trials (repeats of a config left out), sorted by MACs."""
    return sorted(front_trials(study), key=lambda t: t.user_attrs.get("macs", 0))


def trial_row(
    trial: optuna.trial.FrozenTrial,
    names: list[str],
    teacher_macs: int | None = None,
    teacher_params: int | None = None,
):
    """`names`: the study's objective names, in the order of the trial's values."""
    attrs = trial.user_attrs
    row = {
        "trial": trial.number,
        "objectives": {OBJECTIVE_ATTRS[name]: value for name, value in zip(names, trial.values or [])},
        "loss": attrs.get("heldout_loss"),
        "loss_by_target": attrs.get("heldout_loss_by_target"),
        "gmacs": attrs.get("macs", 0) / 1e9,
        "macs": attrs.get("macs"),
        "params": attrs.get("params"),
        "params_m": (attrs.get("params") or 0) / 1e6,
        "latency_ms": attrs.get("latency_ms"),
        "mac_ratio": attrs["macs"] / teacher_macs if teacher_macs and attrs.get("macs") else None,
        "param_ratio": attrs["params"] / teacher_params if teacher_params and attrs.get("params") else None,
        "config": attrs.get("config"),
    }
    return row


def write_pareto(study: optuna.Study, run_dir: Path, teacher_macs=None, teacher_params=None) -> list[dict]:
    """pareto.json: {"study", "protocol" (how every loss was measured), "objectives", "points": rows};
    pareto.csv: the rows. Returns the rows."""
    names = objective_names(study)
    rows = [trial_row(t, names, teacher_macs, teacher_params) for t in pareto_trials(study)]
    run_dir = Path(run_dir)
    document = {
        "study": study.study_name,
        "protocol": study.user_attrs.get("protocol"),
        "objectives": [OBJECTIVE_ATTRS[name] for name in names],
        "points": rows,
    }
    write_json_atomically(run_dir / "pareto.json", document, indent=2)

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*ROW_FIELDS, "macs", "params", "config"])
            for row in rows:
                writer.writerow([row[f] for f in ROW_FIELDS] + [row["macs"], row["params"], json.dumps(row["config"])])

    write_atomically(run_dir / "pareto.csv", write_csv)
    return rows


def pareto_table(rows: list[dict], title: str = "Pareto front"):
    from rich.table import Table

    table = Table(title=title)
    from sslc.metrics import format_macs, format_params

    for name in ("trial", "held-out loss", "MACs", "params", "latency (ms)", "MACs vs teacher"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            str(row["trial"]),
            f"{row['loss']:.4f}" if row["loss"] is not None else "-",
            format_macs(row["macs"]) if row["macs"] is not None else "-",
            format_params(row["params"]) if row["params"] is not None else "-",
            f"{row['latency_ms']:.1f}" if row["latency_ms"] is not None else "-",
            f"{row['mac_ratio']:.1%}" if row["mac_ratio"] is not None else "-",
        )
    return table
