"""The main job on a GPU: `make demo`'s search at HuBERT Base size on a LibriSpeech-shaped corpus of over an hour.

Runs `run_search` (Ray, Tune, Optuna, the trials on the GPU by the default `--gpus-per-trial auto`, the
baselines) with `make demo`'s search (random:hubert-base, --budget 30GMACs, 8 trials) at the CLI's default trial
settings (100 steps of 4 crops of 2 s: what a user's `sslc-search ... --trials 50` trains), on a generated
`LibriSpeech/train-clean-100/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` tree of 300 files of 10-16 s
(LibriSpeech's are 12.7 s on average): 62 min of audio. It measures:

- the teacher-target cache build (the crops of every training and held-out file through the teacher, on the
  GPU, with `TeacherTargets.source`, the trials' own code; built before the search, which then reads it);
- the wall time of each trained trial (the study's ask -> tell) and its training share (`seconds_training`);
- the GPU's utilisation while trials run (nvidia-smi sampled every 0.5 s in a thread);
- projected GPU-hours of `sslc-search --teacher facebook/hubert-base-ls960 --data train-clean-100 --budget
  30GMACs --trials 50` on this GPU: the cache build scaled to train-clean-100's 28,539 files (one crop per file,
  as sslc cuts them), plus 50 trials at the measured mean wall time per trial divided by the most trials the
  search ran at once (from the study's time stamps), plus start-up and baselines as measured. It assumes a trial's cost does not grow with the corpus
  (a held-out set of fixed size, as issue 21 asks; on a main without that change the held-out pass grows with
  the corpus and the projection is low). The reference, in the same line: DPHuBERT's ~24 A100-hours for one
  compressed model.

Needs a CUDA GPU. Without one the default run says so and exits 0 (last line `gpu_main_job: not run (no CUDA
device)`). `--quick` runs the same code path at CPU size in seconds (random:tiny, 6 files of 2 s, 2 trials of
3 steps, no baselines, on the CPU where there is no GPU): it checks that the benchmark still works (CI runs it);
its figures mean nothing.

Measured: not yet: no GPU was lent to the task that wrote it (issue 21); run it where one is.

    python benchmarks/gpu_main_job.py [--quick] [--trials 8] [--steps 100]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from sslc.data.demo import synthesize_utterance  # noqa: E402
from sslc.protocol import default_targets  # noqa: E402
from sslc.runs.storage import load_study  # noqa: E402
from sslc.runs.trials import Outcome, outcome_of  # noqa: E402
from sslc.search.inputs import prepare_inputs  # noqa: E402
from sslc.search.runner import SearchSettings, run_search  # noqa: E402

NAME = "gpu_main_job"
FILES, FILE_SECONDS = 300, (10.0, 16.0)
CLEAN_100_FILES = 28_539  # LibriSpeech train-clean-100
PROJECTED_TRIALS = 50
DPHUBERT_A100_HOURS = 24.0  # DPHuBERT (Peng et al., 2023) for one compressed model, for scale
SAMPLE_SECONDS = 0.5


def librispeech_tree(root: Path, files: int, seconds: tuple[float, float]) -> float:
    """Write `files` flac files in LibriSpeech's layout (40 speakers x chapters); returns the hours of audio. The
    sound is sslc's synthetic speech-like signal: a few long utterances, each file a random slice of one plus its
    own noise (synthesising every file would take minutes; what the trials cost does not depend on the content)."""
    rng = np.random.default_rng(0)
    sources = [synthesize_utterance(np.random.default_rng(i), seconds[1] + 4.0) for i in range(4)]
    total = 0
    for index in range(files):
        speaker, chapter = 100 + index % 40, 1000 + index % 7
        folder = root / "LibriSpeech" / "train-clean-100" / str(speaker) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        source = sources[index % len(sources)]
        length = int(rng.uniform(*seconds) * 16000)
        start = int(rng.integers(0, source.size - length))
        wave = source[start:start + length] + 0.01 * rng.standard_normal(length).astype(np.float32)
        sf.write(folder / f"{speaker}-{chapter}-{index:04d}.flac", wave, 16000, format="FLAC")
        total += length
    return total / 16000 / 3600


class GpuSampler:
    """GPU utilisation (%) every SAMPLE_SECONDS from nvidia-smi, with time stamps, in a thread."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "--id=0"], capture_output=True, text=True, timeout=5).stdout
                self.samples.append((time.time(), float(out.strip().splitlines()[0])))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass

    def __enter__(self):
        if self.available:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.available:
            self.thread.join()

    def mean_between(self, start: float, end: float) -> float | None:
        inside = [value for stamp, value in self.samples if start <= stamp <= end]
        return statistics.mean(inside) if inside else None


