"""What `sslc-probe` probes and what it reports: the models named on its command line, one result row each.

A model is a teacher spec (`sslc.load_teacher`), an exported student file (`sslc.load_student`), `RUN_DIR:TRIAL`,
or, with `--pareto`, a run directory (its Pareto points, plus its teacher as the reference row). Rows of run
trials (and of a run's teacher) are also recorded on the run's study (`sslc.runs.study.record_probe`), where the
report reads them back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sslc.errors import UserError
from sslc.metrics import count_macs, count_params_from_config
from sslc.runs.export import retrained_result
from sslc.runs.storage import STUDY_DB, STUDY_MARKER
from sslc.runs.student_file import WEIGHTS_FILE, ExportedStudent, build_from_payload, read_student_file
from sslc.runs.study import record_probe

MACS_SECONDS = 10.0  # MACs are quoted for 10 s of 16 kHz audio, as everywhere in sslc


@dataclass
class ProbeTarget:
    """One model to probe: its encoder as a frozen feature extractor, and where it came from."""

    name: str
    kind: str  # "teacher", "student" or "trial"
    extractor: ExportedStudent
    run: object | None = None  # the sslc.runs.record.RunRecord a trial (or a run's teacher) belongs to
    trial: int | str | None = None  # trial number, or "teacher" for a run's teacher
    extra: dict = field(default_factory=dict)

    @property
    def params(self) -> int:
        # From the architecture: an int8 student's packed weights are not parameters torch would count.
        return count_params_from_config(self.extractor.config)

    @property
    def macs(self) -> int:
        return count_macs(self.extractor.config, seconds=MACS_SECONDS).total


def _frozen(extractor: ExportedStudent, device: str) -> ExportedStudent:
    extractor.eval().requires_grad_(False)
    quantized = (extractor.metadata.get("compression") or {}).get("quantize") == "int8"
    return extractor if quantized else extractor.to(device)  # int8 kernels run on the CPU only


def _teacher(spec: str, device: str) -> ExportedStudent:
    from sslc.models.teachers import load_teacher

    encoder = load_teacher(spec)
    meta = {"teacher": spec, "is_random": bool(getattr(encoder, "is_random", False))}
    return _frozen(ExportedStudent(encoder, encoder.config, meta), device)


def _run_trial(run, number: int, device: str) -> ExportedStudent:
    run.complete_trial(number)  # a one-line error for a trial that never finished
    weights = (run.retrain_dir(number) if retrained_result(run.retrain_dir(number)) else run.trial_dir(number))
    path = weights / WEIGHTS_FILE
    payload = read_student_file(path)
    encoder = build_from_payload(payload)
    meta = {"compression": payload.get("compression"), "weights": str(path),
            "source": "retrained" if "retrain" in path.parts else "short-trial"}
    from sslc.models import EncoderConfig

    return _frozen(ExportedStudent(encoder, EncoderConfig.from_dict(payload["architecture"]), meta), device)


def _split_run_trial(spec: str) -> tuple[Path, int] | None:
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and head and Path(head).is_dir():
        return Path(head), int(tail)
    return None


def resolve_targets(specs: list[str], pareto: bool, device: str, say: Callable[[str], None] = print
                    ) -> list[ProbeTarget]:
    """The models behind the command line's MODEL arguments, loaded and frozen (UserError when one is not)."""
    from sslc.runs.record import open_run
    from sslc.runs.student_file import load_student

    if not specs:
        raise UserError("name at least one MODEL to probe")
    targets: list[ProbeTarget] = []
    for spec in specs:
        run_trial = _split_run_trial(spec)
        path = Path(spec).expanduser()
        if run_trial is not None:
            run = open_run(run_trial[0])
            targets.append(ProbeTarget(spec, "trial", _run_trial(run, run_trial[1], device), run, run_trial[1]))
        elif pareto and path.is_dir() and not (path / "config.json").is_file():
            run = open_run(path)
            front = run.front()
            if not front:
                raise UserError(f"run '{run.name}' has no complete trial yet: no Pareto point to probe")
            teacher_spec = run.record.settings.get("teacher")
            if not teacher_spec:
                raise UserError(f"run '{run.name}' records no teacher: was it written by sslc-search?")
            say(f"{spec}: the teacher and {len(front)} Pareto point(s)")
            targets.append(ProbeTarget(f"{spec} teacher ({teacher_spec})", "teacher", _teacher(teacher_spec, device),
                                       run, "teacher"))
            for trial in front:
                targets.append(ProbeTarget(f"{spec}:{trial.number}", "trial", _run_trial(run, trial.number, device),
                                           run, trial.number))
        elif path.is_dir() and any((path / name).is_file() for name in (STUDY_DB, STUDY_MARKER)):
            raise UserError(f"{spec} is a search run: probe one trial as {spec}:TRIAL, or its front with --pareto")
        elif path.is_file():
            targets.append(ProbeTarget(spec, "student", _frozen(load_student(path), device)))
        else:
            targets.append(ProbeTarget(spec, "teacher", _teacher(spec, device)))
    return targets


