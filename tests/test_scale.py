"""sslc at its users' scale, at toy size on the CPU: the teacher targets built once by the driver before any trial,
resumable and under autocast within a stated tolerance; random training crops over the whole corpus; a held-out
set that does not grow with the corpus; the plan before the work; a cache too large for the disk."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import sslc.trainers.cache as target_cache
from sslc.data import SAMPLE_RATE, SegmentDataset, discover_audio, make_segments, random_crops, split_heldout
from sslc.models import PRESETS, build_encoder
from sslc.protocol import HELDOUT_SEGMENTS
from sslc.search.inputs import CORPUS_LISTING, load_audio_split
from sslc.trainers import TeacherTargets
from sslc.trainers.cache import TeacherTargetCache, layer_dir_name
from sslc.trainers.targets import BF16_TOLERANCE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_tree(root, count: int, seconds: float = 0.3, seed: int = 0):
    """A LibriSpeech-shaped tree (speaker/chapter/utt.flac) of `count` short noisy sine files."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / str(i % 7) / str(i % 3)
        folder.mkdir(parents=True, exist_ok=True)
        n = int(seconds * SAMPLE_RATE * rng.uniform(0.8, 1.2))
        t = np.arange(n) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(n)
        sf.write(str(folder / f"{i % 7}-{i % 3}-{i:04d}.flac"), wave.astype(np.float32), SAMPLE_RATE)
    return root


@pytest.fixture(scope="module")
def teacher():
    return build_encoder(PRESETS["tiny"](), seed=0).eval()


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = write_tree(tmp_path_factory.mktemp("tree"), 12, seconds=1.0)
    return SegmentDataset(random_crops(discover_audio(root), 24, 0.5, seed=0))


# ---- the held-out set -------------------------------------------------------------------------------------------
def test_heldout_count_does_not_grow_with_the_corpus(tmp_path):
    small = load_audio_split(str(write_tree(tmp_path / "small", 30)), tmp_path / "c1", 2.0, 0, 40)
    assert len(small.heldout) == 3  # a tenth of the files, below the cap
    files = discover_audio(write_tree(tmp_path / "big", 1500, seconds=0.1))
    train, heldout = split_heldout(files, max_heldout=HELDOUT_SEGMENTS)
    assert len(heldout) == HELDOUT_SEGMENTS and len(train) == 1500 - HELDOUT_SEGMENTS  # not 150
    assert len(split_heldout(files)[1]) == 150  # the old rule, without the cap
    # The capped held-out files are the first of the uncapped ones by hash: the same rule, truncated.
    assert {f.key for f in heldout} <= {f.key for f in split_heldout(files)[1]}


def test_protocol_line_says_the_real_segment_lengths(tmp_path):
    from sslc.protocol import EvaluationProtocol

    split = load_audio_split(str(write_tree(tmp_path / "t", 20, seconds=0.3)), tmp_path / "c", 2.0, 0, 8)
    protocol = EvaluationProtocol.for_heldout([1, 2], split.heldout, 2.0)
    expected = sum(split.heldout.lengths) / SAMPLE_RATE
    assert protocol.heldout_seconds == pytest.approx(expected, abs=1e-3) and expected < 1.0
    assert f"{len(split.heldout)} held-out segments ({expected:.3g} s of audio" in protocol.describe()


