"""`sslc-export`: one trial of a search run as a standalone student (see `student_file`), in any of
`sslc.models.formats.FORMATS` (sslc's own file in either container, or a conversion: ONNX, TorchScript,
transformers, s3prl), and an anytime run as one anytime file or one budget's student.

Retrained weights when `sslc-retrain` finished that trial, the short-trial weights otherwise, and it says which.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sslc.errors import UserError
from sslc.models.formats import CONTAINERS, FORMATS, write_conversion

from .record import open_run
from .student_file import WEIGHTS_FILE, build_from_payload, read_student_file, save_student, student_payload

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


def check_format(fmt: str, split_layer: int | None) -> None:
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if split_layer is not None and fmt != "onnx":
        raise UserError("--split-layer writes two ONNX graphs (client / server): use it with --format onnx")


def write_student(encoder, payload: dict, out_path, fmt: str, split_layer: int | None = None,
                  remote_code: bool | None = None) -> dict:
    """Write a student (its float encoder and its `student_payload`) in `fmt`; returns {"files", "notes"}."""
    if fmt in CONTAINERS:
        rest = {k: payload[k] for k in ("compression", "teacher", "provenance", "metrics")}
        save_student(out_path, encoder, container=fmt, **rest)
        return {"files": [str(out_path)], "notes": []}
    metadata = {k: v for k, v in payload.items() if k != "state_dict"}
    written = write_conversion(fmt, encoder, out_path, metadata, split_layer, remote_code)
    if (payload.get("compression") or {}).get("quantize") == "int8":
        written["notes"].append(f"float weights: int8 is applied by sslc.load_student only, not in {fmt}")
    return written


def export_student(
    run_dir: str | os.PathLike, trial: int, out_path: str | os.PathLike, source: str = "auto",
    fmt: str = "sslc", split_layer: int | None = None, remote_code: bool | None = None,
) -> dict:
    """Write trial `trial` of a run as a standalone student in `fmt`; returns its provenance and metrics.

    source: "auto" (retrained weights when `<run_dir>/retrain/<trial>/` finished, else the short trial's),
    "retrained" (the retrain's best validated weights), "retrained-last" (its last) or "short-trial". split_layer:
    ONNX only, a client / server pair cut after that layer. remote_code: transformers only (None: a plain config
    where the student fits one).
    """
    if source not in ("auto", "retrained", "retrained-last", "short-trial"):
        raise UserError(f"source must be auto, retrained, retrained-last or short-trial, got {source!r}")
    check_format(fmt, split_layer)
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
    exported = student_payload(encoder, compression, payload.get("teacher") or teacher.spec or "", provenance, metrics)
    written = write_student(encoder, exported, out_path, fmt, split_layer, remote_code)
    return {"path": str(out_path), "provenance": provenance, "metrics": metrics, "compression": compression,
            "format": fmt, **written}


def export_anytime(run_dir: str | os.PathLike, out_path: str | os.PathLike, fmt: str = "sslc",
                   budget: str | None = None, split_layer: int | None = None, remote_code: bool | None = None) -> dict:
    """Write the shared weights of an anytime run (`sslc-search --mode anytime`) and its Pareto front as one anytime
    file (`fmt` sslc or safetensors): `sslc.load_student(path, budget=...)` then extracts the best front point
    within any budget. With `budget`: that point's student alone, in any format (ONNX split with split_layer)."""
    from sslc.trainers.once_for_all import load_once_for_all

    from .anytime_file import AnytimeStudent, front_points, save_anytime

    check_format(fmt, split_layer)
    if budget is None and fmt not in CONTAINERS:
        raise UserError(f"the {fmt} format holds one student, not every size: pass --budget (e.g. 20GMACs or 40%) "
                        "to export the best front point within it")

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
    if budget is None:
        save_anytime(out_path, trained.elastic, points, teacher=teacher.spec or "", provenance=provenance,
                     container=fmt)
        return {"path": str(out_path), "provenance": provenance, "points": len(points), "format": fmt,
                "files": [str(out_path)], "notes": []}
    from sslc.metrics.macs import count_macs

    model = AnytimeStudent(trained.elastic.eval(), front_points(trained.elastic, points),
                           count_macs(trained.elastic.config).total,
                           {"teacher": teacher.spec or "", "provenance": provenance})
    student = model.student(budget)  # UserError (one line) when no point fits
    meta = student.metadata
    payload = student_payload(student.encoder, meta["compression"], meta["teacher"],
                              dict(meta["provenance"], anytime=meta["anytime"]), meta["metrics"])
    written = write_student(student.encoder, payload, out_path, fmt, split_layer, remote_code)
    return {"path": str(out_path), "provenance": provenance, "points": 1, "format": fmt,
            "metrics": meta["metrics"], **written}
