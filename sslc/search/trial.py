"""One search trial: build the student a config describes, measure it, distil it briefly, report.

`train_candidate` is the Ray Tune function trainable; `train_and_measure` is its body, also run for the
baselines, as Ray tasks with the trials' resources (`train_baseline`), so they train on the same kind of device
and precision. A trial never raises into Ray: any exception (running out of GPU memory included) becomes a final
report with status "error" and the reason, so the searcher records the trial as FAIL with that reason (Ray's own
error path would lose it) and the search goes on.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sslc.budget import Budget
from sslc.compress import CompressionConfig, quantize_int8
from sslc.errors import first_line
from sslc.files import write_json_atomically
from sslc.metrics import count_nonzero_params, measure_latency
from sslc.metrics.latency import device_name
from sslc.runs.record import TRIALS_DIR
from sslc.runs.student_file import WEIGHTS_FILE, save_student
from sslc.search.inputs import RunInputs
from sslc.trainers import TeacherTargets, TrainerConfig, run_short_trial

from .anytime import SharedWeights
from .artifacts import node_name, send_trial_files
from .device_gate import measured_device, measuring, training, used_devices
from .scheduler import RUNG_FIDELITY

# Called with (trial number, the student just built) before a trial trains it: a seam for tests of failure
# handling (raise, poison the weights, or block until the search is killed). Shipped to Ray workers with the
# setup, so it must be picklable.
BeforeTraining = Callable[[int, torch.nn.Module], None]
# Per worker process (Ray reuses actors): the targets object remembers its open caches between trials.
_TARGETS: dict[str, TeacherTargets] = {}


@dataclass
class TrialSetup:
    """What every trial of a run needs; shipped once to Ray's object store with `tune.with_parameters`."""

    run: RunInputs
    run_dir: Path
    trainer: TrainerConfig
    budget: Budget
    latency_repeats: int = 3
    # The ArtifactSink actor on the driver's node (set by the search once Ray runs): a trial's files reach
    # `run_dir` through it. None: the files are copied into `run_dir` directly (same machine, no Ray).
    sink: object | None = None
    before_training: BeforeTraining | None = None
    # --mode anytime: the once-for-all trained weights every config is scored on instead of being trained.
    shared: SharedWeights | None = None
    # Where latency is measured (--latency-device), and the run's DeviceGate (set once Ray runs; None: no other
    # trial to wait for) that keeps other trials off that device meanwhile.
    latency_device: str = "cpu"
    gate: object | None = None
    # --fidelities: the rungs as multiples of the trainer's steps ([1]: single fidelity).
    fidelities: list[int] = field(default_factory=lambda: [1])


def _targets(setup: TrialSetup) -> TeacherTargets:
    key = str(setup.run.cache_dir)
    if key not in _TARGETS:
        _TARGETS[key] = setup.run.targets(setup.trainer.resolve_device())  # live targets run on the trial's device
    return _TARGETS[key]


