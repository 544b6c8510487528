"""Several points retrained at once (`retrain_points`): Ray tasks that run together where the resources allow and
one after another where only one fits; each point recorded as it finishes; a failed point does not touch the rest."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from sslc.cli.retrain import main as retrain_main
from sslc.runs.record import open_run
from sslc.runs.trials import Outcome, TrialRecord
from sslc.search.retrain import prepare_context, retrain, retrain_plan, retrain_trial

STEPS = 12
# Long enough that two points started together are still training when the later one's task has started (at 12
# steps a point trained in 0.6 s, less than the 1.4 s its twin's task took to start on an idle machine).
STEPS_TOGETHER = 100

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def two_cpu_ray():
    """A local Ray of 2 CPUs, whatever the machine: what fits at once is then known."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def complete_trials(run_dir, count: int) -> list[int]:
    numbers = [t.number for t in open_run(run_dir).trials() if t.outcome == Outcome.COMPLETE][:count]
    assert len(numbers) == count, "the tiny run has too few complete trials"
    return numbers


def spans(results) -> list[tuple[datetime, datetime]]:
    return [(datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in results]


def test_two_points_as_ray_tasks_are_recorded_and_train_what_one_process_does(copy_run, two_cpu_ray, tmp_path):
    """By default two points share the 2 CPUs, 1 each; both tasks finish, both are recorded on the study and in
    result.json, and each trained what an in-process retrain of the same plan trains (same validation curve)."""
    run_dir = copy_run("points")
    numbers = complete_trials(run_dir, 2)
    said = []
    results = retrain(run_dir, numbers=numbers, steps=STEPS_TOGETHER, progress=False, say=said.append)
    assert [r["trial"] for r in results] == numbers and all(r["status"] == "completed" for r in results)
    assert any("each a Ray task with 1 CPUs and 0 GPUs" in line for line in said), said
    assert all(json.loads((open_run(run_dir).retrain_dir(n) / "result.json").read_text())["trainer"]["num_threads"] == 1
               for n in numbers), "each point trains on the one CPU it holds"
    # Whether the two spans overlap is not asserted: the second task's worker can start later than the first
    # point takes to train (2.6 s against a 2.9 s start-up lag in one fresh-clone run), so it is timing, not behaviour.

    run = open_run(run_dir)
    for result in results:
        recorded = run.record.retrains[result["trial"]]
        assert recorded["heldout_loss"] == result["heldout_loss"] and recorded["steps"] == STEPS_TOGETHER
        on_disk = json.loads((run.retrain_dir(result["trial"]) / "result.json").read_text())
        assert on_disk["validation"] == result["validation"]
    points = {p["trial"]: p for p in json.loads((run_dir / "pareto.json").read_text())["points"]}
    assert all(points[n]["retrained"]["steps"] == STEPS_TOGETHER for n in numbers if n in points)

    # The reference: the first point retrained in this process (one thread, as its task had), same plan.
    trial = TrialRecord.read(run.study.get_trials()[numbers[0]])
    here = retrain_trial(run, trial, retrain_plan(run, steps=STEPS_TOGETHER), prepare_context(run), tmp_path / "here",
                         progress=False)
    assert here["validation"] == results[0]["validation"]


def test_one_after_another_where_one_fits_and_a_failed_point_keeps_the_others(copy_run, two_cpu_ray, capsys):
    """1.5 CPUs each on 2 (two do not fit; the task trains on int(1.5) = 1 thread, as the other test's: 2 threads
    on a loaded 2-core machine made each step 10x slower): the points run one after another (spans disjoint). The first point cannot write its
    retrain directory (a file is in its place): it fails in one line, the other two finish and are recorded;
    the command exits 1."""
    run_dir = copy_run("points-failed")
    broken, *good = complete_trials(run_dir, 3)
    (run_dir / "retrain").mkdir(exist_ok=True)
    (run_dir / "retrain" / str(broken)).write_text("in the way")
    argv = [str(run_dir), *sum((["--trial", str(n)] for n in (broken, *good)), []), "--steps", str(STEPS),
            "--cpus-per-point", "1.5", "--no-progress"]
    assert retrain_main(argv) == 1
    captured = capsys.readouterr()
    assert f"trial {broken} failed: " in captured.err and "File exists" in captured.err
    assert "Traceback" not in captured.err

    run = open_run(run_dir)
    assert broken not in run.record.retrains
    results = [run.record.retrains[n] for n in good]
    assert all(r["status"] == "completed" and r["steps"] == STEPS for r in results)
    (a_start, a_end), (b_start, b_end) = sorted(spans(results))
    assert a_end <= b_start, "only one point fits at a time: they should not overlap"


def test_bad_point_resources_are_one_line(copy_run, capsys):
    run_dir = copy_run("points-bad")
    for extra, message in ((["--cpus-per-point", "0"], "--cpus-per-point must be > 0"),
                           (["--gpus-per-point", "-1"], "--gpus-per-point must be >= 0"),
                           (["--workers", "2", "--cpus-per-point", "1"], "are for points trained in one process")):
        assert retrain_main([str(run_dir), "--pareto", *extra]) == 2, extra
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, lines)