# ---- training data: random crops over the whole corpus, read by seeking ------------------------------------------
def test_random_crops_differ_across_steps_and_agree_across_trials(tmp_path):
    split = load_audio_split(str(write_tree(tmp_path / "t", 60, seconds=1.0)), tmp_path / "c", 0.1, 7, 400)
    crops = [(s.path, s.start) for s in split.train.segments]
    assert len(crops) == 400
    again = load_audio_split(str(tmp_path / "t"), tmp_path / "c2", 0.1, 7, 400)  # another trial, process, run
    assert crops == [(s.path, s.start) for s in again.train.segments]
    assert len(set(crops)) == len(crops)  # every step's crops are new ones
    files = {path for path, _ in crops}
    heldout = {s.path for s in split.heldout.segments}
    assert not files & heldout and len(files) == 60 - len(heldout)  # drawn over every training file
    longer = load_audio_split(str(tmp_path / "t"), tmp_path / "c", 0.1, 7, 500)
    assert [(s.path, s.start) for s in longer.train.segments[:400]] == crops  # a longer run reads these first
    # Never more crops than the corpus holds (~54 s of training audio: ~540 crops of 0.1 s).
    worth = sum(f.num_samples for f in split.files if f.path not in heldout) // 1600
    assert len(load_audio_split(str(tmp_path / "t"), tmp_path / "c", 0.1, 7, 5000).train) == worth
    other_seed = load_audio_split(str(tmp_path / "t"), tmp_path / "c", 0.1, 8, 400)
    assert [(s.path, s.start) for s in other_seed.train.segments] != crops