def build_cache(settings: SearchSettings, device: str) -> tuple[float, int]:
    """Build the run's teacher-target cache as the trials read it (the protocol's target layers, training crops
    in fp16, held-out ones exact), with the teacher on `device`: (seconds, training crops)."""
    context = prepare_inputs(settings.teacher, settings.data, settings.run_dir, settings.crop_seconds, settings.seed)
    teacher = context.teacher.to(device)
    layers = default_targets(teacher.config.num_layers)
    targets = context.targets()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    targets.source(context.data.train, layers)
    targets.source(context.data.heldout, layers, exact=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    teacher.to("cpu")
    return seconds, len(context.data.train)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) intervals that overlap at one moment: the trials the search ran at once."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return max(1, most)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized smoke test of the same code path")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("no CUDA device on this machine: this benchmark measures the search on a GPU (--quick runs a "
              "CPU-sized smoke test)")
        print(f"{NAME}: not run (no CUDA device)")
        return
    device = "cuda" if cuda else "cpu"
    work = Path(tempfile.mkdtemp(prefix="sslc-gpu-main-job-"))
    files, seconds = (6, (2.0, 2.5)) if args.quick else (FILES, FILE_SECONDS)
    started = time.perf_counter()
    hours = librispeech_tree(work, files, seconds)
    data = work / "LibriSpeech" / "train-clean-100"
    print(f"corpus: {files} flac files, {hours * 60:.1f} min of audio, LibriSpeech layout "
          f"({time.perf_counter() - started:.1f} s to write)")
    if args.quick:
        settings = SearchSettings(teacher="random:tiny", data=str(data), budget="70%", trials=2, steps=3,
                                  batch_size=2, crop_seconds=1.0, latency_repeats=1, baselines=False, quiet=True,
                                  name="quick", run_dir=work / "run", sampler="random")
    else:
        settings = SearchSettings(teacher="random:hubert-base", data=str(data), budget="30GMACs",
                                  trials=args.trials, steps=args.steps, name="main", run_dir=work / "run")
    cache_seconds, crops = build_cache(settings, device)
    print(f"cache build: {cache_seconds:.1f} s for {crops} training crops and the held-out set, teacher on {device}")

    with GpuSampler() as sampler:
        started = time.perf_counter()
        result = run_search(settings)
        search_seconds = time.perf_counter() - started
    study = load_study(result.run_dir)
    trained = [t for t in study.get_trials(deepcopy=False) if outcome_of(t) == Outcome.COMPLETE]
    if not trained:
        raise SystemExit(f"{NAME}: no trial completed")
    walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trained]
    training = [t.user_attrs.get("seconds_training") or 0.0 for t in trained]
    first = min(t.datetime_start for t in trained).timestamp()
    last = max(t.datetime_complete for t in trained).timestamp()
    devices = study.user_attrs.get("trial_devices", {})
    at_once = most_at_once([(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in trained])
    baselines_seconds = max(0.0, search_seconds - (last - first))  # start-up, baselines, front: the rest
    print(devices.get("note", "trials: (no device record)"))
    print(f"trials: {len(trained)} complete; wall per trial median {statistics.median(walls):.1f} s "
          f"(min {min(walls):.1f}, max {max(walls):.1f}); training {sum(training) / sum(walls):.0%} of it; "
          f"search {search_seconds:.0f} s in all ({last - first:.0f} s of trials)")
    utilisation = sampler.mean_between(first, last)
    print("GPU utilisation while trials ran: " + (f"{utilisation:.0f}% (mean of nvidia-smi samples every "
          f"{SAMPLE_SECONDS:g} s)" if utilisation is not None else "not measured (no nvidia-smi or no GPU)"))
    if cuda:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    scale = CLEAN_100_FILES / files  # one crop per file, training and held-out alike
    projected = (cache_seconds * scale + PROJECTED_TRIALS * statistics.mean(walls) / at_once
                 + baselines_seconds) / 3600
    unit = "GPU-hours" if cuda else "CPU-hours (no GPU: a smoke test)"
    print(f"projection: cache {cache_seconds * scale / 3600:.2f} h + {PROJECTED_TRIALS} trials x "
          f"{statistics.mean(walls):.1f} s / {at_once} at once + {baselines_seconds / 3600:.2f} h start-up and baselines")
    print(f"{NAME}: {projected:.2f} projected {unit} for a {PROJECTED_TRIALS}-trial train-clean-100 search "
          f"({projected / DPHUBERT_A100_HOURS:.2f}x DPHuBERT's ~{DPHUBERT_A100_HOURS:g} A100-hours for one model)")


if __name__ == "__main__":
    sys.exit(main())