def train_and_measure(
    setup: TrialSetup,
    config_dict: dict,
    trial_dir: Path | None,
    report: Callable[[dict], None] | None = None,
    macs: int | None = None,
    trial_number: int | None = None,
    at_rung: Callable[[dict], None] | None = None,
) -> dict:
    """Train and measure one config; returns the final result (status "completed" | "stopped" | "nonfinite" |
    "infeasible"). `report(metrics)` receives the training loss every `log_every` steps. `trial_number`: the
    study's trial (None for a baseline). With several `setup.fidelities`, `at_rung(result)` receives the result
    scored at each rung but the last (its student already saved in `trial_dir`) and returns when the trial is
    promoted (Tune ends a trial it stops right there); without it (a baseline) every rung is trained."""
    trial_started = time.perf_counter()
    config = CompressionConfig.from_dict(config_dict)
    if trial_dir is not None:
        trial_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(trial_dir / "config.json", config.to_dict(), indent=2)
    # int8 models cannot be trained: the float student is distilled, latency is measured on its int8 copy.
    started = time.perf_counter()
    if setup.shared is not None:
        student = setup.shared.student(config)
    else:
        student = setup.run.build_student(config, quantize=False)
    parts = {"build_student": time.perf_counter() - started}
    if setup.before_training is not None and trial_number is not None:
        setup.before_training(trial_number, student)
    deployed = quantize_int8(student) if config.quantize == "int8" else student
    if config.quantize == "int8" and setup.latency_device != "cpu":
        raise ValueError("int8 students (dynamic quantisation) run on the CPU only: measure with --latency-device cpu")
    started = time.perf_counter()
    with measuring(setup.gate, measured_device(setup.latency_device) if setup.gate else ""):
        latency = measure_latency(deployed, seconds=setup.budget.seconds, device=setup.latency_device, warmup=1,
                                  repeats=setup.latency_repeats)
    parts["latency"] = time.perf_counter() - started  # with the wait for the device (the gate)
    base = {"macs": macs, "latency_ms": latency.median_ms, "latency_measurement": latency.conditions,
            "train_device": train_device(setup.trainer),
            "nonzero_params": count_nonzero_params(deployed)}
    del deployed
    over = setup.budget.violations(None, latency_ms=latency.median_ms)  # MACs and params were checked when asked
    if over:
        return {**base, "final": True, "status": "infeasible", "reason": "; ".join(over)}

    def finished(result, final: bool) -> dict:
        """The result to report once `result` is scored (the trial's end, or a rung), its student saved."""
        started = time.perf_counter()
        fidelity = (result.rung_scores[-1][0] // setup.trainer.steps) if result.rung_scores else None
        if trial_dir is not None and result.status == "completed":
            provenance = {"trial": trial_number, "weights": "short-trial", "steps": result.steps_done,
                          "fidelity": fidelity}
            save_student(trial_dir / WEIGHTS_FILE, student, config.to_dict(), setup.run.teacher_spec, provenance)
        parts.update(result.seconds_parts, save=time.perf_counter() - started)
        # Counted again after training, on what is saved: a sparse student's masks kept its zeros through training.
        trained = quantize_int8(student) if config.quantize == "int8" else student
        return {
            **base,
            "nonzero_params": count_nonzero_params(trained),
            "final": final,
            "status": result.status,
            "reason": result.reason,
            "heldout_loss": result.heldout_loss,
            "heldout_loss_by_target": result.heldout_loss_by_target,
            # (fidelity, held-out score) at every rung scored: a list, as Tune flattens dicts in results.
            "fidelity": fidelity,
            "heldout_loss_by_fidelity_pairs": [[steps // setup.trainer.steps, loss]
                                               for steps, loss, _ in result.rung_scores],
            **({} if final else {RUNG_FIDELITY: fidelity}),
            "train_curve": [list(point) for point in result.curve],
            "steps_done": result.steps_done,
            "seconds_training": result.seconds_training,
            # Flat keys: Tune flattens nested dicts in results.
            **{f"seconds_{key}": round(value, 4) for key, value in parts.items()},
            "loss_measured_before_int8": config.quantize == "int8",
        }

    with training(setup.gate, used_devices() if setup.gate else []) as pause:
        if setup.shared is not None:
            return {**base, **_scored_on_shared_weights(setup, config, student, trial_dir, trial_number)}

        def on_report(step: int, train_loss: float) -> bool:
            pause()  # a latency measurement waiting for this device goes first
            if report is not None:
                # seconds_elapsed: what the trial cost so far, kept if the scheduler stops it here (pruned)
                report({**base, "step": step, "train_loss": train_loss,
                        "seconds_elapsed": time.perf_counter() - trial_started})
            return False  # stopping is the scheduler's decision, taken through Ray

        def on_rung(scored) -> bool:
            if at_rung is not None:
                at_rung(finished(scored, final=False))
            return True  # here only when promoted: a trial Tune stops at a rung ends inside at_rung

        rungs = [fidelity * setup.trainer.steps for fidelity in setup.fidelities]
        result = run_short_trial(
            student, _targets(setup), setup.run.data.train, setup.run.data.heldout, setup.trainer, on_report,
            kept_layers=config.layers, rungs=rungs, on_rung=on_rung,
        )

    return finished(result, final=True)


def train_device(trainer: TrainerConfig) -> str:
    """The device and precision this process trains on (as `DistillationStep` does: bf16 autocast on CUDA)."""
    device = trainer.resolve_device()
    return f"{device} ({device_name(device)}, {'bf16 autocast' if device.type == 'cuda' else 'float32'})"


def _scored_on_shared_weights(setup: TrialSetup, config: CompressionConfig, student, trial_dir: Path | None,
                              trial_number: int | None) -> dict:
    """--mode anytime: the held-out score of `config` on the shared weights (no training step)."""
    started = time.perf_counter()
    loss, by_target = setup.shared.score(config, _targets(setup), setup.run.data.train, setup.run.data.heldout,
                                         setup.trainer)
    if trial_dir is not None:
        provenance = {"trial": trial_number, "weights": "shared (once-for-all)", "steps": 0}
        save_student(trial_dir / WEIGHTS_FILE, student, config.to_dict(), setup.run.teacher_spec, provenance)
    return {
        "final": True, "status": "completed", "reason": None, "heldout_loss": loss, "heldout_loss_by_target": by_target,
        "train_curve": [], "steps_done": 0, "seconds_training": 0.0, "seconds_scoring": time.perf_counter() - started,
        "loss_measured_before_int8": False,
    }


def train_candidate(params: dict, setup: TrialSetup) -> None:
    """Ray Tune function trainable: `params` is what `OptunaAskTellSearcher.suggest` returned.

    The worker may be on another node than the driver: it works in its own temp directory and caches, and its
    files reach `<run_dir>/trials/<n>/` through the sink (Ray), never through the run directory's path."""
    from ray import tune

    number = params["trial_number"]

    def reported(result: dict) -> dict:
        result["node"] = node_name()  # which machine ran it: on a cluster, where to look when it is slow or odd
        by_target = result.pop("heldout_loss_by_target", None)
        if by_target is not None:  # Tune flattens nested dicts in results ("…/4"): send the pairs as a list
            result["heldout_loss_by_target_pairs"] = [[key, value] for key, value in by_target.items()]
        return {**result, "macs": params["macs"]}

    with tempfile.TemporaryDirectory(prefix=f"sslc-trial-{number}-") as tmp:
        trial_dir = Path(tmp)

        def at_rung(result: dict) -> None:
            # Its files first: a trial the scheduler stops at this rung ends inside the report.
            result.update(_deliver(setup, number, trial_dir))
            tune.report(reported(result))

        result = _guarded(lambda: train_and_measure(setup, params["config"], trial_dir, tune.report, params["macs"],
                                                    number, at_rung), setup, trial_dir)
        try:
            result.update(_deliver(setup, number, trial_dir))
        except Exception as error:  # the driver's node unreachable: the trial's files are lost, so it failed
            result = {"final": True, "status": "error", "reason": f"node {node_name()} could not send trial "
                      f"{number}'s files to the driver: {type(error).__name__}: {first_line(error)}"}
    tune.report(reported(result))


def train_baseline(setup: TrialSetup, config_dict: dict, macs: int) -> dict:
    """A Ray task: one baseline, trained and measured like a trial (and failing like one, with a reason)."""
    return _guarded(lambda: train_and_measure(setup, config_dict, None, macs=macs), setup, None)


def _guarded(work: Callable[[], dict], setup: TrialSetup, trial_dir: Path | None) -> dict:
    """`work()`'s result, or, when it raises, the final report of a failed trial with the reason in one line
    (and the traceback in `trial_dir`/error.txt)."""
    try:
        if setup.trainer.num_threads:
            torch.set_num_threads(setup.trainer.num_threads)
        setup.run.use_node_cache()
        return work()
    except Exception as error:  # recorded as the trial's fail reason; the traceback goes to its directory
        if trial_dir is not None:
            (trial_dir / "error.txt").write_text(traceback.format_exc())
        # One line that says where: on a cluster, a file missing on one node is that node's problem.
        what = f"{type(error).__name__} on node {node_name()}"
        if isinstance(error, torch.OutOfMemoryError):
            # This process runs the next trial too (Ray reuses it): give back what the failed one held.
            torch.cuda.empty_cache()
            what = f"out of GPU memory ({what})"
        return {"final": True, "status": "error", "reason": f"{what}: {first_line(error)}"}


def _deliver(setup: TrialSetup, number: int, local_dir: Path) -> dict:
    if setup.sink is not None:
        return send_trial_files(setup.sink, number, local_dir)
    target = Path(setup.run_dir) / TRIALS_DIR / str(number)
    shutil.copytree(local_dir, target, dirs_exist_ok=True)
    return {}

