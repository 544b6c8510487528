"""Share of a search trial's wall time spent training, on a LibriSpeech-shaped corpus of 28,539 files.

The corpus is a tree like LibriSpeech's train-clean-100 (speaker/chapter/speaker-chapter-utt.flac, 251 speakers,
28,539 files) of short generated flac files (0.3 s each, so it is written in about a minute), built once into
`~/.cache/sslc/bench/` and reused. A real search (`run_search`: Ray, Tune, Optuna, the `random:tiny` teacher, a 60%
budget) runs 4 trials one at a time at the default trial settings (100 steps of 4 crops of 2 s — here the whole
0.3 s files —, default latency repeats, the capped held-out set), with the teacher targets built by the driver
before the first trial. For each complete trial (read by the run record's outcomes) the study holds its wall time
(ask -> tell) and its parts: `seconds_training` and `seconds_build_student`, `_latency`, `_head_fit`, `_data`
(waiting for batches, inside training), `_heldout`, `_save`; the rest is start-up (Ray handing the trial to a
worker, the context unpickled, the targets opened). The headline is the median over trials of training / wall.

`--quick`: 300 files, 1 trial of 5 steps: checks that the benchmark runs (CI), its figure means nothing.

Measured (2 CPU cores shared with other helpers' jobs, load average 21-25; the tree took 236 s to write there):
trial_time_split 0.728 (trials 0.209, 0.805, 0.753, 0.702). Training took 18-31 s a trial (100 steps); the parts
besides it: held-out 1.4-5.7 s (128 segments), head fit 0.1-1.2 s, latency 0.3-1.3 s, building the student
0.02-5.2 s, waiting for data 0.2-0.45 s (inside training), start-up 1.6-2.8 s — and 65.7 s on the first trial, a
fresh Ray worker process importing torch on the loaded machine (a long search pays it once per worker). Before
this work (the issue's figure) the share was ~0.04 at 20 steps: the trials built the targets, scored ~2,850
held-out segments and trained on the same ~400 crops. `--quick` took 193 s there (Ray's start-up under load).
The last line is `trial_time_split: <median share>` (goal >= 0.7).

    python benchmarks/trial_time_split.py [--files 28539] [--trials 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from sslc.data import SAMPLE_RATE  # noqa: E402
from sslc.runs.storage import load_study  # noqa: E402
from sslc.runs.trials import SECONDS_PARTS, Outcome, outcome_of  # noqa: E402
from sslc.search.runner import SearchSettings, run_search  # noqa: E402

FILES = 28539  # LibriSpeech train-clean-100
SPEAKERS = 251
FILE_SECONDS = 0.3
CACHE = Path.home() / ".cache" / "sslc" / "bench"


def librispeech_tree(files: int) -> Path:
    """The generated tree of `files` flac files (made once, reused: a marker is written last)."""
    root = CACHE / f"librispeech-shaped-{files}"
    marker = root / ".complete"
    if marker.is_file():
        return root
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    n = int(FILE_SECONDS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tones = rng.uniform(100, 2000, size=64)
    for i in range(files):
        speaker, chapter = i % SPEAKERS, (i // SPEAKERS) % 4
        folder = root / str(speaker) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        wave = 0.3 * np.sin(2 * np.pi * tones[i % 64] * t) + 0.05 * rng.standard_normal(n)
        sf.write(str(folder / f"{speaker}-{chapter}-{i:05d}.flac"), wave.astype(np.float32), SAMPLE_RATE)
    marker.write_text(json.dumps({"files": files, "seconds": FILE_SECONDS}))
    print(f"wrote {files} flac files into {root} in {time.perf_counter() - started:.0f} s")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="300 files, 1 trial of 5 steps")
    args = parser.parse_args()
    files, trials = (300, 1) if args.quick else (args.files, args.trials)
    defaults = SearchSettings(budget="60%")
    steps = 5 if args.quick else defaults.steps
    corpus = librispeech_tree(files)
    with tempfile.TemporaryDirectory(prefix="sslc-trial-split-") as tmp:
        settings = SearchSettings(
            teacher="random:tiny", data=str(corpus), budget="60%", trials=trials, steps=steps, concurrency=1,
            name="split", run_dir=Path(tmp) / "split", baselines=False, quiet=True, early_stopping=False,
            sampler="random", seed=0,
        )
        started = time.perf_counter()
        run_search(settings)
        wall = time.perf_counter() - started
        study = load_study(settings.run_dir)
        complete = [t for t in study.get_trials(deepcopy=False) if outcome_of(t) == Outcome.COMPLETE]
    if not complete:
        raise SystemExit("no trial completed")
    print(f"search: {files} files of {FILE_SECONDS:g} s, random:tiny, {len(complete)} complete trials x {steps} steps "
          f"of {defaults.batch_size} crops, one at a time; run_search took {wall:.1f} s in all")
    shares = []
    print(f"{'trial':>5} {'wall s':>7} {'training':>8} " + " ".join(f"{p.removeprefix('seconds_'):>13}" for p in
                                                                    SECONDS_PARTS) + f" {'start-up':>9}  share")
    for trial in complete:
        attrs = trial.user_attrs
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        parts = [attrs.get(p) or 0.0 for p in SECONDS_PARTS]
        data = attrs.get("seconds_data") or 0.0  # inside seconds_training
        startup = seconds - attrs["seconds_training"] - (sum(parts) - data)
        share = attrs["seconds_training"] / seconds
        shares.append(share)
        print(f"{trial.number:>5} {seconds:7.2f} {attrs['seconds_training']:8.2f} "
              + " ".join(f"{v:13.3f}" for v in parts) + f" {startup:9.2f}  {share:.3f}")
    print(f"trial_time_split: {statistics.median(shares):.3f}")


if __name__ == "__main__":
    main()