def reference_index(targets: list[ProbeTarget]) -> int | None:
    """The row others are compared with: a run's teacher, else the first teacher; None when no teacher is
    probed beside another model (a ratio to the first student, or of a model to itself, would say nothing)."""
    if len(targets) < 2:
        return None
    for kind_check in (lambda t: t.trial == "teacher", lambda t: t.kind == "teacher"):
        for i, target in enumerate(targets):
            if kind_check(target):
                return i
    return None


def make_row(target: ProbeTarget, outcome, task: str, units: str | None) -> dict:
    row = {
        "model": target.name,
        "kind": target.kind,
        "task": task,
        "units": units if task == "ctc" else None,
        "params": target.params,
        "macs": target.macs,
        "macs_seconds": MACS_SECONDS,
        "metric_name": outcome.metric_name,
        "metric": outcome.metric,
        "layer_weights": outcome.layer_weights,
        "train_files": outcome.train_files,
        "heldout_files": outcome.heldout_files,
        "train_loss": outcome.train_loss,
        "seconds": round(outcome.seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if target.extractor.metadata.get("is_random"):
        row["random_weights"] = True
    if target.trial is not None:
        row["trial"] = target.trial
    if target.extractor.metadata.get("source"):
        row["weights"] = target.extractor.metadata["source"]
    return row


def add_relative(rows: list[dict], reference: int | None) -> None:
    """metric / the reference row's metric (error-rate ratio for ctc, accuracy ratio for classify); nothing
    without a reference."""
    if reference is None:
        return
    base = rows[reference]["metric"]
    for row in rows:
        row["relative_to_reference"] = row["metric"] / base if base else None
        row["reference"] = rows[reference]["model"]


def record_on_runs(targets: list[ProbeTarget], rows: list[dict], task: str) -> int:
    """Write each run model's row on its run's study; returns how many were recorded."""
    recorded = 0
    for target, row in zip(targets, rows):
        if target.run is not None and target.trial is not None:
            record_probe(target.run.study, task, target.trial, row)
            recorded += 1
    return recorded


def probe_target(target: ProbeTarget, train, heldout, settings, units: str | None, progress=None) -> dict:
    """Train and score one probe head on `target`'s frozen states; its result row (`make_row`). The states are
    kept in memory between epochs when they fit `CACHE_BYTES`, else encoded again each epoch."""
    from sslc.probes.train import CACHE_BYTES, estimate_state_bytes, run_probe

    config = target.extractor.config
    states = config.num_layers + 1
    keep = estimate_state_bytes(list(train) + list(heldout), states, config.embed_dim, config.frames_for) <= CACHE_BYTES
    outcome = run_probe(encode_fn(target.extractor), states, config.embed_dim, train, heldout, settings, keep, progress)
    return make_row(target, outcome, settings.task, units)


def encode_fn(extractor: ExportedStudent):
    def encode(wave: torch.Tensor):
        return extractor(wave)

    return encode
