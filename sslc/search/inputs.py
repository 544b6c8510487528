"""The inputs every trial of a run shares: the teacher, the audio split into segments, teacher targets, importance data.

Built once by the search driver (and again, identically, by `sslc-retrain`), so a student rebuilt later from a
trial's config is the same student the trial trained. Everything cached lives under `<run_dir>/cache/` on the
driver's machine; a trial worker on another node (no shared disk) builds its caches in a node-local directory
instead (`use_node_cache`), and small corpora travel with the context, decoded (`ship_audio`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sslc.compress import CompressionConfig, compress
from sslc.data import (
    DEMO_NOTE,
    SAMPLE_RATE,
    AudioFile,
    LengthBucketBatchSampler,
    SegmentDataset,
    discover_audio,
    iter_batches,
    make_segments,
    random_crops,
    resolve_data,
    split_heldout,
)
from sslc.data.demo import DEMO_SPEC
from sslc.models import EncoderConfig, SpeechEncoder
from sslc.models.fingerprint import model_fingerprint
from sslc.models.teachers import load_teacher
from sslc.protocol import HELDOUT_SEGMENTS
from sslc.trainers import TeacherTargets

log = logging.getLogger("sslc.search")

# Importance scores ("data", "diagonal") are averaged over this many training batches.
IMPORTANCE_BATCHES = 4
# Crops up to this size in all are decoded by the driver and shipped with the context (Ray's object store), so
# workers on other nodes need no copy of the audio; larger corpora must be at the same path on every node.
SHIPPED_AUDIO_BYTES = 128 * 1024**2
# "<random id>": written once into a run's cache directory. A worker that reads the same id there shares the
# driver's disk; one that does not (another node, or a different disk at the same path) caches node-locally.
CACHE_ID_FILE = "run-id"
# The corpus listing (files and lengths) of the run, under its cache directory: a resumed run does not rescan.
CORPUS_LISTING = "corpus.json"
# Frozen teachers rebuilt in this process from a pickled RunInputs, by fingerprint (architecture + weights).
_TEACHERS: dict[str, SpeechEncoder] = {}


@dataclass
class AudioSplit:
    train: SegmentDataset
    heldout: SegmentDataset
    note: str  # what the data is, for printing (says so when it is synthetic)
    files: list[AudioFile] = field(default_factory=list)  # the whole corpus (for the plan)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "files": []}  # trials need the crops only, not a listing of 281k files


@dataclass
class RunInputs:
    """The teacher and data of one run. Picklable, so Ray ships it to trial workers once (object store)."""

    teacher_spec: str
    teacher: SpeechEncoder
    data: AudioSplit
    cache_dir: Path
    crop_seconds: float
    seed: int
    teacher_fingerprint: str | None = None  # hashed once here, not again in every worker
    cache_id: str | None = None  # the id in `cache_dir / CACHE_ID_FILE` (see `use_node_cache`)
    # Training targets computed live on each trial's device instead of cached (a cache too large for the disk).
    live_training: bool = False

    # Weight-normed convolutions cannot be pickled as modules, so the teacher travels as config + weights.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        teacher = state.pop("teacher")
        state["teacher_weights"] = (
            teacher.config.to_dict(), teacher.state_dict(), getattr(teacher, "is_random", False)
        )
        return state

    def __setstate__(self, state: dict) -> None:
        config, weights, is_random = state.pop("teacher_weights")
        # Ray hands every trial a fresh copy of the context (`tune.with_parameters` fetches it from the object
        # store each time); a worker builds the frozen teacher once and reuses it (~0.5 s a trial for a Base model).
        key = state.get("teacher_fingerprint")
        teacher = _TEACHERS.get(key) if key else None
        if teacher is None:
            teacher = SpeechEncoder(EncoderConfig.from_dict(config))
            teacher.load_state_dict(weights)
            teacher = teacher.eval().requires_grad_(False)
            if key:
                _TEACHERS[key] = teacher
        teacher.teacher_spec, teacher.is_random = state["teacher_spec"], is_random
        self.__dict__.update(state, teacher=teacher)

    def ship_audio(self, limit_bytes: int = SHIPPED_AUDIO_BYTES) -> bool:
        """Decode every crop now when they total at most `limit_bytes` (float32), so they travel with the
        pickled context (the datasets keep decoded crops) and no worker reads the audio files. True if shipped."""
        datasets = (self.data.train, self.data.heldout)
        total = sum(4 * n for d in datasets for n in d.lengths)
        if total > limit_bytes or any(4 * sum(d.lengths) > d.cache_bytes for d in datasets):
            return False
        for dataset in datasets:
            for index in range(len(dataset)):
                dataset[index]
            dataset.pickle_decoded = True
        return True

    def use_node_cache(self) -> Path:
        """In a trial worker: keep using the run's cache directory when this node sees it (same id file),
        else switch to a node-local one for this run (teacher targets and importance scores are rebuilt there
        once per node; their fingerprints are checked as for the shared cache). Returns the directory used."""
        try:
            shared = (self.cache_dir / CACHE_ID_FILE).read_text().strip() == self.cache_id
        except OSError:
            shared = False
        if not shared and self.cache_id:
            self.cache_dir = Path(tempfile.gettempdir()) / "sslc-cache" / self.cache_id
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir

    def targets(self, device=None) -> TeacherTargets:
        """Teacher targets cached on disk, shared by every trial and process of this run (training targets
        computed live on `device` instead when `live_training`)."""
        return TeacherTargets(
            self.teacher, self.cache_dir / "targets", crop_seconds=self.crop_seconds,
            fingerprint=self.teacher_fingerprint, live_training=self.live_training, device=device,
        )

    def build_targets(self, layers, progress: bool = False) -> None:
        """Compute the cached targets every trial reads, now, on the fastest device of this process (the search's
        driver does this before any trial starts, so no trial builds them and none waits on another's build)."""
        targets = self.targets()
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or threads)  # the driver's cores are idle until the trials start
        try:
            targets.build(self.data.heldout, layers, exact=True, progress=progress)
            targets.build(self.data.train, layers, exact=False, progress=progress)
        finally:
            torch.set_num_threads(threads)

    def importance_batches(self, batch_size: int = 4):
        sampler = LengthBucketBatchSampler(self.data.train.lengths, batch_size, seed=self.seed)
        batches = iter_batches(self.data.train, sampler)
        return [next(batches) for _ in range(min(IMPORTANCE_BATCHES, len(sampler)))]

    def build_student(self, config: CompressionConfig, quantize: bool = True) -> SpeechEncoder:
        """The student `config` describes, from this run's teacher (int8 applied only when `quantize`)."""
        if not quantize and config.quantize != "none":
            config = CompressionConfig.from_dict({**config.to_dict(), "quantize": "none"})
        data = self.importance_batches() if config.needs_data() else None
        return compress(self.teacher, config, data=data, cache_dir=self.cache_dir / "importance")


