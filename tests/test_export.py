"""Exported students: round trip to identical hidden states, light loading, provenance, int8, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import sslc
from sslc.cli.export import main as export_main
from sslc.errors import UserError
from sslc.models import EncoderConfig, build_encoder, tiny_config
from sslc.runs.export import export_student
from sslc.runs.record import open_run
from sslc.runs.student_file import load_student, save_student
from sslc.runs.trials import front_trials
from sslc.search.retrain import retrain


@pytest.fixture(scope="module")
def run(tiny_run):
    return open_run(tiny_run)


def rebuilt(weights_file):
    """The reference: the encoder built directly from a saved architecture + state dict."""
    payload = torch.load(weights_file, weights_only=True)
    encoder = build_encoder(EncoderConfig.from_dict(payload["architecture"]))
    encoder.load_state_dict(payload["state_dict"])
    return encoder.eval()


def batch():
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(2, 16000, generator=generator) * 0.1
    waves[1, 11000:] = 0.0  # the second waveform is shorter, zero-padded on the right
    return waves, torch.tensor([16000, 11000])


def test_short_trial_export_round_trip(tiny_run, run, tmp_path):
    trial = front_trials(run.study)[0]
    info = export_student(tiny_run, trial.number, tmp_path / "student.pt")
    assert info["provenance"]["weights"] == "short-trial"
    student = sslc.load_student(tmp_path / "student.pt")
    reference = rebuilt(tiny_run / "trials" / str(trial.number) / "student.pt")
    waves, lengths = batch()
    with torch.no_grad():
        expected = reference(waves, lengths)
        hidden = student(waves, lengths)
        as_list = student([waves[0], waves[1, :11000].numpy()])  # s3prl style: a list of 1-D waveforms
        features = student.extract_features(waves, lengths)
    assert len(hidden) == len(expected.hidden_states) == len(trial.user_attrs["config"]["layers"]) + 1
    assert all(torch.equal(a, b) for a, b in zip(hidden, expected.hidden_states))
    assert all(torch.equal(a, b) for a, b in zip(as_list, expected.hidden_states))
    assert torch.equal(features["last_hidden_state"], expected.last_hidden_state)
    assert torch.equal(features["frame_lengths"], expected.frame_lengths)
    assert student.get_downsample_rates("hidden_states") == 320

    meta = student.metadata
    assert meta["teacher"] == run.study.user_attrs["teacher"]["spec"] == "random:tiny"
    assert meta["compression"] == trial.user_attrs["config"]
    assert meta["provenance"]["trial"] == trial.number and meta["provenance"]["run"] == run.name
    metrics = meta["metrics"]
    for key in ("macs", "params", "latency_ms", "heldout_loss"):
        assert metrics[key] == trial.user_attrs[key]
    assert metrics["gmacs"] == pytest.approx(trial.values[1])


LOAD_SCRIPT = """
import json, sys, torch
import sslc
torch.set_num_threads(int(sys.argv[5]))  # as in the parent: thread count changes float summation order
student = sslc.load_student(sys.argv[1])
with torch.no_grad():
    hidden = student(torch.load(sys.argv[2]), torch.load(sys.argv[3]))
torch.save(hidden, sys.argv[4])
heavy = ["optuna", "ray", "plotly", "sslc.search", "sslc.runs.record", "sslc.runs.storage", "sslc.trainers", "sslc.data",
         "sslc.dashboards"]
