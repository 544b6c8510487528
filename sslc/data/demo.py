"""A synthetic speech-like corpus, so the tools run end to end without downloading any data.

The signal has the structure a speech model's front end reacts to (harmonics with a moving pitch, moving
formants, noise bursts, pauses), but it is not speech: results on it only show that the pipeline works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from sslc.data.audio import SAMPLE_RATE
from sslc.files import write_atomically, write_json_atomically

DEMO_NOTE = "synthetic speech-like demo audio (not real speech)"
DEMO_SPEC = "demo"
_MARKER = ".sslc-demo-corpus.json"
# Bump when the synthesis changes, so cached corpora from older versions are regenerated.
_VERSION = 1

# (F1, F2, F3) ranges in Hz, roughly spanning the vowel space of an adult speaker.
_FORMANT_RANGES = ((300.0, 800.0), (850.0, 2300.0), (2300.0, 3100.0))
_FORMANT_BANDWIDTHS = (90.0, 110.0, 160.0)
_FORMANT_GAINS = (1.0, 0.5, 0.25)
_MAX_HARMONIC_HZ = 5500.0


def resolve_data(spec: str | os.PathLike, cache_dir: str | os.PathLike) -> Path | str | os.PathLike:
    """'demo' -> the (created or reused) demo corpus directory under `cache_dir`; anything else unchanged."""
    if isinstance(spec, str) and spec == DEMO_SPEC:
        return make_demo_corpus(Path(cache_dir) / "demo-corpus")
    return spec


def make_demo_corpus(
    out_dir: str | os.PathLike,
    num_files: int = 24,
    seconds: tuple[float, float] = (1.0, 3.0),
    seed: int = 0,
) -> Path:
    """Write `num_files` synthetic 16 kHz mono WAVs of random length in `seconds`; deterministic per seed.

    Idempotent: a marker written after the last file records the parameters, and a complete corpus with the
    same parameters is left untouched.
    """
    if num_files < 1:
        raise ValueError(f"num_files must be >= 1, got {num_files}")
    lo, hi = seconds
    if not 0 < lo <= hi:
        raise ValueError(f"seconds must be (min, max) with 0 < min <= max, got {seconds}")
    out_dir = Path(out_dir)
    params = {
        "version": _VERSION,
        "num_files": num_files,
        "seconds": [lo, hi],
        "seed": seed,
        "sr": SAMPLE_RATE,
    }
    names = [f"demo_{i:03d}.wav" for i in range(num_files)]
    marker = out_dir / _MARKER
    if _is_complete(marker, params, names):
        return out_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    # Invalidate first, so an interrupted rewrite is never mistaken for a complete corpus.
    marker.unlink(missing_ok=True)
    # Files of an earlier, larger demo corpus would otherwise be picked up as part of this one.
    for stale in out_dir.glob("demo_*.wav"):
        if stale.name not in names:
            stale.unlink(missing_ok=True)
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, i])
        wave = synthesize_utterance(rng, rng.uniform(lo, hi))
        # Write-then-rename: parallel trials resolving 'demo' at once never read a half-written file.
        write_atomically(out_dir / name, lambda tmp, w=wave: sf.write(tmp, w, SAMPLE_RATE, "PCM_16", format="WAV"))
    write_json_atomically(marker, {**params, "files": names})
    return out_dir


def _is_complete(marker: Path, params: dict, names: list[str]) -> bool:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if recorded != {**params, "files": names}:
        return False
    return all((marker.parent / name).is_file() for name in names)


def synthesize_utterance(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One speech-like utterance: voiced stretches, fricative-like noise bursts and pauses."""
    n = max(int(seconds * SAMPLE_RATE), 1)
    t = np.arange(n) / SAMPLE_RATE
    voiced_gate, noise_gate = _event_gates(rng, n)

    voiced = _voiced_source(rng, t)
    noise = _highpassed_noise(rng, n, cutoff_hz=rng.uniform(2000.0, 3500.0))
    wave = voiced * voiced_gate + 0.35 * noise * noise_gate
    # A faint noise floor: real recordings are never digitally silent between words.
    wave += 1e-4 * rng.standard_normal(n)
    peak = np.max(np.abs(wave))
    if peak > 0:
        wave *= rng.uniform(0.3, 0.7) / peak
    return wave.astype(np.float32)


