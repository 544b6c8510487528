"""sslc-probe: the probe learns (tones), only the head trains, results land on the run, bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sslc.models import build_encoder
from sslc.models.builders import tiny_config
from sslc.probes import (
    ProbeSettings,
    WeightedSum,
    edit_distance,
    normalize_states,
    run_probe,
    train_and_heldout,
)
from sslc.probes.results import encode_fn
from sslc.runs.student_file import ExportedStudent
from sslc.runs.trials import front_trials

SR = 16000
TONES = {"a": 300.0, "b": 1100.0, "c": 3200.0}  # units (ctc) or classes (classify): far apart in frequency


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tone(freq: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (rng.uniform(0.3, 0.6) * np.sin(2 * np.pi * freq * rng.uniform(0.97, 1.03) * t + rng.uniform(0, 6))
            ).astype(np.float32)


def _write(path: Path, wave: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave + noise * rng.standard_normal(len(wave)).astype(np.float32), SR)


def make_sequences(root: Path, count: int, seed: int) -> None:
    """Utterances of 2-4 tones (0.3 s each, 0.1 s of silence between), labelled by a .phn sidecar."""
    rng = np.random.default_rng(seed)
    gap = np.zeros(int(0.1 * SR), np.float32)
    for i in range(count):
        units = list(rng.choice(list(TONES), size=rng.integers(2, 5)))
        wave = np.concatenate([gap] + [np.concatenate([_tone(TONES[u], 0.3, rng), gap]) for u in units])
        # Clean silence between tones: the probe layer-normalises each frame, which would blow the faint noise of a
        # silent frame up into a loud random pattern (real encoders' frames are never that flat).
        _write(root / f"utt{i:03d}.wav", wave, rng, noise=0.0)
        (root / f"utt{i:03d}.phn").write_text(" ".join(units) + "\n")


def make_classes(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, freq in TONES.items():
        for i in range(per_class):
            _write(root / name / f"{name}{i:02d}.wav", _tone(freq, rng.uniform(0.3, 0.6), rng), rng)


def tiny_encoder(seed: int = 0):
    encoder = build_encoder(tiny_config(), seed=seed).eval().requires_grad_(False)
    return ExportedStudent(encoder, encoder.config)


def constant_predictor_floor(references: list[tuple[str, ...]]) -> float:
    """A lower bound on the error rate of any constant output (one sequence for every input).

    An edit operation changes the count of at most two unit types by one each, so ED(s, r) >=
    sum_u |c_s(u) - c_r(u)| / 2; summed over references this is smallest when each c_s(u) is the median count.
    """
    counts = [Counter(r) for r in references]
    units = {u for r in references for u in r}
    floor = sum(sum(abs(np.median([c[u] for c in counts]) - c[u]) for c in counts) for u in units) / 2
    return floor / sum(len(r) for r in references)


def spectral_encode(wave: torch.Tensor) -> list[torch.Tensor]:
    """A fixed "encoder" whose frames are known to carry the tones: [silence, log spectrum] on the 320x grid.

    The probe's learning is tested on it: a random encoder's frames need not hold the information, and then no
    probe could learn. (A per-file noise state would let the head memorise the training files instead.)
    """
    power = torch.stft(wave[0], n_fft=400, hop_length=320, window=torch.hann_window(400), center=False,
                       return_complex=True).abs().T[None] ** 2  # [1, T, 201]
    # 40 bands of 5 bins: fewer, steadier dimensions (201 bins of mostly noise floor let the head memorise files)
    # log(1 + power): silence and faint leakage sit near 0 and stay flat, and the probe's per-frame LayerNorm
    # maps a flat frame to zero instead of blowing faint differences up into a loud pattern.
    spectrum = torch.nn.functional.avg_pool1d(power, 5).log1p()
    return [torch.zeros_like(spectrum), spectrum]


def test_ctc_probe_beats_any_constant_predictor(tmp_path):
    make_sequences(tmp_path / "train", 60, seed=1)
    make_sequences(tmp_path / "heldout", 16, seed=2)
    train, heldout = train_and_heldout(tmp_path / "train", "ctc", "tokens", tmp_path / "heldout")
    outcome = run_probe(spectral_encode, 2, 40, train, heldout, ProbeSettings("ctc", epochs=60, lr=2e-2, batch_size=2))
    floor = constant_predictor_floor([e.label for e in heldout])
    assert floor > 0.2  # the bound is meaningful for this data
    assert outcome.metric < 0.8 * floor, (outcome.metric, floor)


def test_classify_probe_beats_chance_by_far(tmp_path):
    make_classes(tmp_path / "data", 10, seed=3)
    train, heldout = train_and_heldout(tmp_path / "data", "classify")
    assert heldout and not {e.audio.path for e in train} & {e.audio.path for e in heldout}
    outcome = run_probe(spectral_encode, 2, 40, train, heldout, ProbeSettings("classify", epochs=20, lr=1e-2))
    assert outcome.metric >= 0.9  # chance: 1/3


def test_weights_are_a_softmax_and_the_encoder_is_untouched(tmp_path):
    make_classes(tmp_path / "data", 4, seed=4)
    extractor = tiny_encoder()
    before = {k: v.clone() for k, v in extractor.encoder.state_dict().items()}
    train, heldout = train_and_heldout(tmp_path / "data", "classify")
    outcome = run_probe(encode_fn(extractor), 3, 64, train, heldout, ProbeSettings("classify", epochs=3, lr=0.1))
    after = extractor.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bitwise
    weights = torch.tensor(outcome.layer_weights)
    assert torch.all(weights > 0) and abs(float(weights.sum()) - 1) < 1e-3
    assert not torch.allclose(weights, torch.full((3,), 1 / 3))  # they did train

    mix = WeightedSum(3)
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    expected = torch.exp(torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(mix.weights, expected / expected.sum())
    states = torch.randn(3, 2, 5, 8) * torch.tensor([1.0, 10.0, 1000.0])[:, None, None, None]
    normed = (states - states.mean(-1, keepdim=True)) / torch.sqrt(states.var(-1, unbiased=False, keepdim=True) + 1e-5)
    reference = sum(w * normed[i] for i, w in enumerate(mix.weights))
    assert torch.allclose(mix(normalize_states(states)), reference, atol=1e-5)


def test_edit_distance_matches_known_values():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1
    assert edit_distance("flaw", "lawn") == 2


def test_speakers_are_never_split(tmp_path):
    rng = np.random.default_rng(5)
    for speaker in ("19", "26", "27", "32", "39"):
        chapter = tmp_path / speaker / "100"
        lines = []
        for utt in range(3):
            stem = f"{speaker}-100-{utt:04d}"
            _write(chapter / f"{stem}.flac", _tone(500, 0.2, rng), rng)
            lines.append(f"{stem} HELLO WORLD")
        (chapter / f"{speaker}-100.trans.txt").write_text("\n".join(lines) + "\n")
    train, heldout = train_and_heldout(tmp_path, "ctc", "chars")
    assert heldout and train
    assert not {e.group for e in train} & {e.group for e in heldout}
    assert train[0].label == tuple("hello world")


def test_the_split_says_whether_speakers_are_held_out(tmp_path):
    from sslc.probes.labels import describe_split

    rng = np.random.default_rng(3)
    for speaker in ("19", "26", "27"):  # LibriSpeech layout: the speakers are named
        chapter = tmp_path / "libri" / speaker / "100"
        _write(chapter / f"{speaker}-100-0000.flac", _tone(500, 0.2, rng), rng)
        (chapter / f"{speaker}-100.trans.txt").write_text(f"{speaker}-100-0000 HI\n")
    train, heldout = train_and_heldout(tmp_path / "libri", "ctc", "chars")
    assert describe_split(train, heldout, None) == (
        f"{len(train)} training and {len(heldout)} held-out file(s), held out: 1 whole speaker(s), none of them in "
        "training")
    make_sequences(tmp_path / "flat", 2, seed=4)  # no speaker in the names: the split is by file
    train, heldout = train_and_heldout(tmp_path / "flat", "ctc", "tokens")
    said = describe_split(train, heldout, None)
    assert said.startswith("1 training and 1 held-out file(s), held out by file") and "2 file(s)" in said
    assert "may share its speakers" in said
    assert "--heldout elsewhere (its layout names no speakers" in describe_split(train, heldout, "elsewhere")
    libri_train, libri_heldout = train_and_heldout(tmp_path / "libri", "ctc", "chars")
    assert describe_split(libri_train, libri_train[:1], "dev").endswith("dev, 1 of whose speakers are also in training")
    assert describe_split(libri_train, libri_heldout, "dev").endswith("none of whose 1 speaker(s) is in training")


def test_cli_says_how_it_held_out_and_compares_with_no_model_but_a_teacher(tmp_path):
    """The corpus of the issue: 4 files, 2 labelled, no speakers named. The table says the split is by file, and
    with one model there is no "vs" column (it compared the model with itself: 1.00x)."""
    make_sequences(tmp_path / "data", 2, seed=9)
    for extra in ("u1", "u2"):
        _write(tmp_path / "data" / f"{extra}.wav", np.zeros(SR // 4, np.float32), np.random.default_rng(1))
    out = tmp_path / "probe.json"
    result = _cli("random:tiny", "--task", "ctc", "--units", "tokens", "--data", tmp_path / "data", "--epochs", "1",
                  "-o", out)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # the table's caption may wrap
    assert "1 training and 1 held-out file(s), held out by file" in text and "may share its speakers" in text
    assert "vs " not in text and "1.00x" not in text
    saved = json.loads(out.read_text())
    assert "held out by file" in saved["split"] and "relative_to_reference" not in saved["results"][0]


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "sslc.cli.probe", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_inputs_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(6)
    for i in range(3):  # audio in one class folder, no label sidecars
        _write(tmp_path / "one" / "only" / f"x{i}.wav", _tone(500, 0.3, rng), rng)
    _write(tmp_path / "flat" / "x.wav", _tone(500, 0.3, rng), rng)
    base = ["random:tiny", "--epochs", "1"]
    _one_line_error(_cli(*base, "--task", "asr", "--data", tmp_path / "one"), "unknown task")
    _one_line_error(_cli(*base, "--task", "ctc", "--data", tmp_path / "missing"), "not a directory")
    _one_line_error(_cli(*base, "--task", "ctc", "--data", tmp_path / "one"), "no audio", "label")
    _one_line_error(_cli(*base, "--task", "classify", "--data", tmp_path / "one"), "one class")
    _one_line_error(_cli(*base, "--task", "classify", "--data", tmp_path / "flat"), "class folder")
    _one_line_error(_cli(*base, "--task", "ctc", "--units", "words", "--data", tmp_path / "one"), "unknown units")


def test_cli_skips_unlabelled_files_and_records_on_the_run(tmp_path, copy_run):
    from sslc.dashboards import build_report
    from sslc.runs.record import open_run

    make_sequences(tmp_path / "data", 10, seed=7)
    make_sequences(tmp_path / "heldout", 4, seed=8)
    for extra in ("u1", "u2"):  # audio without labels: skipped with one warning
        _write(tmp_path / "data" / f"{extra}.wav", np.zeros(SR // 4, np.float32), np.random.default_rng(1))
    run_dir = copy_run("probe")
    trial = front_trials(open_run(run_dir).study)[0].number
    out = tmp_path / "probe.json"
    result = _cli(f"{run_dir}:{trial}", "random:tiny", "--task", "ctc", "--units", "tokens", "--data",
                  tmp_path / "data", "--heldout", tmp_path / "heldout", "--epochs", "2", "-o", out)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and "2 of 12" in warnings[0]
    rows = json.loads(out.read_text())["results"]
    assert [r["kind"] for r in rows] == ["trial", "teacher"]
    assert rows[1]["relative_to_reference"] == 1.0 and rows[0]["reference"] == "random:tiny"
    assert rows[0]["relative_to_reference"] == pytest.approx(rows[0]["metric"] / rows[1]["metric"])
    table = [line for line in result.stdout.splitlines() if "random:tiny" in line and "│" in line]
    assert "vs random:tiny" in result.stdout and table and table[-1].rstrip(" │").endswith("reference")
    assert rows[0]["macs"] < rows[1]["macs"] and rows[0]["heldout_files"] == 4
    run = open_run(run_dir)
    recorded = run.study.user_attrs[f"probe:ctc:{trial}"]
    assert recorded["metric"] == rows[0]["metric"]
    section = build_report(run).section("probes")
    assert section is not None and list(section.figure.data[0].x) == [rows[0]["macs"] / 1e9]