def test_crops_are_read_by_seeking_and_match_the_whole_file(tmp_path, monkeypatch):
    from sslc.data import load_audio, read_crop

    rng = np.random.default_rng(1)
    native = tmp_path / "native.flac"
    sf.write(str(native), (0.3 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
    np.testing.assert_array_equal(read_crop(native, 12345, 8000), load_audio(native)[12345:20345])
    t = np.arange(3 * 44100) / 44100
    other = tmp_path / "other.wav"
    sf.write(str(other), (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100, subtype="FLOAT")
    whole = load_audio(other)
    np.testing.assert_allclose(read_crop(other, 16000, 8000), whole[16000:24000], atol=2e-3)
    tail = read_crop(native, 3 * SAMPLE_RATE - 100, 400)  # past the end: zero-padded
    assert tail.shape == (400,) and not tail[100:].any()
    # Only the crop is decoded: the file is never read whole.
    reads = []
    original = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, **kw: reads.append(frames) or
                        original(self, frames, **kw))
    SegmentDataset(make_segments(discover_audio(tmp_path), 0.5, 0))[0]
    assert reads == [SAMPLE_RATE // 2]  # native.flac, 3 s long: 0.5 s of it


def test_dataloader_workers_read_ahead_in_the_samplers_order_and_resume_exactly(crops):
    from sslc.data import LengthBucketBatchSampler, collate
    from sslc.data.loader import prefetched_batches

    expected = LengthBucketBatchSampler(crops.lengths, 3, seed=5).epoch_batches(0)
    sampler = LengthBucketBatchSampler(crops.lengths, 3, seed=5)
    batches = prefetched_batches(SegmentDataset(crops.segments), sampler, workers=2, prefetch=2)
    taken = [next(batches) for _ in range(3)]
    # The workers read ahead, but the sampler's position is the trainer's: 3 batches taken.
    assert sampler.state_dict() == {"epoch": 0, "batches_yielded": 3}
    batches.close()
    for (indices, waves, lengths), want in zip(taken, expected):
        assert indices == want
        ref_waves, ref_lengths = collate([crops[i] for i in want])
        torch.testing.assert_close(waves, ref_waves) and torch.testing.assert_close(lengths, ref_lengths)
    resumed = LengthBucketBatchSampler(crops.lengths, 3, seed=5)
    resumed.load_state_dict(sampler.state_dict())
    rest = prefetched_batches(SegmentDataset(crops.segments), resumed, workers=0)
    assert [next(rest)[0] for _ in range(len(expected) - 3)] == expected[3:]
    assert next(rest)[0] == LengthBucketBatchSampler(crops.lengths, 3, seed=5).epoch_batches(1)[0]  # next epoch


def test_the_corpus_listing_is_kept_so_a_resume_does_not_rescan(tmp_path, spy):
    import sslc.data.corpus as corpus

    root = write_tree(tmp_path / "t", 20)
    scans = spy(corpus, "_discover")
    first = load_audio_split(str(root), tmp_path / "cache", 0.25, 0, 16)
    assert len(scans) == 1 and (tmp_path / "cache" / CORPUS_LISTING).is_file()
    again = load_audio_split(str(root), tmp_path / "cache", 0.25, 0, 16)
    assert len(scans) == 1  # read from the listing
    assert again.train.segments == first.train.segments and again.heldout.segments == first.heldout.segments
    load_audio_split(str(write_tree(tmp_path / "u", 5)), tmp_path / "cache", 0.25, 0, 16)  # another corpus
    assert len(scans) == 2


def test_a_manifest_with_lengths_opens_no_file_to_list_them(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "t", 5)
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.flac"))
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{root}\n" + "".join(f"{rel}\t{sf.info(str(root / rel)).frames}\n" for rel in rels))
    monkeypatch.setattr(sf, "info", lambda *a, **k: pytest.fail("a file was opened to list it"))
    assert [f.rel_path for f in discover_audio(manifest)] == rels


# ---- the target cache: built once, resumable, autocast ----------------------------------------------------------
def test_a_killed_build_resumes_at_its_first_unfinished_chunk(tmp_path, teacher, crops, monkeypatch):
    layers = [1, 2]
    reference = TeacherTargetCache.open_or_build(tmp_path / "ref", teacher, crops, layers, batch_size=4,
                                                 dtype="float32", chunk_segments=4)
    calls = []
    forward = type(teacher).forward

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the build dies in its 4th batch: chunks 1-3 (4 segments each) are done
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(teacher), "forward", dying)
    with pytest.raises(KeyboardInterrupt):
        TeacherTargetCache.open_or_build(tmp_path / "run", teacher, crops, layers, batch_size=4, dtype="float32",
                                         chunk_segments=4)
    assert not (tmp_path / "run" / layer_dir_name(1)).exists()  # nothing half-built is ever read
    done = sorted(p.name for p in (tmp_path / "run" / f".build-{layer_dir_name(1)}").glob("chunk-*"))
    assert done == ["chunk-00000", "chunk-00001", "chunk-00002"]
    calls.clear()
    monkeypatch.setattr(type(teacher), "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    resumed = TeacherTargetCache.open_or_build(tmp_path / "run", teacher, crops, layers, batch_size=4,
                                               dtype="float32", chunk_segments=4)
    assert len(calls) == len(target_cache._chunks(target_cache.equal_length_batches(crops.lengths, 4), 4)) - 3
    everything = list(range(len(crops)))
    for got, want in zip(resumed.get(everything).hidden, reference.get(everything).hidden):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not list((tmp_path / "run").glob(".build-*"))


def test_bf16_autocast_targets_within_the_stated_tolerance(tmp_path, teacher, crops):
    """The training targets a CUDA build computes under bf16 autocast, here under CPU autocast bf16, against
    float32: the relative error of every layer stays below BF16_TOLERANCE."""
    exact = TeacherTargetCache.open_or_build(tmp_path / "fp32", teacher, crops, [1, 2], dtype="float32")
    cast = TeacherTargetCache.open_or_build(tmp_path / "bf16", teacher, crops, [1, 2], dtype="float32",
                                            autocast=torch.bfloat16)
    everything = list(range(len(crops)))
    for low, high in zip(cast.get(everything).hidden, exact.get(everything).hidden):
        error = float((low - high).norm() / high.norm())
        assert 0 < error < BF16_TOLERANCE  # > 0: autocast really ran in bf16
    marker = json.loads((tmp_path / "bf16" / layer_dir_name(1) / "complete").read_text())
    assert marker["built_by"]["autocast"] == "bfloat16" and marker["built_by"]["pid"] == os.getpid()


def test_cache_key_survives_a_moved_corpus(tmp_path, teacher):
    root = write_tree(tmp_path / "a", 6)
    data = SegmentDataset(make_segments(discover_audio(root), 0.5, 0))
    targets = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=0.5)
    key = targets.cache_key(data)
    os.utime(next(root.rglob("*.flac")), (1, 1))  # a touched file (mtime) keeps the key
    assert targets.cache_key(SegmentDataset(make_segments(discover_audio(root), 0.5, 0))) == key
    moved = root.rename(tmp_path / "elsewhere")
    assert targets.cache_key(SegmentDataset(make_segments(discover_audio(moved), 0.5, 0))) == key
    first = next(moved.rglob("*.flac"))
    info = sf.info(str(first))
    sf.write(str(first), np.zeros(info.frames, np.float32), SAMPLE_RATE)  # other content, same length: other size
    assert targets.cache_key(SegmentDataset(make_segments(discover_audio(moved), 0.5, 0))) != key


# ---- the search: targets built by the driver before the trials ----------------------------------------------------
def _settings(tmp_path, name, **overrides):
    from sslc.search.runner import SearchSettings

    base = dict(teacher="random:tiny", data="demo", budget="70%", trials=2, steps=4, batch_size=2, crop_seconds=1.0,
                name=name, run_dir=tmp_path / name, latency_repeats=1, baselines=False, quiet=True, sampler="random")
    return SearchSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def driver_search(tmp_path_factory):
    from sslc.runs.storage import load_study
    from sslc.search.runner import run_search

    settings = _settings(tmp_path_factory.mktemp("search"), "drv")
    result = run_search(settings)
    return settings, result, load_study(settings.run_dir)


def test_the_driver_builds_the_targets_before_any_trial_and_no_trial_does(driver_search):
    from sslc.runs.trials import Outcome, read_trials

    settings, result, study = driver_search
    trained = [t for t in read_trials(study) if t.outcome == Outcome.COMPLETE]
    assert len(trained) == settings.trials
    markers = list((settings.run_dir / "cache" / "targets").glob("*/layer-*/complete"))
    assert len(markers) == 2 * 2  # layers 1 and 2 of the tiny teacher, training (fp16) and held-out (fp32) keys
    first_trial = min(t.datetime_start for t in study.get_trials(deepcopy=False)).timestamp()
    for marker in markers:
        built = json.loads(marker.read_text())["built_by"]
        # Built by this process (the driver; trials run in Ray's worker processes), before the first trial began,
        # and never rebuilt since (a rebuild would replace the marker).
        assert built["pid"] == os.getpid() and built["device"] == "cpu"
        assert marker.stat().st_mtime <= first_trial


# ---- the plan, and a cache that does not fit -----------------------------------------------------------------------
def _cli_args(tmp_path, name, *extra):
    return ["--teacher", "random:tiny", "--data", "demo", "--budget", "70%", "--trials", "2", "--steps", "20",
            "--batch-size", "2", "--crop-seconds", "1", "--name", name, "--run-dir", str(tmp_path / name),
            "--latency-repeats", "1", "--no-baselines", "--no-report", "--sampler", "random", *extra]


def test_plan_prints_the_work_and_creates_no_study(tmp_path, capsys):
    from sslc.cli.search import main
    from sslc.metrics import count_macs
    from sslc.models import tiny_config

    assert main(_cli_args(tmp_path, "planned", "--plan")) == 0
    out = capsys.readouterr().err  # the search prints on stderr
    assert not (tmp_path / "planned" / "study.db").exists() and not (tmp_path / "planned" / "study.txt").exists()
    assert not list((tmp_path / "planned").rglob("complete"))  # no target was computed either
    lines = [line for line in out.splitlines() if line.startswith("plan:")]
    assert "corpus 24 files" in lines[0] and "40 training crops" in lines[0]  # 20 steps x 2 crops
    macs = 40 * count_macs(tiny_config(), seconds=1.0).total  # the demo's files are all >= 1 s
    assert any(f"({format_macs_value(macs)} training" in line for line in lines), lines
    assert any("free on the disk" in line for line in lines) and any("devices: cpu" in line for line in lines)


def format_macs_value(macs: int) -> str:
    from sslc.metrics import format_macs

    return format_macs(macs)


def test_a_cache_that_cannot_fit_goes_live_or_is_refused(tmp_path, capsys):
    from sslc.cli.search import main
    from sslc.runs.storage import load_study
    from sslc.runs.trials import Outcome, read_trials

    # The tiny teacher's held-out targets: 2 segments x 49 frames x 32 dims x 4 B x 2 layers = 25 KB; the training
    # ones 40 crops x 49 x 32 x 2 B x 2 = 251 KB. A 100 KB limit holds the first, not the second: live training.
    assert main(_cli_args(tmp_path, "live", "--cache-limit", "100KB")) == 0
    out = capsys.readouterr().err
    assert "training targets computed live on each trial's device" in out
    trials = read_trials(load_study(tmp_path / "live"))
    assert sum(t.outcome == Outcome.COMPLETE for t in trials) == 2
    stored = [json.loads(p.read_text())["segments"] for p in (tmp_path / "live").rglob("layer-*/complete")]
    assert stored == [2, 2]  # the held-out targets only, both layers

    assert main(_cli_args(tmp_path, "refused", "--cache-limit", "10KB")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert errors == [err[-1]] and "held-out targets alone need" in err[-1] and "--cache-limit" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "refused" / "study.db").exists()


def test_a_study_made_under_the_old_heldout_rule_is_not_resumed(driver_search):
    from dataclasses import replace

    from sslc.errors import UserError
    from sslc.protocol import HELDOUT_RULE
    from sslc.search.runner import run_search

    settings, _, study = driver_search
    current = study.user_attrs["protocol"]
    old = {k: v for k, v in current.items() if k not in ("heldout_seconds", "heldout_rule")}
    study.set_user_attr("protocol", {**old, "version": 1})
    try:
        with pytest.raises(UserError, match="protocol version 1, held-out set: 10% of the files") as refused:
            run_search(replace(settings, trials=3))
        assert HELDOUT_RULE in str(refused.value)
    finally:
        study.set_user_attr("protocol", current)


def test_the_gpu_projection_from_timed_steps(tmp_path, monkeypatch):
    """Where CUDA is present (mocked here: a device name, its memory and the timed step), the plan projects the
    trial's wall time and the GPU-hours from the measured step; the measurement itself runs on any device."""
    from types import SimpleNamespace

    import sslc.search.plan as plan
    from sslc.budget import Budget
    from sslc.metrics import count_macs
    from sslc.search.inputs import prepare_inputs
    from sslc.trainers import TrainerConfig

    context = prepare_inputs("random:tiny", "demo", tmp_path / "run", 1.0, 0, 8)
    trainer = TrainerConfig(steps=4, batch_size=2, crop_seconds=1.0, targets=[1, 2], device="cpu")
    teacher_macs = count_macs(context.teacher.config).total
    budget = Budget(int(0.7 * teacher_macs), 10.0)
    seconds = plan.time_training_steps(context, trainer, budget, device="cpu")
    assert 0 < seconds < 60
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name="Fake H200", total_memory=141 * 1024**3))
    result = plan.plan_search(context, trainer, budget, 0.7, [1, 2], trials=50, measure=lambda *a: 0.5)
    assert result.devices == ["cuda:0 Fake H200 (141 GiB)", "cuda:1 Fake H200 (141 GiB)"]
    # 4 steps + (2 held-out segments + 8 head-fit batches x 2 crops) / (3 forwards x 2 crops) = 7 step-times.
    per_trial = 0.5 * (4 + (len(context.data.heldout) + 16) / 6)
    line = result.lines[-1]
    assert f"{per_trial:.0f} s a trial" in line and f"50 trials {50 * per_trial / 3600:.2f} GPU-hours" in line
    assert f"{50 * per_trial / 2 / 3600:.2f} h of wall time on 2 GPU(s)" in line
