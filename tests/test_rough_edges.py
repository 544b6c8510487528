"""What a newcomer tripped over (issue 9, part 4): budgets, --help, fast input checks, logs, baselines, the report's
latency axis, mixed audio formats, the student's sample rate, half-made run directories, an unreachable hub."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sslc.budget import BudgetError, parse_budget
from sslc.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _search_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "sslc.cli.search", *args], capture_output=True, text=True, timeout=timeout, env=_env(),
    )


# ---- budgets ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, hint",
    [("0.3", "30%"), ("0.3", "0.3GMACs"), ("30", "30%"), ("30", "30GMACs"), ("250", "250GMACs"), ("5e5", "500000GMACs")],
)
def test_a_bare_small_number_is_refused_with_a_hint(text, hint):
    with pytest.raises(BudgetError) as excinfo:
        parse_budget(text)
    assert "did you mean" in str(excinfo.value) and hint in str(excinfo.value)


def test_a_bare_number_above_100_is_not_offered_as_a_share():
    with pytest.raises(BudgetError) as excinfo:
        parse_budget("250")
    assert "250%" not in str(excinfo.value)


@pytest.mark.parametrize(
    "text, macs",
    [("30 GMACs", 30e9), ("30gmacs", 30e9), ("30G", 30e9), ("3e10", 3e10), ("1e6", 1e6), ("500k", 5e5),
     ("500 MACs", 500)],
)
def test_budgets_with_units_or_large_bare_numbers_are_read_as_macs(text, macs):
    assert parse_budget(text).macs == pytest.approx(macs)


# ---- sslc-search --help and cheap input checks -----------------------------------------------------------------
def test_help_shows_every_default_and_readable_choices():
    from sslc.cli.search import build_parser

    text = build_parser().format_help()
    flat = " ".join(text.split("options:", 1)[1].split())  # the options' entries, without the usage lines
    for option, default in [("--trials", "20"), ("--steps", "100"), ("--batch-size", "4"), ("--crop-seconds", "2.0"),
                            ("--lr", "0.0002"), ("--budget-seconds", "10.0"), ("--latency-repeats", "3"),
                            ("--seed", "0"), ("--cpus-per-trial", "1.0"), ("--gpus-per-trial", "auto"),
                            ("--space", "combined"), ("--sampler", "gp"), ("--objectives", "loss,macs")]:
        help_of = re.search(rf"{option} \S+ (.*?)(?= --[a-z]|$)", flat)
        assert help_of and f"(default: {default})" in help_of.group(1), option
    assert "{loss,macs | loss,latency | loss,macs,latency}" in text
    assert "{loss,macs,loss,latency" not in text
    for preset in ("combined", "prune-only", "distil-depth", "lowrank"):
        assert preset in flat
    assert "depth: {min: 2, max: all}" in text  # the space file format, by example
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


CHECK_SCRIPT = """
import sys
from sslc.cli.search import main
code = main(sys.argv[1:])
print(code, "torch" in sys.modules, "ray" in sys.modules)
"""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "50%"], "--data"),  # no silent synthetic audio: --data is required
        (["--budget", "50%", "--data", "/no/such/dir"], "/no/such/dir"),
        (["--budget", "50%", "--data", "demo", "--trials", "0"], "--trials"),
        (["--budget", "50%", "--data", "demo", "--lr", "0"], "--lr"),
        (["--budget", "50%", "--data", "demo", "--space", "/no/such.yaml"], "space"),
        (["--budget", "0.3", "--data", "demo"], "did you mean 30%"),
    ],
)
def test_bad_input_fails_before_torch_and_ray_are_imported(args, message):
    done = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          env=_env())
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr


def test_a_budget_only_a_sliver_of_the_space_meets_is_refused_at_once_with_the_range(tmp_path):
    # random:tiny, combined: the smallest config needs ~36 MMACs, but fewer than 1% of random configs fit 45 MMACs.
    done = _search_cli("--teacher", "random:tiny", "--data", "demo", "--budget", "45MMACs", "--run-dir",
                       str(tmp_path / "run"), timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "barely reachable" in line and re.search(r"need \d+\.\d+ M to \d+\.\d+ M MACs", line), line
    suggested = float(re.search(r"raise --budget to (\d+\.\d+) MMACs", line).group(1))
    assert 45 < suggested < 211  # between the asked budget and the teacher's MACs
    assert not (tmp_path / "run" / "study.db").exists()  # refused before any trial was asked


# ---- non-terminal output, baselines ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logged_search(tmp_path_factory):
    """A tiny search with stdout and stderr going to files, as in a batch job."""
    tmp = tmp_path_factory.mktemp("logged")
    run_dir = tmp / "run"
    with open(tmp / "out.log", "w") as out, open(tmp / "err.log", "w") as err:
        done = subprocess.run(
            [sys.executable, "-m", "sslc.cli.search", "--teacher", "random:tiny", "--data", "demo", "--budget", "60%",
             "--trials", "3", "--steps", "2", "--batch-size", "2", "--crop-seconds", "1", "--latency-repeats", "1",
             "--run-dir", str(run_dir), "--no-report", "--no-early-stopping", "--concurrency", "1"],
            stdout=out, stderr=err, timeout=600, env=_env(),
        )
    stderr = (tmp / "err.log").read_text()
    assert done.returncode == 0, stderr[-3000:]
    return run_dir, stderr


def test_a_log_gets_plain_progress_lines_and_whole_tables(logged_search):
    _, log = logged_search
    progress = [line for line in log.splitlines() if re.match(r"^\[\d+:\d\d\] trials \d+/3: ", line)]
    assert progress, log
    assert "trials 3/3: 3 done" in progress[-1]
    assert not re.search(r"trials\s+━", log) and "…" not in log  # no frame of a live bar, nothing cut
    header = next(line for line in log.splitlines() if "┃ trial" in line)
    assert "MACs vs teacher" in header  # the last column, whole


def test_baselines_are_printed_and_an_over_budget_one_is_not_trained(logged_search):
    from sslc.runs.record import open_run

    run_dir, log = logged_search
    # On the 2-layer tiny teacher the 2-layer baseline is the teacher itself: over a 60% budget.
    over = next(line for line in log.splitlines() if line.startswith("baseline distilhubert-2layer:"))
    assert "over budget" in over and "not trained" in over and "training" not in over
    uniform = next(line for line in log.splitlines() if line.startswith("baseline uniform:"))
    assert re.search(r"held-out loss \d+\.\d{4}, \d+\.\d+ M MACs", uniform), uniform
    rows = {b["name"]: b for b in open_run(run_dir).study.user_attrs["baselines"]}
    assert rows["distilhubert-2layer"]["status"] == "infeasible"
    assert rows["distilhubert-2layer"]["heldout_loss"] is None and not rows["distilhubert-2layer"]["within_budget"]
    assert f"{rows['uniform']['heldout_loss']:.4f}" in uniform


def test_progress_lines_are_rate_limited_and_the_final_state_always_printed():
    import io

    import optuna

    from sslc.search.progress import SearchProgress

    study = optuna.create_study(directions=["minimize", "minimize"])
    console = SearchProgress.make_console(file=io.StringIO())
    assert not console.is_terminal and console.width >= 200
    with SearchProgress(study, 3, console, min_interval=3600) as progress:
        for loss in (1.0, 0.5):
            study.add_trial(optuna.trial.create_trial(values=[loss, 1.0], user_attrs={"macs": 1}))
            progress.refresh("complete")
    lines = console.file.getvalue().splitlines()
    # The start, then the two completions are held back by the interval, and the end state is printed.
    assert len(lines) == 2 and "trials 0/3: 0 done" in lines[0] and "trials 2/3: 2 done" in lines[1], lines


def test_a_wide_table_printed_to_a_file_is_not_cut():
    import io

    from rich.table import Table

    from sslc.console import make_console

    table = Table(title="retrained")
    for name in ("trial", "status", "steps", "short-trial loss", "loss", "params", "MACs", "latency ms", "note"):
        table.add_column(name, justify="right")
    table.add_row("12", "completed earlier", "1000", "1.2345", "1.1111", "12.22 M", "18.71 G", "2997.3", "-")
    console = make_console(file=io.StringIO(), highlight=False)
    console.print(table)
    text = console.file.getvalue()
    assert "…" not in text and "short-trial loss" in text and "completed earlier" in text
    assert max(len(line) for line in text.splitlines()) > 80  # rich's width for a file would have cut it


# ---- the report's loss-vs-latency chart ------------------------------------------------------------------------
def _titled_x_axes(figure) -> dict[str, object]:
    layout = figure.layout.to_plotly_json()
    return {name: axis for name, axis in layout.items() if name.startswith("xaxis") and axis.get("title", {}).get("text")}


@pytest.mark.parametrize("section", ["front", "front-latency"])
def test_the_cost_axis_has_ticks_and_its_title_on_a_panel_with_points(tiny_run, section):
    from sslc.dashboards import build_report
    from sslc.runs.record import open_run

    figure = build_report(open_run(tiny_run)).section(section).figure
    (name, axis), = _titled_x_axes(figure).items()
    assert axis.get("showticklabels") is not False and axis.get("visible") is not False
    used = {(trace.xaxis or "x") for trace in figure.data if len(trace.x or ())}
    assert name.replace("axis", "") in used, (name, used)  # the titled axis belongs to a panel that has points
    expected = "latency" if section == "front-latency" else "GMACs"
    assert expected in axis["title"]["text"]


def test_cost_labels_sit_above_the_plot_and_point_away_from_each_other(tiny_run):
    from sslc.dashboards import build_report
    from sslc.runs.record import open_run

    figure = build_report(open_run(tiny_run)).section("front").figure
    labels = {a.text.split()[0]: a for a in figure.layout.annotations if a.text.startswith(("budget", "teacher"))}
    assert set(labels) == {"budget", "teacher"}
    for label in labels.values():  # above the plot area: no point or baseline label can sit under them
        assert label.yref == "paper" and label.y >= 1 and label.yanchor == "bottom"
    assert (labels["budget"].xanchor, labels["teacher"].xanchor) == ("right", "left")


# ---- audio formats ---------------------------------------------------------------------------------------------
def test_mp3_is_decoded_and_undecodable_audio_is_counted_in_a_warning(tmp_path, caplog):
    from sslc.data import AUDIO_SUFFIXES, discover_audio, load_audio

    wave = (0.3 * np.sin(np.arange(32000) * 0.05)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, 16000)
    (tmp_path / "b.m4a").write_bytes(b"\0" * 64)
    (tmp_path / "c.m4a").write_bytes(b"\0" * 64)
    mp3 = "MP3" in sf.available_formats()
    if mp3:
        sf.write(tmp_path / "s.mp3", wave, 22050, format="MP3")
    assert (".mp3" in AUDIO_SUFFIXES) == mp3
    with caplog.at_level(logging.WARNING, logger="sslc.data"):
        files = discover_audio(tmp_path)
    assert [f.rel_path for f in files] == (["a.wav", "s.mp3"] if mp3 else ["a.wav"])
    if mp3:
        assert load_audio(tmp_path / "s.mp3").shape[0] == pytest.approx(32000 * 16000 / 22050, abs=1200)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "sslc.data"]
    assert "2 files .m4a" in warning and "cannot decode" in warning


def test_one_unreadable_file_is_one_file(tmp_path):
    from sslc.data import discover_audio

    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    with pytest.raises(UserError, match=r": 1 file unreadable or empty"):
        discover_audio(tmp_path)


# ---- the exported student's sample rate ------------------------------------------------------------------------
def test_a_loaded_student_says_16_khz_and_refuses_another_rate(tmp_path):
    import sslc
    from sslc.models import build_encoder, tiny_config
    from sslc.runs.student_file import save_student

    path = save_student(tmp_path / "s.pt", build_encoder(tiny_config(), seed=0), {}, "random:tiny")
    student = sslc.load_student(path)
    assert student.sample_rate == 16000
    waves = torch.randn(2, 16000)
    with torch.no_grad():
        hidden = student(waves, sample_rate=16000)
        assert all(torch.equal(a, b) for a, b in zip(hidden, student(waves)))
        with pytest.raises(ValueError, match="16000 Hz mono.*22050"):
            student(waves, sample_rate=22050)
        with pytest.raises(ValueError, match="22050"):
            student.extract_features([waves[0]], sample_rate=22050)


# ---- half-made run directories ---------------------------------------------------------------------------------
def test_a_search_failing_on_its_inputs_leaves_no_run_directory(tmp_path):
    from sslc.search.runner import SearchSettings, run_search

    for teacher, data in [("random:nope", "demo"), ("random:tiny", str(tmp_path))]:  # tmp_path: no audio in it
        with pytest.raises(UserError):
            run_search(SearchSettings(budget="50%", teacher=teacher, data=data, run_dir=tmp_path / "run", quiet=True))
        assert not (tmp_path / "run").exists()


def test_a_run_directory_without_a_study_says_so_plainly(tmp_path):
    from sslc.runs.storage import load_study

    (tmp_path / "cache").mkdir()
    with pytest.raises(UserError, match="holds no study yet.*failed before creating its study"):
        load_study(tmp_path)


# ---- an unreachable hub ----------------------------------------------------------------------------------------
def test_an_unreachable_hub_fails_fast_and_suggests_a_local_directory(monkeypatch):
    from sslc.models import teachers

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(teachers, "_hub_unreachable", lambda: "huggingface.co cannot be reached (test)")
    started = time.monotonic()
    with pytest.raises(UserError) as excinfo:
        teachers.load_teacher("sslc-tests/definitely-not-a-cached-model")
    message = str(excinfo.value)
    assert "cannot be reached" in message and "local checkpoint directory" in message and "\n" not in message
    assert time.monotonic() - started < 30


def test_the_hub_check_names_the_endpoint_it_cannot_reach(monkeypatch):
    from sslc.models.teachers import _hub_unreachable

    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # nothing listens on port 1
    reason = _hub_unreachable(timeout=2)
    assert reason and "127.0.0.1 cannot be reached" in reason


def test_readme_states_the_demo_time_and_the_students_input():
    readme = (ROOT / "README.md").read_text()
    assert "16 kHz mono" in readme and "sslc.load_teacher" in readme
    assert "1-3 minutes" not in readme
    commands = re.findall(r"bin/sslc-search [^\n]*(?:\\\n[^\n]*)*", readme)
    assert commands and all("--data" in command for command in commands), commands  # --data is required
