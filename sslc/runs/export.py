"""`sslc-export`: one trial of a search run as a standalone student file (see `student_file`).

Retrained weights when `sslc-retrain` finished that trial, the short-trial weights otherwise, and it says which.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sslc.errors import UserError

from .record import open_run
from .student_file import WEIGHTS_FILE, build_from_payload, read_student_file, save_student

RESULT_FILE = "result.json"  # what sslc-retrain writes next to the retrained weights
LAST_WEIGHTS_FILE = "student-last.pt"  # the retrain's last weights (its student.pt holds the best validated ones)


def retrained_result(retrain_dir: Path) -> dict | None:
    """sslc-retrain's result for a trial when it finished (and its weights exist), else None."""
    result_file, weights = Path(retrain_dir) / RESULT_FILE, Path(retrain_dir) / WEIGHTS_FILE
    if not (result_file.is_file() and weights.is_file()):
        return None
    try:
        result = json.loads(result_file.read_text())
    except ValueError:
        return None
    return result if result.get("status") == "completed" else None


def export_student(
    run_dir: str | os.PathLike, trial: int, out_path: str | os.PathLike, source: str = "auto"
) -> dict:
    """Write trial `trial` of a run as a standalone student file; returns its provenance and metrics.

    source: "auto" (retrained weights when `<run_dir>/retrain/<trial>/` finished, else the short trial's),
    "retrained" (the retrain's best validated weights), "retrained-last" (its last) or "short-trial".
    """
    if source not in ("auto", "retrained", "retrained-last", "short-trial"):
        raise UserError(f"source must be auto, retrained, retrained-last or short-trial, got {source!r}")
    run = open_run(run_dir)
    record = run.complete_trial(trial)
    retrained = retrained_result(run.retrain_dir(trial)) if source != "short-trial" else None
    if source in ("retrained", "retrained-last") and retrained is None:
        raise UserError(f"trial {trial} has not been retrained to completion: run sslc-retrain {run_dir} --trial {trial}")
    weights = run.retrain_dir(trial) / WEIGHTS_FILE if retrained else run.trial_dir(trial) / WEIGHTS_FILE
    if source == "retrained-last":
        weights = run.retrain_dir(trial) / LAST_WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"the weights of trial {trial} are missing ({weights})")
    payload = read_student_file(weights)
    encoder = build_from_payload(payload, quantize=False)  # proves the weights fit before anything is written

    metrics = {
        "macs": record.macs,
        "gmacs": record.gmacs,
        "macs_seconds": run.record.budget_seconds,
        "params": record.model_params,
        "nonzero_params": record.nonzero_params,
        "latency_ms": record.latency_ms,
        "heldout_loss": record.heldout_loss,
        "short_trial_heldout_loss": record.heldout_loss,
        "short_trial_steps": record.steps_done,
    }
    if retrained:
        metrics.update(
            {k: retrained.get(k) for k in ("macs", "params", "nonzero_params", "latency_ms") if retrained.get(k)}
        )
        metrics["gmacs"] = metrics["macs"] / 1e9 if metrics.get("macs") is not None else None
        metrics["heldout_loss"] = retrained.get("heldout_loss")
        metrics["retrained_heldout_loss"] = retrained.get("heldout_loss")
        metrics["retrained_steps"] = retrained.get("steps")
        if source == "retrained-last":
            metrics["heldout_loss"] = metrics["retrained_heldout_loss"] = retrained.get("last_heldout_loss")
    teacher = run.record.teacher
    provenance = {
        "run": run.name,
        "run_dir": str(run.run_dir),
        "trial": trial,
        "weights": ("retrained-last" if source == "retrained-last" else "retrained") if retrained else "short-trial",
        "teacher_description": teacher.description,
        "teacher_is_random": teacher.is_random,
        "teacher_macs": teacher.macs,
        "teacher_params": teacher.params,
        "data": run.record.settings.get("data"),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    compression = payload.get("compression") or record.config or {}
    save_student(out_path, encoder, compression, payload.get("teacher") or teacher.spec or "", provenance, metrics)
    return {"path": str(out_path), "provenance": provenance, "metrics": metrics, "compression": compression}


def export_anytime(run_dir: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Write the shared weights of an anytime run (`sslc-search --mode anytime`) and its Pareto front as one anytime
    file: `sslc.load_student(path, budget=...)` then extracts the best front point within any budget."""
    from sslc.trainers.once_for_all import load_once_for_all

    from .anytime_file import save_anytime

    run = open_run(run_dir)
    if run.record.mode != "anytime":
        raise UserError(f"run '{run.name}' was searched with --mode {run.record.mode}: only an anytime run "
                        "(sslc-search --mode anytime) has shared weights to export; export one trial with --trial")
    if run.record.anytime is None:
        raise UserError(f"run '{run.name}' has not finished its once-for-all training: run the search again to resume")
    front = [t for t in run.front() if t.heldout_loss is not None]
    if not front:
        raise UserError(f"run '{run.name}' has no complete trial yet: no front to export")
    trained = load_once_for_all(run.anytime_dir)
    teacher = run.record.teacher
    provenance = {
        "run": run.name, "run_dir": str(run.run_dir), "trials": [t.number for t in front],
        "once_for_all_steps": trained.step, "teacher_description": teacher.description,
        "teacher_is_random": teacher.is_random, "data": run.record.settings.get("data"),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # MACs are recounted by the anytime file in its own convention (one 10 s waveform), whatever the run's.
    points = [(t.config, None, t.heldout_loss) for t in front]
    save_anytime(out_path, trained.elastic, points, teacher=teacher.spec or "", provenance=provenance)
    return {"path": str(out_path), "provenance": provenance, "points": len(points)}
