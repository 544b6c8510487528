"""Tests for sslc.data: decoding, discovery, splitting, segments, batching and the demo corpus."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sslc.data import (
    DEMO_NOTE,
    SAMPLE_RATE,
    AudioFile,
    AudioReadError,
    LengthBucketBatchSampler,
    Segment,
    SegmentDataset,
    collate,
    discover_audio,
    iter_batches,
    load_audio,
    make_demo_corpus,
    make_segments,
    resolve_data,
    split_heldout,
)
from sslc.errors import UserError


def sine(freq: float, sr: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr)
    return path


def make_bad_files(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "empty.wav").write_bytes(b"")
    sf.write(str(root / "zero_frames.wav"), np.zeros((0, 1), np.float32), SAMPLE_RATE)


# --- audio -----------------------------------------------------------------------------------------


def test_stereo_is_mixed_to_channel_mean(tmp_path):
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.5, 0.5, size=(SAMPLE_RATE, 2)).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), stereo, SAMPLE_RATE, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    np.testing.assert_allclose(wave, stereo.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("sr", [8000, 22050])
def test_resampling_keeps_length_and_frequency(tmp_path, sr):
    data = sine(440.0, sr)
    wave = load_audio(write(tmp_path / f"sine_{sr}.wav", data, sr))
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - round(len(data) * SAMPLE_RATE / sr)) <= 1
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(wave)
    assert abs(peak_hz - 440.0) <= 2.0


def test_load_audio_errors(tmp_path):
    make_bad_files(tmp_path)
    for name, reason in [
        ("corrupt.wav", "not readable"),
        ("empty.wav", "empty"),
        ("zero_frames.wav", "no samples"),
    ]:
        with pytest.raises(AudioReadError, match=reason):
            load_audio(tmp_path / name)
    with pytest.raises(AudioReadError):
        load_audio(tmp_path / "missing.wav")


# --- corpus ----------------------------------------------------------------------------------------


def test_discover_skips_bad_files_with_one_warning(tmp_path, caplog):
    good = [
        write(tmp_path / "a.wav", sine(200, SAMPLE_RATE)),
        write(tmp_path / "sub" / "b.flac", sine(300, 8000), 8000),
    ]
    make_bad_files(tmp_path / "bad")
    (tmp_path / "notes.txt").write_text("not audio")
    with caplog.at_level(logging.WARNING, logger="sslc.data"):
        files = discover_audio(tmp_path)
    assert [f.path for f in files] == good
    assert [f.rel_path for f in files] == ["a.wav", "sub/b.flac"]
    assert [f.num_samples for f in files] == [SAMPLE_RATE, SAMPLE_RATE]
    warnings = [r for r in caplog.records if r.name == "sslc.data" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3" in warnings[0].getMessage()
    assert "bad/corrupt.wav" in warnings[0].getMessage()


def test_discover_user_errors(tmp_path):
    make_bad_files(tmp_path / "bad")
    with pytest.raises(UserError, match="no usable audio.*3 files"):
        discover_audio(tmp_path / "bad")
    with pytest.raises(UserError, match="does not exist"):
        discover_audio(tmp_path / "nowhere")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no audio files"):
        discover_audio(tmp_path / "empty_dir")


def test_tsv_manifest(tmp_path):
    audio = tmp_path / "audio"
    write(audio / "x" / "one.wav", sine(200, SAMPLE_RATE))
    write(audio / "two.wav", sine(200, 22050, seconds=0.5), 22050)
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{audio}\nx/one.wav\t16000\ntwo.wav\t11025\nmissing.wav\t100\n")
    files = discover_audio(manifest)
    assert [f.rel_path for f in files] == ["x/one.wav", "two.wav"]
    assert files[0].path == audio / "x" / "one.wav"
    # The manifest's counts are the lengths (at 16 kHz, fairseq's convention): no file is opened to list them.
    assert [f.num_samples for f in files] == [16000, 11025]

    # A relative root is resolved against the manifest's own directory.
    relative = tmp_path / "rel.tsv"
    relative.write_text("audio\ntwo.wav\t11025\n")
    assert [f.path for f in discover_audio(relative)] == [audio / "two.wav"]

    broken = tmp_path / "broken.tsv"
    broken.write_text(f"{tmp_path / 'no_root'}\na.wav\t1\n")
    with pytest.raises(UserError, match="root directory"):
        discover_audio(broken)


def test_split_heldout_is_stable(caplog):
    files = [
        AudioFile(Path(f"/corpus/spk{i % 3}/utt{i}.wav"), 16000, f"spk{i % 3}/utt{i}.wav") for i in range(40)
    ]
    train, heldout = split_heldout(files, fraction=0.1)
    assert len(heldout) == 4 and len(train) == 36
    assert {f.rel_path for f in train}.isdisjoint(f.rel_path for f in heldout)
    shuffled = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    assert split_heldout(shuffled, fraction=0.1) == (train, heldout)
    # The same relative paths under another root (another machine) split the same way.
    moved = [AudioFile(Path("/elsewhere") / f.rel_path, f.num_samples, f.rel_path) for f in files]
    assert [f.rel_path for f in split_heldout(moved, fraction=0.1)[1]] == [f.rel_path for f in heldout]

    two_train, two_heldout = split_heldout(files[:2], fraction=0.0)
    assert len(two_train) == 1 and len(two_heldout) == 1

    with caplog.at_level(logging.WARNING, logger="sslc.data"):
        assert split_heldout(files[:1]) == ([files[0]], [files[0]])
    assert any("both" in r.getMessage() for r in caplog.records)


# --- segments --------------------------------------------------------------------------------------


def test_make_segments_deterministic_and_bounded():
    lengths = [8000, 16000, 40000, 100000, 31999, 32000, 32001]
    files = [AudioFile(Path(f"/c/{i}.wav"), n, f"{i}.wav") for i, n in enumerate(lengths)]
    segments = make_segments(files, max_seconds=2.0, seed=3)
    assert segments == make_segments(files, max_seconds=2.0, seed=3)
    # A file's crop does not depend on the other files or their order.
    assert make_segments(files[::-1], max_seconds=2.0, seed=3) == segments[::-1]
    for f, s in zip(files, segments):
        assert s.path == f.path
        assert s.num_samples <= 2 * SAMPLE_RATE
        assert 0 <= s.start and s.start + s.num_samples <= f.num_samples
        if f.num_samples <= 2 * SAMPLE_RATE:
            assert (s.start, s.num_samples) == (0, f.num_samples)
    starts = [s.start for s in make_segments(files, 2.0, seed=4)]
    assert starts != [s.start for s in segments]


def test_segment_dataset_crops_caches_and_reports_bad_files(tmp_path):
    data = np.random.default_rng(0).uniform(-0.5, 0.5, SAMPLE_RATE).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(str(path), data, SAMPLE_RATE, subtype="FLOAT")
    other = write(tmp_path / "b.wav", sine(100, SAMPLE_RATE))
    ds = SegmentDataset([Segment(path, 1000, 4000), Segment(other, 0, 16000)], cache_bytes=20000)
    assert len(ds) == 2 and ds.lengths == [4000, 16000]
    first = ds[0]
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, data[1000:5000])
    first[:] = 0  # callers' edits must not leak into the cache
    np.testing.assert_array_equal(ds[0], data[1000:5000])
    assert len(ds[1]) == 16000  # 64 kB: over the cache limit, so never cached
    assert ds._cached_bytes <= 20000

    other.write_bytes(b"garbage, not a wav file")
    with pytest.raises(AudioReadError):
        SegmentDataset([Segment(other, 0, 16000)])[0]


def test_collate_pads_right():
    waves, lengths = collate([np.ones(3, np.float32), np.full(5, 2.0, np.float32)])
    assert waves.dtype == torch.float32 and waves.shape == (2, 5)
    assert lengths.dtype == torch.long and lengths.tolist() == [3, 5]
    assert waves[0].tolist() == [1, 1, 1, 0, 0] and waves[1].tolist() == [2] * 5


# --- sampler ---------------------------------------------------------------------------------------


LENGTHS = np.random.default_rng(0).integers(8000, 48000, size=203).tolist()


def padding(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_sampler_covers_every_index_once_with_little_padding():
    sampler = LengthBucketBatchSampler(LENGTHS, batch_size=8, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 26
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert all(len(b) <= 8 for b in batches)
    perm = np.random.default_rng(1).permutation(len(LENGTHS)).tolist()
    random_batches = [perm[i : i + 8] for i in range(0, len(perm), 8)]
    assert padding(batches, LENGTHS) < 0.25 * padding(random_batches, LENGTHS)

    # Iterating again gives the next epoch: same coverage, different order.
    assert sampler.epoch == 1
    second = list(sampler)
    assert second != batches and sorted(i for b in second for i in b) == list(range(len(LENGTHS)))
    # Deterministic given seed and epoch.
    again = LengthBucketBatchSampler(LENGTHS, batch_size=8, seed=0)
    again.set_epoch(1)
    assert list(again) == second

    dropped = list(LengthBucketBatchSampler(LENGTHS, batch_size=8, seed=0, drop_last=True))
    assert len(dropped) == 25 and all(len(b) == 8 for b in dropped)
    ordered = list(LengthBucketBatchSampler(LENGTHS, batch_size=8, seed=0, shuffle=False))
    flat = [LENGTHS[i] for b in ordered for i in b]
    assert flat == sorted(LENGTHS)


@pytest.mark.parametrize("k", [0, 5, 25, 26, 40])
def test_sampler_exact_resume(k):
    reference = LengthBucketBatchSampler(LENGTHS, batch_size=8, seed=7)
    expected = list(reference) + list(reference)  # two full epochs

    sampler = LengthBucketBatchSampler(LENGTHS, batch_size=8, seed=7)
    consumed = []
    while len(consumed) < k:
        for batch in sampler:
            consumed.append(batch)
            if len(consumed) == k:
                break
    state = sampler.state_dict()
    assert set(state) == {"epoch", "batches_yielded"}

    resumed = LengthBucketBatchSampler(LENGTHS, batch_size=8, seed=7)
    resumed.load_state_dict(state)
    rest = []
    while len(consumed) + len(rest) < len(expected):
        rest.extend(resumed)
    assert consumed + rest == expected


def test_iter_batches(tmp_path):
    paths = [write(tmp_path / f"{i}.wav", sine(200, SAMPLE_RATE, seconds=0.1 * (i + 1))) for i in range(5)]
    ds = SegmentDataset([Segment(p, 0, sf.info(str(p)).frames) for p in paths])
    sampler = LengthBucketBatchSampler(ds.lengths, batch_size=2, seed=0)
    out = list(iter_batches(ds, sampler))
    assert len(out) == 3
    assert sorted(n for _, lengths in out for n in lengths.tolist()) == ds.lengths


def test_a_data_parallel_shard_reads_its_own_crops_only(tmp_path):
    """prefetched_batches(shard=(rank, world)) reads (counted __getitem__ calls) and hands out exactly the indices
    rank::world of each of the sampler's batches; the shards of all ranks together are the global batches."""
    from sslc.data.loader import prefetched_batches

    class Counted(SegmentDataset):
        def __getitem__(self, index):
            self.reads.append(index)
            return super().__getitem__(index)

    paths = [write(tmp_path / f"{i}.wav", sine(200, SAMPLE_RATE, seconds=0.1 * (i % 3 + 1))) for i in range(8)]
    segments = [Segment(p, 0, sf.info(str(p)).frames) for p in paths]
    global_batches = LengthBucketBatchSampler([s.num_samples for s in segments], 4, seed=0).epoch_batches(0)
    shards = {}
    for rank in range(2):
        ds = Counted(segments)
        ds.reads = []
        batches = prefetched_batches(ds, LengthBucketBatchSampler(ds.lengths, 4, seed=0), workers=0, shard=(rank, 2))
        shards[rank] = [next(batches) for _ in global_batches]
        batches.close()
        assert [indices for indices, _, _ in shards[rank]] == [b[rank::2] for b in global_batches]
        assert ds.reads == [i for b in global_batches for i in b[rank::2]]  # nothing of the other shard
        for indices, _, lengths in shards[rank]:
            assert lengths.tolist() == [ds.lengths[i] for i in indices]
    assert [sorted(a + b) for (a, _, _), (b, _, _) in zip(shards[0], shards[1])] == [sorted(b) for b in global_batches]


