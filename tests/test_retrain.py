"""Retraining points of a tiny real search: lower loss than the short trial, exact resume, records, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import soundfile as sf
import torch
from optuna.trial import TrialState

from sslc.cli.retrain import main as retrain_main
from sslc.dashboards import build_report
from sslc.errors import UserError
from sslc.runs.record import open_run
from sslc.runs.student_file import read_student_file
from sslc.runs.study import retrain_key
from sslc.runs.trials import TrialRecord, front_trials
from sslc.search.retrain import (
    RetrainStopped,
    prepare_context,
    retrain,
    retrain_plan,
    retrain_trial,
    training_data,
)
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

    # Both weights are in the export format; the resumable checkpoint (optimizer state) is gone once finished.
    weights = read_student_file(out / "student.pt")
    last = read_student_file(out / "student-last.pt")
    assert not (out / "checkpoint").exists()
    assert weights["compression"] == last["compression"] == trial.user_attrs["config"]
    assert weights["provenance"]["weights"] == "retrained" and last["provenance"]["weights"] == "retrained-last"
    assert weights["state_dict"].keys() == last["state_dict"].keys()
    assert on_disk["recipe"]["name"] == "quick" and recorded["recipe"] == on_disk["recipe"]


def test_report_shows_the_retrained_point(run_dir, retrained):
    trial, result = retrained
    report = build_report(open_run(run_dir))
    [trace] = [t for t in report.section("front").figure.data if t.meta == "retrained"]
    assert list(trace.customdata) == [trial.number]
    assert list(trace.y) == pytest.approx([result["heldout_loss"]])
    assert trace.name == f"retrained (quick, {STEPS} steps) (1)"  # says how it was retrained, not "full schedule"
    assert f"<td>{result['heldout_loss']:.4f}</td><td>{STEPS}</td><td>quick</td>" in report.section("table").html
    # The validation curve as recorded, beside the short trial's score.
    figure = report.section("retrains").figure
    [curve] = [t for t in figure.data if t.meta == f"validation-{trial.number}"]
    assert [[int(x), y] for x, y in zip(curve.x, curve.y)] == result["validation"]
    [short] = [t for t in figure.data if t.meta == f"short-{trial.number}"]
    assert set(short.y) == {trial.user_attrs["heldout_loss"]}


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
    plan = retrain_plan(run, steps=12, eval_every=3)
    assert plan.trainer.log_every == 1 and plan.trainer.checkpoint_every == 1
    context = prepare_context(run)
    reports = []

    def stop_at_fifth_report():
        reports.append(1)
        return len(reports) >= 5

    with pytest.raises(RetrainStopped):
        retrain_trial(run, trial, plan, context, tmp_path / "a", progress=False, should_stop=stop_at_fifth_report)
    stopped = load_checkpoint(tmp_path / "a" / "checkpoint" / "last.pt")
    assert stopped["step"] == 5 and [s for s, _, _ in stopped["validation"]] == [3]
    assert not (tmp_path / "a" / "result.json").exists()

    resumed = retrain_trial(run, trial, plan, context, tmp_path / "a", progress=False)
    straight = retrain_trial(run, trial, plan, context, tmp_path / "b", progress=False)
    assert resumed["resumed_from_step"] == 5 and straight["resumed_from_step"] == 0
    assert resumed["heldout_loss"] == straight["heldout_loss"]
    # The validation curve continues across the stop: the same scores at the same steps as without one.
    assert resumed["validation"] == straight["validation"] and [s for s, _ in straight["validation"]] == [3, 6, 9, 12]
    for name in ("student.pt", "student-last.pt"):
        a = read_student_file(tmp_path / "a" / name)["state_dict"]
        b = read_student_file(tmp_path / "b" / name)["state_dict"]
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

    from sslc.search.retrain import select_trials

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
    default = retrain_plan(run).trainer
    assert default.steps == 10 * short["steps"] and default.epochs is None
    assert default.num_threads is None  # the search pinned a thread per Ray trial; a retrain uses the machine
    for key in ("batch_size", "lr", "seed", "crop_seconds", "layer_map", "warmup_fraction", "decay"):
        assert getattr(default, key) == short[key]  # trained exactly like the trial, only longer
    by_epochs = retrain_plan(run, epochs=3, batches_per_epoch=200, device="cpu").trainer
    assert by_epochs.epochs == 3 and by_epochs.device == "cpu"
    assert by_epochs.log_every == 600 // 50 and by_epochs.checkpoint_every == 600 // 10
    assert by_epochs.eval_every == 600 // 10


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


def test_pareto_files_carry_the_retrained_result(run_dir, retrained):
    import csv

    trial, result = retrained
    [row] = [r for r in json.loads((run_dir / "pareto.json").read_text())["points"] if r["trial"] == trial.number]
    assert row["loss"] == trial.user_attrs["heldout_loss"]  # the short trial's score stays what it was
    assert row["retrained"]["loss"] == result["heldout_loss"] and row["retrained"]["steps"] == STEPS
    assert row["retrained"]["recipe"] == "quick"
    with open(run_dir / "pareto.csv") as handle:
        [line] = [r for r in csv.DictReader(handle) if int(r["trial"]) == trial.number]
    assert float(line["retrained_loss"]) == pytest.approx(result["heldout_loss"]) and line["retrained_recipe"] == "quick"


def test_recipe_lr_schedule_equals_its_formula(run_dir, tmp_path, monkeypatch):
    """distilhubert: linear warm-up over 7% of the steps to the peak lr, then linear decay to zero (scaled down
    to 30 steps and the tiny run's crops); the lr each step applied, read from the optimizer as it steps."""
    from sslc.trainers.step import DistillationStep

    applied = []
    update = DistillationStep.update

    def recording(self, loss, lengths):
        if self.optimizer is not None:
            applied.append(self.optimizer.param_groups[0]["lr"])
        return update(self, loss, lengths)

    monkeypatch.setattr(DistillationStep, "update", recording)
    run = open_run(run_dir)
    total, peak = 30, 3e-4
    plan = retrain_plan(run, recipe="distilhubert", steps=total, lr=peak, crop_seconds=1.0, batch_seconds=4.0)
    assert plan.trainer.batch_size == 4 and plan.trainer.decay == "linear" and plan.trainer.grad_clip == 10.0
    assert plan.recipe["name"] == "distilhubert" and plan.recipe["overrides"]["lr"] == peak
    trial = TrialRecord.read(front_trials(run.study)[0])
    result = retrain_trial(run, trial, plan, prepare_context(run), tmp_path / "r", progress=False)
    warmup = round(0.07 * total)
    expected = [peak * (k + 1) / warmup if k < warmup else peak * (1 - (k - warmup) / (total - warmup))
                for k in range(total)]
    assert applied == pytest.approx(expected, rel=1e-9)
    assert result["recipe"] == plan.recipe and result["steps"] == total


def test_the_exported_weights_are_the_best_validated_ones(run_dir, tmp_path):
    """student.pt holds the weights of the step with the lowest recorded validation score (compared with a second
    run of the same plan stopped at that step), student-last.pt the last. (On the tiny run the score is lowest at
    step 3 of 6: 0.2922 against 0.2930 at the end, measured.)"""
    run = open_run(run_dir)
    plan = retrain_plan(run, steps=6, eval_every=1)
    trial = TrialRecord.read(front_trials(run.study)[0])
    context = prepare_context(run)
    result = retrain_trial(run, trial, plan, context, tmp_path / "full", progress=False)
    scores = dict(result["validation"])
    assert sorted(scores) == list(range(1, 7))
    best = min(scores, key=scores.get)
    assert result["best_step"] == best and result["heldout_loss"] == scores[best]
    assert result["last_heldout_loss"] == scores[6]
    assert best != 6, "on the tiny run the last step scores worse than an earlier one"

    reports = []
    with pytest.raises(RetrainStopped):
        retrain_trial(run, trial, plan, context, tmp_path / "stopped", progress=False,
                      should_stop=lambda: reports.append(1) or len(reports) >= best)
    at_best = load_checkpoint(tmp_path / "stopped" / "checkpoint" / "last.pt")
    assert at_best["step"] == best
    exported = read_student_file(tmp_path / "full" / "student.pt")["state_dict"]
    assert all(torch.equal(exported[k], at_best["student"][k]) for k in at_best["student"])
    last = read_student_file(tmp_path / "full" / "student-last.pt")["state_dict"]
    assert any(not torch.equal(last[k], exported[k]) for k in exported)


def test_bad_recipe_or_override_is_one_line(run_dir, capsys):
    cases = [
        (["--recipe", "fastest"], "unknown recipe 'fastest'"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--warmup", "1.5"], "--warmup is a fraction"),
        (["--batch-seconds", "0"], "--batch-seconds must be > 0"),
        (["--precision", "fp8"], "--precision must be one of"),
        (["--grad-clip", "-2"], "--grad-clip must be >= 0"),
        (["--eval-every", "0"], "--eval-every must be at least 1"),
        (["--lr", "fast"], "invalid float value"),
    ]
    for extra, message in cases:
        assert retrain_main([str(run_dir), "--pareto", *extra]) == 2, extra
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (extra, lines)


@pytest.fixture(scope="module")
def data_parallel(copy_run, tmp_path_factory):
    """One Ray session for the data-parallel tests and the same 4-step plan (validated every step) retrained
    uninterrupted on 1 and on 2 Ray Train workers: (run, trial, context, plan, {workers: (result, out_dir)})."""
    import ray

    from sslc.search.runner import start_ray

    run_dir = copy_run("workers")
    run = open_run(run_dir)
    trial = TrialRecord.read(front_trials(run.study)[0])
    context = prepare_context(run)
    plan = retrain_plan(run, steps=4, eval_every=1)
    started = start_ray(None)
    try:
        done = {}
        for workers in (1, 2):
            out = tmp_path_factory.mktemp(f"workers-{workers}")
            done[workers] = retrain_trial(run, trial, replace(plan, workers=workers), context, out, progress=False), out
        yield run, trial, context, plan, done
    finally:
        if started:
            ray.shutdown()


def test_two_ray_train_workers_train_what_one_does(data_parallel):
    """--workers: Ray Train's TorchTrainer with DDP (gloo). Same global batch (4 crops; 2 each on two workers),
    same seed: after 4 steps the last weights agree within 1e-5 (measured: 8.5e-7, float summation order) and
    the validation curves within 1e-6 relative; the exported best weights come back through Ray's checkpoint."""
    *_, done = data_parallel
    weights, curves = {}, {}
    for workers, (result, out) in done.items():
        assert result["status"] == "completed" and result["workers"] == workers and result["steps"] == 4
        weights[workers] = read_student_file(out / "student-last.pt")["state_dict"]
        curves[workers] = result["validation"]
        assert not (out / "ray").exists()  # Ray Train's storage goes once finished
    assert max(float((weights[1][k] - weights[2][k]).abs().max()) for k in weights[1]) < 1e-5
    assert [s for s, _ in curves[1]] == [s for s, _ in curves[2]] == [1, 2, 3, 4]
    assert [v for _, v in curves[2]] == pytest.approx([v for _, v in curves[1]], rel=1e-6)


def test_a_killed_two_worker_retrain_resumes_and_its_curve_continues(data_parallel, tmp_path):
    """Worker 1 of a 2-worker retrain dies (os._exit) before step 3, once Ray Train has recorded the checkpoint of
    step 2: the run fails in one line; the same retrain run again resumes from Ray Train's latest checkpoint
    (step 2), its validation curve continues (steps 1..4, none repeated or missing, the same scores as the
    uninterrupted 2-worker run) and its weights equal that run's (exactly: measured max difference 0)."""
    from faults import CrashBeforeStep, shipped_by_value

    run, trial, context, plan, done = data_parallel
    straight, straight_out = done[2]
    plan = replace(plan, workers=2)
    out = tmp_path / "killed"
    experiment = out / "ray" / f"{run.name}-retrain-{trial.number}"
    shipped_by_value()  # Ray's workers cannot import the tests' modules
    with pytest.raises(UserError, match="data-parallel retraining failed"):
        retrain_trial(run, trial, plan, context, out, progress=False,
                      before_step=CrashBeforeStep(3, rank=1, snapshot=experiment / "checkpoint_manager_snapshot.json"))
    assert not (out / "result.json").exists()
    assert CrashBeforeStep(3, 1, experiment / "checkpoint_manager_snapshot.json").recorded_step() == 2

    resumed = retrain_trial(run, trial, plan, context, out, progress=False)
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == 2 and resumed["steps"] == 4
    assert [s for s, _ in resumed["validation"]] == [1, 2, 3, 4]
    assert resumed["validation"] == straight["validation"]
    assert resumed["best_step"] == straight["best_step"] and resumed["heldout_loss"] == straight["heldout_loss"]
    for name in ("student.pt", "student-last.pt"):
        a = read_student_file(out / name)["state_dict"]
        b = read_student_file(straight_out / name)["state_dict"]
        assert max(float((a[k] - b[k]).abs().max()) for k in b) == 0.0, name


def test_retrain_heads_start_fitted_on_enough_frames(run_dir, tmp_path, monkeypatch):
    """A retrain fits its heads on at least 8 frames per student channel where one pass over its training crops
    holds them (the trials' 8 batches can hold about as many frames as channels: a least-squares fit that matches
    its own batches only); otherwise on that whole pass (less the clips kept out to choose the start on)."""
    import sslc.trainers.distill as distill

    seen = []
    fit = distill.fit_heads_
    # fit_heads_(heads, (student states, targets) to fit on, the same to choose the start on)
    monkeypatch.setattr(distill, "fit_heads_", lambda heads, fitted, check: seen.append(
        (fitted[0][0].shape, check[0][0].shape[0])) or fit(heads, fitted, check))
    run = open_run(run_dir)
    trial = TrialRecord.read(front_trials(run.study)[0])
    # One 0.25 s crop a batch (12 frames): the trials' 8 batches would be ~100 frames for 32 channels.
    plan = retrain_plan(run, steps=1, batch_seconds=0.25, crop_seconds=0.25)
    assert plan.trainer.head_fit_frames_per_dim == 8
    context = prepare_context(run)
    retrain_trial(run, trial, plan, context, tmp_path / "r", progress=False)
    [((frames, dim), check_frames)] = seen
    one_pass = sum(context.teacher.config.frames_for(n) for n in training_data(run, context, plan.trainer).lengths)
    assert frames > 8 * 12  # more than the trials' 8 batches
    assert frames >= 8 * dim or frames + check_frames == one_pass, (frames, dim, check_frames, one_pass)
