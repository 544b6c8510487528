"""Decoding one audio file into the 16 kHz mono float32 waveform every SSL speech model expects."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000


class AudioReadError(Exception):
    """A file could not be decoded into usable audio; the message names the file and says why."""


def _existing_audio_file(path: str | os.PathLike) -> Path:
    """`path` as a Path; AudioReadError, said plainly, when it cannot be opened or is empty (libsndfile's own
    messages for both are cryptic: "System error.")."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioReadError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    if size == 0:
        raise AudioReadError(f"{path}: file is empty (0 bytes)")
    return path


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read `path` as a 1-D float32 mono waveform at `target_sr` Hz.

    Channels are averaged (not just the first one taken) so stereo recordings keep all their content.
    """
    path = _existing_audio_file(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    # soundfile's own errors subclass RuntimeError; ValueError/OSError cover odd headers and I/O failures.
    except (RuntimeError, ValueError, OSError) as exc:
        raise AudioReadError(f"{path}: not readable audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioReadError(f"{path}: contains no samples")

    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sr != target_sr:
        # soxr is a band-limited (anti-aliased) resampler; naive interpolation would fold high frequencies.
        wave = soxr.resample(wave, sr, target_sr)
        if wave.shape[0] == 0:
            raise AudioReadError(f"{path}: too short to hold a single sample at {target_sr} Hz")
    return np.ascontiguousarray(wave, dtype=np.float32)


# Native samples read beyond each end of a crop before resampling, so the resampler's edge effects fall outside it.
_RESAMPLE_MARGIN_SECONDS = 0.01


def read_crop(path: str | os.PathLike, start: int, num_samples: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """`num_samples` samples from `start` (both counted at `target_sr`) of `path`, mono float32, read by seeking:
    only the crop is decoded (libsndfile seeks sample-exactly in wav and flac), resampled with soxr only when the
    file's rate differs. Zero-padded past the file's end. At the file's own rate it equals
    `load_audio(path)[start:start + num_samples]`."""
    path = _existing_audio_file(path)
    try:
        with sf.SoundFile(str(path)) as handle:
            rate = handle.samplerate
            if rate == target_sr:
                handle.seek(min(start, handle.frames))
                data = handle.read(frames=num_samples, dtype="float32", always_2d=True)
                offset = 0
            else:
                margin = int(_RESAMPLE_MARGIN_SECONDS * rate)
                first = max(0, math.floor(start * rate / target_sr) - margin)
                last = min(handle.frames, math.ceil((start + num_samples) * rate / target_sr) + margin)
                handle.seek(first)
                data = handle.read(frames=max(0, last - first), dtype="float32", always_2d=True)
                offset = round(start - first * target_sr / rate)
    except (RuntimeError, ValueError, OSError) as exc:
        raise AudioReadError(f"{path}: not readable audio ({exc})") from exc
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != target_sr and wave.shape[0]:
        wave = soxr.resample(wave, rate, target_sr)[offset : offset + num_samples]
    if wave.shape[0] < num_samples:
        wave = np.concatenate([wave, np.zeros(num_samples - wave.shape[0], np.float32)])
    return np.ascontiguousarray(wave, dtype=np.float32)