# --- demo corpus -----------------------------------------------------------------------------------


def autocorr_pitch(frame: np.ndarray) -> float:
    frame = frame - frame.mean()
    ac = np.correlate(frame, frame, mode="full")[len(frame) - 1 :]
    lo, hi = SAMPLE_RATE // 300, SAMPLE_RATE // 70
    return SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi])))


def test_demo_corpus(tmp_path):
    assert "synthetic" in DEMO_NOTE
    out = make_demo_corpus(tmp_path / "demo", num_files=4, seconds=(1.0, 2.0), seed=0)
    files = sorted(out.glob("*.wav"))
    assert len(files) == 4
    durations = set()
    for path in files:
        info = sf.info(str(path))
        assert info.samplerate == SAMPLE_RATE and info.channels == 1
        assert 1.0 <= info.duration <= 2.0
        durations.add(info.frames)
        wave = load_audio(path)
        assert np.sqrt(np.mean(wave**2)) > 0.01
    assert len(durations) == 4

    # The pitch moves: estimates over loud (voiced) frames of one file span a real range.
    wave = load_audio(files[0])
    frames = np.lib.stride_tricks.sliding_window_view(wave, 640)[::320]
    energy = np.sqrt(np.mean(frames**2, axis=1))
    zero_crossings = np.mean(np.abs(np.diff(np.sign(frames), axis=1)) > 0, axis=1)
    voiced = frames[(energy > 0.5 * energy.max()) & (zero_crossings < 0.15)]
    assert len(voiced) >= 5
    pitches = np.array([autocorr_pitch(f) for f in voiced])
    assert np.percentile(pitches, 90) - np.percentile(pitches, 10) > 15.0

    # Same parameters: nothing is rewritten. Other parameters: regenerated.
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    assert make_demo_corpus(tmp_path / "demo", num_files=4, seconds=(1.0, 2.0), seed=0) == out
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    os.utime(files[0], ns=(0, 0))
    make_demo_corpus(tmp_path / "demo", num_files=3, seconds=(1.0, 2.0), seed=1)
    assert len(list(out.glob("*.wav"))) == 3 and files[0].stat().st_mtime_ns != 0


def test_demo_is_deterministic_and_resolvable(tmp_path):
    a = make_demo_corpus(tmp_path / "a", num_files=2, seconds=(1.0, 1.5), seed=5)
    b = make_demo_corpus(tmp_path / "b", num_files=2, seconds=(1.0, 1.5), seed=5)
    for name in ("demo_000.wav", "demo_001.wav"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert resolve_data("/some/corpus", tmp_path) == "/some/corpus"
    demo = resolve_data("demo", tmp_path / "cache")
    assert demo == tmp_path / "cache" / "demo-corpus"
    assert len(discover_audio(demo)) == 24