def train_crops(settings: dict) -> int:
    """Training crops a run with these search settings reads: every step of its longest training (the short
    trials' steps, or the anytime mode's once-for-all steps) x the batch."""
    steps = max(int(settings["steps"]), int(settings.get("anytime_steps") or 0))
    return steps * int(settings["batch_size"])


def load_audio_split(data_spec: str, cache_dir: Path, crop_seconds: float, seed: int,
                     num_train_crops: int | None = None) -> AudioSplit:
    """Discover audio (or make the demo corpus), split off the held-out files (one crop each, at most
    HELDOUT_SEGMENTS), cut the training crops: the first `num_train_crops` of the seeded random sequence over the
    training files, at most the corpus's length in crops (None: one fixed crop per file). UserError when empty."""
    root = resolve_data(data_spec, cache_dir)
    files = discover_audio(root, listing=cache_dir / CORPUS_LISTING)
    train_files, heldout_files = split_heldout(files, max_heldout=HELDOUT_SEGMENTS)
    if num_train_crops is None:
        train = SegmentDataset(make_segments(train_files, crop_seconds, seed))
    else:
        # No more crops than the corpus holds (at least one per file): a corpus shorter than the run's crops is
        # read in several passes over the same crops, rather than its targets computed many times over.
        worth = sum(f.num_samples for f in train_files) // max(1, int(crop_seconds * SAMPLE_RATE))
        count = min(num_train_crops, max(len(train_files), worth))
        train = SegmentDataset(random_crops(train_files, count, crop_seconds, seed))
    heldout = SegmentDataset(make_segments(heldout_files, crop_seconds, seed))
    kind = DEMO_NOTE if data_spec == DEMO_SPEC else f"audio from {data_spec}"
    hours = sum(f.num_samples for f in files) / SAMPLE_RATE / 3600
    note = (f"{kind}: {len(files)} files ({hours:.3g} h); {len(train_files)} for training ({len(train)} "
            f"{'random ' if num_train_crops else ''}crops), {len(heldout_files)} held out")
    return AudioSplit(train, heldout, note, files)


def prepare_inputs(teacher_spec: str, data_spec: str, run_dir: Path, crop_seconds: float, seed: int,
                   num_train_crops: int | None = None) -> RunInputs:
    """The run's inputs; `num_train_crops` as `load_audio_split` (a search passes `train_crops(settings)`)."""
    cache_dir = Path(run_dir) / "cache"
    teacher = load_teacher(teacher_spec, seed=seed).eval().requires_grad_(False)
    data = load_audio_split(data_spec, cache_dir, crop_seconds, seed, num_train_crops)
    # Only now: a teacher or data that fails to load leaves no run directory behind (a half-made one would
    # later read as a run without a study).
    cache_dir.mkdir(parents=True, exist_ok=True)
    id_file = cache_dir / CACHE_ID_FILE
    if not id_file.is_file():
        id_file.write_text(uuid.uuid4().hex)
    return RunInputs(
        teacher_spec, teacher, data, cache_dir, crop_seconds, seed, model_fingerprint(teacher),
        id_file.read_text().strip(),
    )
