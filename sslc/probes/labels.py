"""Labels for a probe, read from the corpus layout, and the speaker-disjoint train / held-out split.

* ``ctc``: one label sequence per audio file, from a sidecar next to it (``utt.phn`` or ``utt.txt``) or from a
  LibriSpeech-style ``<speaker>-<chapter>.trans.txt`` in its folder (``UTT-ID TEXT`` lines). ``--units chars``
  reads text (``.txt``, then ``*.trans.txt``, then ``.phn``) and labels each character, spaces included;
  ``--units tokens`` reads whitespace-separated units such as phonemes (``.phn``, then ``.txt``, then
  ``*.trans.txt``).
* ``classify``: the label is the name of the file's parent folder (Speech Commands / VoxCeleb layouts).

Files without a label are skipped with one warning; a corpus without any, or with one class only, is a
`UserError`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sslc.data.corpus import AudioFile, discover_audio
from sslc.errors import UserError

log = logging.getLogger("sslc.probes")

TASKS = ("ctc", "classify")
UNITS = ("chars", "tokens")
HELDOUT_SHARE = 0.2  # of the speakers (or files, where none are named) when no --heldout directory is given
SPLIT_SEED = "sslc-probe-split-v1"  # part of the split's hash: a fixed, seeded split


@dataclass(frozen=True)
class Example:
    audio: AudioFile
    label: tuple[str, ...] | str  # a unit sequence (ctc) or a class name (classify)
    group: str  # the speaker (or the file itself when the layout names none): held-out splits keep groups whole


def check_task(task: str, units: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    if units not in UNITS:
        raise UserError(f"unknown units {units!r}: expected one of {', '.join(UNITS)}")


def _transcripts(root: Path) -> dict[str, str]:
    """Utterance id -> text of every LibriSpeech `*.trans.txt` under `root`."""
    texts = {}
    for path in sorted(root.rglob("*.trans.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            utt, _, text = line.strip().partition(" ")
            if utt and text.strip():
                texts[utt] = text.strip()
    return texts


def _sidecar(path: Path, suffix: str) -> str | None:
    side = path.with_suffix(suffix)
    if side.is_file():
        text = side.read_text(encoding="utf-8").strip()
        return text or None
    return None


def sequence_label(path: Path, units: str, transcripts: dict[str, str]) -> tuple[str, ...] | None:
    """The unit sequence of one audio file, or None when it has no label."""
    order = (".txt", "trans", ".phn") if units == "chars" else (".phn", ".txt", "trans")
    for source in order:
        text = transcripts.get(path.stem) if source == "trans" else _sidecar(path, source)
        if text:
            # chars: every character is a unit (case folded, runs of spaces made one); tokens: whitespace splits.
            return tuple(" ".join(text.lower().split())) if units == "chars" else tuple(text.split())
    return None


def speaker_of(file: AudioFile) -> str:
    """The speaker a layout names, else the file itself.

    LibriSpeech: `<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`; Speech Commands:
    `<class>/<speaker>_nohash_<n>.wav`.
    """
    path = file.path
    parts = path.stem.split("-")
    if len(parts) == 3 and path.parent.name == parts[1] and path.parent.parent.name == parts[0]:
        return f"speaker:{parts[0]}"
    if "_nohash_" in path.stem:
        return f"speaker:{path.stem.split('_nohash_')[0]}"
    return f"file:{file.key}"


def read_examples(data: str | Path, task: str, units: str = "chars") -> list[Example]:
    """Every labelled audio file under `data` (files without a label skipped with one warning)."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(f"probe data {root} is not a directory (expected a folder of labelled audio)")
    files = discover_audio(root)
    examples = []
    if task == "classify":
        for file in files:
            label = file.path.parent.name if file.path.parent != root else None
            if label:
                examples.append(Example(file, label, speaker_of(file)))
        what = "a class folder (files directly in the data directory)"
    else:
        transcripts = _transcripts(root)
        for file in files:
            label = sequence_label(file.path, units, transcripts)
            if label:
                examples.append(Example(file, label, speaker_of(file)))
        what = "a label (.phn / .txt sidecar or a line in a *.trans.txt)"
    if not examples:
        raise UserError(f"no audio under {root} has {what}: nothing to probe")
    if len(examples) < len(files):
        log.warning("skipped %d of %d audio files under %s without %s", len(files) - len(examples), len(files),
                    root, what)
    return examples


def _group_hash(group: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{SPLIT_SEED}:{group}".encode()).digest()[:8], "big")


def split_examples(
    examples: Sequence[Example], share: float = HELDOUT_SHARE
) -> tuple[list[Example], list[Example]]:
    """(train, held-out): whole speakers (groups) held out by a seeded hash until `share` of the files is."""
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.group, []).append(example)
    if len(groups) < 2:
        raise UserError("the probe data names one speaker only: give a held-out set with --heldout DIR")
    ordered = sorted(groups, key=lambda g: (_group_hash(g), g))
    heldout: list[Example] = []
    for group in ordered[:-1]:  # at least one group stays for training
        if len(heldout) >= share * len(examples):
            break
        heldout += groups[group]
    held = {id(e) for e in heldout}
    return [e for e in examples if id(e) not in held], heldout


def describe_split(train: Sequence[Example], heldout: Sequence[Example], heldout_dir: str | Path | None) -> str:
    """How the held-out files were chosen, in a line for the results table: whether a speaker of the held-out
    audio can also be in training (where the layout names no speakers, the split is by file and it can)."""
    files = f"{len(train)} training and {len(heldout)} held-out file(s)"
    named = {e.group for e in heldout if e.group.startswith("speaker:")}
    unnamed = sum(not e.group.startswith("speaker:") for e in [*train, *heldout])
    if heldout_dir is not None:
        shared = named & {e.group for e in train}
        if shared:
            return f"{files}, held out: --heldout {heldout_dir}, {len(shared)} of whose speakers are also in training"
        if not unnamed:
            return f"{files}, held out: --heldout {heldout_dir}, none of whose {len(named)} speaker(s) is in training"
        return f"{files}, held out: --heldout {heldout_dir} (its layout names no speakers to check against training)"
    if not unnamed:
        return f"{files}, held out: {len(named)} whole speaker(s), none of them in training"
    return (f"{files}, held out by file: the layout names no speaker for {unnamed} file(s), so held-out audio may "
            "share its speakers with training (give --heldout DIR with other speakers)")


def train_and_heldout(
    data: str | Path, task: str, units: str = "chars", heldout: str | Path | None = None
) -> tuple[list[Example], list[Example]]:
    """The labelled training and held-out examples; held-out audio never appears in training."""
    check_task(task, units)
    examples = read_examples(data, task, units)
    if heldout is None:
        train, held = split_examples(examples)
    else:
        held = read_examples(heldout, task, units)
        seen = {e.audio.path.resolve() for e in held}
        train = [e for e in examples if e.audio.path.resolve() not in seen]  # --heldout inside --data
        if not train:
            raise UserError("every labelled file of --data is also in --heldout: nothing left to train on")
    if task == "classify":
        classes = {e.label for e in train}
        if len(classes) < 2:
            raise UserError(f"the training data has one class only ({next(iter(classes))}): nothing to classify")
        unseen = sum(e.label not in classes for e in held)
        if unseen:
            log.warning("%d held-out files have a class the training data lacks (always counted wrong)", unseen)
    return train, held