def _voiced_source(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Harmonics of a moving pitch, each weighted by a moving three-formant envelope."""
    f0 = _smooth_track(rng, t, knot_seconds=0.25, low=90.0, high=250.0, spread=0.5)
    # Declination: pitch drifts down over an utterance, as in read speech.
    f0 = np.maximum(f0 * (1.0 - 0.12 * t / max(t[-1], 1e-3)), 80.0)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    formants = [
        _smooth_track(rng, t, knot_seconds=0.12, low=lo, high=hi, spread=1.0) for lo, hi in _FORMANT_RANGES
    ]
    out = np.zeros_like(t)
    for k in range(1, int(_MAX_HARMONIC_HZ // 80.0) + 1):
        freq = k * f0
        # Lorentzian peaks approximate resonator magnitude responses; the floor keeps every harmonic audible.
        envelope = 0.02 + sum(
            g / (1.0 + ((freq - fc) / (bw / 2)) ** 2)
            for fc, bw, g in zip(formants, _FORMANT_BANDWIDTHS, _FORMANT_GAINS)
        )
        # 1/k: the falling spectrum of a glottal pulse train (with lip radiation); faded out below the
        # cut-off so no harmonic switches on or off abruptly as the pitch moves.
        fade = np.clip((_MAX_HARMONIC_HZ - freq) / 1000.0, 0.0, 1.0)
        amp = envelope * fade / k
        out += amp * np.sin(k * phase)
    return out


def _smooth_track(
    rng: np.random.Generator, t: np.ndarray, knot_seconds: float, low: float, high: float, spread: float
) -> np.ndarray:
    """A contour through random targets every `knot_seconds`, staying in [low, high].

    `spread` < 1 keeps targets near a per-utterance centre (a speaker's pitch range), 1 uses the whole range.
    """
    duration = t[-1] if len(t) > 1 else 0.0
    knots = np.arange(0.0, duration + knot_seconds, knot_seconds)
    centre = rng.uniform(low, high)
    half = spread * (high - low) / 2
    targets = np.clip(rng.uniform(centre - half, centre + half, size=len(knots)), low, high)
    # Piecewise-linear between targets, then a short moving average to round the corners.
    track = np.interp(t, knots, targets)
    width = max(int(0.03 * SAMPLE_RATE), 1)
    padded = np.pad(track, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def _highpassed_noise(rng: np.random.Generator, n: int, cutoff_hz: float) -> np.ndarray:
    """White noise with the band below `cutoff_hz` removed in the frequency domain (like /s/ or /f/)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE)
    spectrum[freqs < cutoff_hz] = 0.0
    noise = np.fft.irfft(spectrum, n=n)
    rms = np.sqrt(np.mean(noise**2))
    return noise / rms * 0.2 if rms > 0 else noise


def _event_gates(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude envelopes for voiced and noise parts: a sequence of syllables, bursts and pauses."""
    voiced = np.zeros(n)
    noise = np.zeros(n)
    pos = int(rng.uniform(0.03, 0.12) * SAMPLE_RATE)  # leading silence
    previous = "pause"
    while pos < n:
        kind = rng.choice(["voiced", "noise", "pause"], p=[0.55, 0.2, 0.25])
        if kind == previous and kind != "voiced":
            continue
        low, high = {"voiced": (0.12, 0.35), "noise": (0.05, 0.15), "pause": (0.04, 0.2)}[kind]
        length = min(int(rng.uniform(low, high) * SAMPLE_RATE), n - pos)
        if kind != "pause":
            gate = voiced if kind == "voiced" else noise
            gate[pos : pos + length] = rng.uniform(0.5, 1.0) * _tapered_window(length)
        pos += length
        previous = kind
    return voiced, noise


def _tapered_window(length: int, ramp_seconds: float = 0.02) -> np.ndarray:
    """Flat top with raised-cosine onset and offset, so events start and stop without clicks."""
    window = np.ones(length)
    ramp = min(int(ramp_seconds * SAMPLE_RATE), length // 2)
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        window[:ramp] = rise
        window[length - ramp :] = rise[::-1]
    return window
