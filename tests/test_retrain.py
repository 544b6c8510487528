"""Retraining points of a tiny real search: lower loss than the short trial, exact resume, records, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf
import torch
from optuna.trial import TrialState

from sslc.cli.retrain import main as retrain_main
from sslc.dashboards import build_report
from sslc.errors import UserError
from sslc.runs.record import open_run
from sslc.runs.retrain import (
    RetrainStopped,
    full_trainer_config,
    prepare_context,
    retrain,
    retrain_trial,
)
from sslc.runs.student_file import read_student_file
from sslc.runs.study import retrain_key
from sslc.runs.trials import TrialRecord, front_trials
from sslc.trainers import load_checkpoint

STEPS = 40  # 10x the search's 4 short-trial steps


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(copy_run):
    return copy_run("retrain")


@pytest.fixture(scope="module")
def retrained(run_dir):
    """The smallest Pareto point, retrained for STEPS steps through the public entry point."""
    trial = front_trials(open_run(run_dir).study)[0]
    [result] = retrain(run_dir, numbers=[trial.number], steps=STEPS, progress=False, say=lambda line: None)
    return trial, result


def test_retrain_lowers_the_loss_and_records_the_result(run_dir, retrained):
    trial, result = retrained
    assert result["status"] == "completed" and result["steps"] == STEPS
    assert result["heldout_loss"] < trial.user_attrs["heldout_loss"] == result["short_trial_heldout_loss"]
    # Same architecture as the trial: measured again, the costs agree with what the search recorded.
    assert result["macs"] == trial.user_attrs["macs"] and result["params"] == trial.user_attrs["params"]
    assert result["latency_ms"] > 0

    out = run_dir / "retrain" / str(trial.number)
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk["heldout_loss"] == result["heldout_loss"]
    assert [step for step, _ in on_disk["curve"]][-1] == STEPS
    recorded = open_run(run_dir).study.user_attrs[retrain_key(trial.number)]
    assert recorded["heldout_loss"] == result["heldout_loss"] and recorded["steps"] == STEPS
    # Scored by the study's protocol, like the short trial: same targets, the loss is their mean.
    by_target = result["heldout_loss_by_target"]
    assert sorted(by_target) == sorted(trial.user_attrs["heldout_loss_by_target"])
    assert [int(t) for t in sorted(by_target, key=int)] == open_run(run_dir).study.user_attrs["protocol"]["targets"]
    assert result["heldout_loss"] == pytest.approx(sum(by_target.values()) / len(by_target), rel=1e-12)

    # The exported weights are the final trained weights (those of the last checkpoint), in the export format.
    weights = read_student_file(out / "student.pt")
    final = load_checkpoint(out / "checkpoint" / "last.pt")
    assert final["step"] == STEPS
    assert weights["compression"] == trial.user_attrs["config"]
    assert weights["provenance"]["weights"] == "retrained"
    assert weights["state_dict"].keys() == final["student"].keys()
    assert all(torch.equal(weights["state_dict"][k], final["student"][k]) for k in final["student"])


def test_report_shows_the_retrained_point(run_dir, retrained):
    trial, result = retrained
    report = build_report(open_run(run_dir))
    [trace] = [t for t in report.section("front").figure.data if t.meta == "retrained"]
    assert list(trace.customdata) == [trial.number]
    assert list(trace.y) == pytest.approx([result["heldout_loss"]])
    assert f"<td>{result['heldout_loss']:.4f}</td><td>{STEPS}</td>" in report.section("table").html


def test_rerun_of_a_finished_retrain_is_not_redone(run_dir, retrained, capsys):
    trial, _ = retrained
    result_file = run_dir / "retrain" / str(trial.number) / "result.json"
    before = result_file.stat().st_mtime_ns
    code = retrain_main([str(run_dir), "--trial", str(trial.number), "--steps", str(STEPS), "--no-progress"])
    assert code == 0
    assert "already retrained" in capsys.readouterr().err
    assert result_file.stat().st_mtime_ns == before


def test_interrupted_retrain_resumes_to_the_same_weights(run_dir, retrained, tmp_path):
    frozen, first = retrained
    trial = TrialRecord.read(frozen)  # what select_trials hands retrain_trial
    run = open_run(run_dir)
    trainer = full_trainer_config(run, steps=12)
    assert trainer.log_every == 1 and trainer.checkpoint_every == 1
    context = prepare_context(run)
    reports = []

    def stop_at_fifth_report():
        reports.append(1)
        return len(reports) >= 5

    with pytest.raises(RetrainStopped):
        retrain_trial(run, trial, trainer, context, tmp_path / "a", progress=False, should_stop=stop_at_fifth_report)
    assert load_checkpoint(tmp_path / "a" / "checkpoint" / "last.pt")["step"] == 5
    assert not (tmp_path / "a" / "result.json").exists()

    resumed = retrain_trial(run, trial, trainer, context, tmp_path / "a", progress=False)
    straight = retrain_trial(run, trial, trainer, context, tmp_path / "b", progress=False)
    assert resumed["resumed_from_step"] == 5 and straight["resumed_from_step"] == 0
    assert resumed["heldout_loss"] == straight["heldout_loss"]
    a = read_student_file(tmp_path / "a" / "student.pt")["state_dict"]
    b = read_student_file(tmp_path / "b" / "student.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    # Retrains into other directories are not recorded on the study.
    assert open_run(run_dir).study.user_attrs[retrain_key(trial.number)]["steps"] == first["steps"]


def test_bad_choices_are_one_line_errors(run_dir, tmp_path, capsys):
    run = open_run(run_dir)
    trials = run.study.get_trials()
    infeasible = next(t.number for t in trials if t.user_attrs.get("infeasible"))
    pruned = [t.number for t in trials if t.state == TrialState.PRUNED]
    cases = [
        ([str(run_dir), "--trial", "999"], "has no trial 999"),
        ([str(run_dir), "--trial", str(infeasible)], "was never trained"),
        ([str(run_dir)], "--trial N (repeatable) or --pareto"),
        ([str(run_dir), "--trial", str(trials[0].number), "--under-budget"], "--under-budget goes with --pareto"),
        ([str(run_dir), "--pareto", "--steps", "3", "--epochs", "1"], "not allowed with"),
        ([str(run_dir), "--pareto", "--steps", "0"], "at least 1"),
        ([str(tmp_path / "missing"), "--pareto"], "does not exist"),
        ([str(tmp_path), "--pareto"], "holds no study"),
    ]
    if pruned:
        cases.append(([str(run_dir), "--trial", str(pruned[0])], "stopped early"))
    for argv, message in cases:
        assert retrain_main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (argv, lines)


def test_ctrl_c_writes_a_checkpoint_and_exits_130(copy_run):
    run_dir = copy_run("ctrl-c")
    trial = front_trials(open_run(run_dir).study)[0].number
    checkpoint = run_dir / "retrain" / str(trial) / "checkpoint" / "last.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sslc.cli.retrain", str(run_dir), "--trial", str(trial), "--steps", "600",
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 90
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert checkpoint.exists(), "the first checkpoint was never written"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "stopping after the next report" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    step = load_checkpoint(checkpoint)["step"]
    assert 0 < step < 600
    assert not (checkpoint.parent.parent / "result.json").exists()


def test_under_budget_drops_pareto_points_over_a_latency_limit(tmp_path):
    import optuna

    from sslc.runs.retrain import select_trials

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{run_dir / 'study.db'}", study_name="lat",
                                directions=["minimize", "minimize"])
    study.set_user_attr("objective_names", ["loss", "macs"])
    study.set_user_attr("budget", {"max_macs": 10**9, "seconds": 10.0, "max_params": None, "max_latency_ms": 20.0})
    for loss, macs, latency in ((0.5, 0.9, 30.0), (0.8, 0.5, 10.0), (0.9, 0.8, 5.0)):  # the last is dominated
        study.add_trial(optuna.trial.create_trial(
            values=[loss, macs], user_attrs={"macs": int(macs * 1e9), "latency_ms": latency, "heldout_loss": loss}
        ))
    run = open_run(run_dir)
    assert [t.number for t in select_trials(run, pareto=True)] == [1, 0]  # by MACs
    assert [t.number for t in select_trials(run, pareto=True, under_budget=True)] == [1]
    assert [t.number for t in select_trials(run, numbers=[2, 0, 2])] == [2, 0]


def test_changed_heldout_audio_is_refused(copy_run):
    """A retrain scored on other held-out audio than the search's trials would not be comparable with them."""
    run_dir = copy_run("changed-audio")
    assert prepare_context(open_run(run_dir)) is not None  # a copied (moved) run keeps its protocol
    for wav in (run_dir / "cache").rglob("*.wav"):
        audio, rate = sf.read(wav)
        sf.write(wav, audio[: len(audio) // 2], rate)
    with pytest.raises(UserError, match="held-out audio .* changed"):
        prepare_context(open_run(run_dir))


def test_full_schedule_defaults_and_overrides(run_dir):
    run = open_run(run_dir)
    short = run.study.user_attrs["trainer"]
    default = full_trainer_config(run)
    assert default.steps == 10 * short["steps"] and default.epochs is None
    assert default.num_threads is None  # the search pinned a thread per Ray trial; a retrain uses the machine
    for key in ("batch_size", "lr", "seed", "crop_seconds", "layer_map", "warmup_fraction", "decay"):
        assert getattr(default, key) == short[key]  # trained exactly like the trial, only longer
    by_epochs = full_trainer_config(run, epochs=3, batches_per_epoch=200, device="cpu")
    assert by_epochs.epochs == 3 and by_epochs.device == "cpu"
    assert by_epochs.log_every == 600 // 50 and by_epochs.checkpoint_every == 600 // 10


def test_failed_and_running_trials_are_refused(tmp_path, capsys):
    import optuna

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{run_dir / 'study.db'}", study_name="states",
                                directions=["minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "loss is nan"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"interrupted": True}))
    for number, message in ((0, "failed (loss is nan)"), (1, "is still running"), (2, "was interrupted")):
        assert retrain_main([str(run_dir), "--trial", str(number)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert retrain_main([str(run_dir), "--pareto"]) == 2
    assert "no complete trial yet" in capsys.readouterr().err
