"""Tests for sslc-info: parameters, MACs by part and latency of a teacher, as a table or JSON."""

from __future__ import annotations

import json

import pytest

from sslc.cli.info import main
from sslc.metrics import count_macs, count_params, format_macs, format_params
from sslc.models.teachers import describe_teacher, load_teacher


@pytest.fixture(scope="module")
def tiny_teacher():
    return load_teacher("random:tiny")


def test_tiny_table_shows_params_macs_and_random_label(capsys, tiny_teacher):
    assert main(["--teacher", "random:tiny", "--no-latency"]) == 0
    out = capsys.readouterr().out
    macs = count_macs(tiny_teacher.config)
    assert format_params(count_params(tiny_teacher)) in out
    assert format_macs(macs.total) in out
    assert format_macs(macs.cnn) in out and format_macs(macs.ffn) in out
    assert describe_teacher(tiny_teacher) in out
    assert "random weights" in out
    assert "not measured" in out


def test_tiny_json_has_exact_counts(capsys, tiny_teacher):
    assert main(["--teacher", "random:tiny", "--no-latency", "--json", "--seconds", "2.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == count_params(tiny_teacher)
    assert report["macs"] == count_macs(tiny_teacher.config, seconds=2.5).as_dict()
    assert report["seconds"] == 2.5 and report["num_samples"] == 40000
    assert report["frames"] == tiny_teacher.config.frames_for(40000)
    assert report["latency"] is None
    assert "random weights" in report["description"]


def test_latency_is_measured_unless_disabled(capsys):
    assert main(["--teacher", "random:tiny", "--seconds", "0.5", "--latency-repeats", "2", "--json"]) == 0
    latency = json.loads(capsys.readouterr().out)["latency"]
    assert latency["repeats"] == 2 and latency["device"] == "cpu" and latency["seconds"] == 0.5
    assert latency["min_ms"] <= latency["median_ms"] <= latency["max_ms"]
    assert main(["--teacher", "random:tiny", "--seconds", "0.5", "--latency-repeats", "2"]) == 0
    assert " ms" in capsys.readouterr().out


def test_latency_says_how_it_was_measured(capsys):
    """Threads, device, repeats, warm-up and the machine's load, in the JSON and in words under the table."""
    import os

    import torch

    threads = torch.get_num_threads()
    assert main(["--teacher", "random:tiny", "--seconds", "0.5", "--latency-repeats", "2", "--threads", "1",
                 "--json"]) == 0
    latency = json.loads(capsys.readouterr().out)["latency"]
    assert latency["torch_threads"] == 1 and latency["warmup"] == 2 and latency["cpus"] == os.cpu_count()
    assert latency["load_average"] == pytest.approx(os.getloadavg()[0], abs=max(2.0, os.getloadavg()[0]))
    assert torch.get_num_threads() == threads  # restored afterwards
    assert main(["--teacher", "random:tiny", "--seconds", "0.5", "--latency-repeats", "2", "--threads", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    from sslc.metrics.latency import device_name

    assert (f"latency measured as: median of 2 after 2 warm-up, 1 x 0.5 s on cpu ({' '.join(device_name('cpu').split())}), "
            "1 torch thread(s), load ") in out
    assert "--cpus-per-trial threads while other trials run" in out
    assert main(["--teacher", "random:tiny", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --threads must be >= 1, got 0"


def test_hubert_base_reference_numbers(capsys):
    assert main(["--teacher", "random:hubert-base", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "74.07" in out  # GMACs at 10 s
    assert "MACs, SUPERB convention" in out and "1.67T" in out.replace(" ", "")  # 1665.5 G (published: 1669 G)
    assert "94.37" in out  # M parameters
    assert "random weights" in out


@pytest.mark.parametrize("spec", ["random:no-such-preset", "no-such-teacher:at-all"])
def test_bad_teacher_spec_is_a_one_line_error(capsys, spec):
    assert main(["--teacher", spec, "--no-latency"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert captured.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["--seconds", "-1"],
        ["--seconds", "0"],
        ["--seconds", "nan"],
        ["--seconds", "0.001"],  # shorter than the conv front end's receptive field: no frames
        ["--latency-repeats", "0"],
        ["--seconds", "ten"],
    ],
)
def test_bad_lengths_and_repeats_exit_2(capsys, argv):
    assert main(["--teacher", "random:tiny", "--no-latency", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_missing_teacher_is_a_usage_error(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("error:")