print(json.dumps([name for name in heavy if name in sys.modules]))
"""


def test_load_student_needs_only_torch_and_sslc_models(tiny_run, run, tmp_path):
    trial = front_trials(run.study)[-1]
    export_student(tiny_run, trial.number, tmp_path / "student.pt")
    waves, lengths = batch()
    torch.save(waves, tmp_path / "waves.pt")
    torch.save(lengths, tmp_path / "lengths.pt")
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "student.pt"), str(tmp_path / "waves.pt"),
         str(tmp_path / "lengths.pt"), str(tmp_path / "hidden.pt"), str(torch.get_num_threads())],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    with torch.no_grad():
        expected = rebuilt(tiny_run / "trials" / str(trial.number) / "student.pt")(waves, lengths).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(torch.load(tmp_path / "hidden.pt"), expected))


def test_retrained_weights_are_exported_when_present(copy_run, tmp_path):
    run_dir = copy_run("export")
    trial = front_trials(open_run(run_dir).study)[0]
    [result] = retrain(run_dir, numbers=[trial.number], steps=6, progress=False, say=lambda line: None)

    info = export_student(run_dir, trial.number, tmp_path / "retrained.pt")
    assert info["provenance"]["weights"] == "retrained"
    student = load_student(tmp_path / "retrained.pt")
    metrics = student.metadata["metrics"]
    assert metrics["heldout_loss"] == metrics["retrained_heldout_loss"] == result["heldout_loss"]
    assert metrics["short_trial_heldout_loss"] == trial.user_attrs["heldout_loss"]
    assert metrics["retrained_steps"] == 6
    waves, lengths = batch()
    with torch.no_grad():
        expected = rebuilt(run_dir / "retrain" / str(trial.number) / "student.pt")(waves, lengths).hidden_states
        hidden = student(waves, lengths)
    assert all(torch.equal(a, b) for a, b in zip(hidden, expected))

    # The short-trial weights can still be asked for, and they differ from the retrained ones.
    export_student(run_dir, trial.number, tmp_path / "short.pt", source="short-trial")
    short = load_student(tmp_path / "short.pt")
    assert short.metadata["provenance"]["weights"] == "short-trial"
    with torch.no_grad():
        assert not torch.equal(short(waves, lengths)[-1], hidden[-1])


def test_int8_students_are_quantized_again_when_loaded(tmp_path):
    model = build_encoder(tiny_config(), seed=0).eval()
    save_student(tmp_path / "int8.pt", model, {"quantize": "int8"}, "random:tiny")
    quantized = load_student(tmp_path / "int8.pt")
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert any(isinstance(m, dynamic) for m in quantized.modules())
    float_again = load_student(tmp_path / "int8.pt", quantize=False)
    assert not any(isinstance(m, dynamic) for m in float_again.modules())
    waves, lengths = batch()
    with torch.no_grad():
        reference = model(waves, lengths).last_hidden_state
        assert torch.equal(float_again.extract_features(waves, lengths)["last_hidden_state"], reference)
        int8 = quantized.extract_features(waves, lengths)["last_hidden_state"]
    assert not torch.equal(int8, reference)
    assert (int8 - reference).norm() / reference.norm() < 0.1  # int8 weights: close, not equal


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_student(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError, match="not a sslc student file"):
        load_student(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a sslc student file"):
        load_student(tmp_path / "other.pt")
    model = build_encoder(tiny_config(), seed=0)
    save_student(tmp_path / "good.pt", model, {}, "random:tiny")
    payload = torch.load(tmp_path / "good.pt", weights_only=True)
    payload["architecture"]["embed_dim"] = 32  # the weights no longer fit the architecture
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="does not match its architecture"):
        load_student(tmp_path / "mismatch.pt")
    payload = torch.load(tmp_path / "good.pt", weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(UserError, match="version 99"):
        load_student(tmp_path / "future.pt")


def test_cli_exports_and_rejects_bad_trials(tiny_run, run, tmp_path, capsys):
    trial = front_trials(run.study)[0].number
    out = tmp_path / "cli.pt"
    assert export_main([str(tiny_run), "--trial", str(trial), "-o", str(out)]) == 0
    assert f"wrote {out}: trial {trial}, short-trial weights" in capsys.readouterr().out
    assert load_student(out).metadata["provenance"]["trial"] == trial

    infeasible = next(t.number for t in run.study.get_trials() if t.user_attrs.get("infeasible"))
    cases = [
        ([str(tiny_run), "--trial", "999", "-o", str(out)], "has no trial 999"),
        ([str(tiny_run), "--trial", str(infeasible), "-o", str(out)], "was never trained"),
        ([str(tiny_run), "--trial", str(trial), "--weights", "retrained", "-o", str(out)], "not been retrained"),
        ([str(tmp_path / "missing"), "--trial", "0"], "does not exist"),
        ([str(tiny_run)], "--trial"),
    ]
    for argv, message in cases:
        assert export_main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (argv, lines)
