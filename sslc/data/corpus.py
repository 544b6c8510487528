"""Finding the audio files of a corpus (a directory or a fairseq TSV manifest) and splitting off a held-out set."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from sslc.data.audio import SAMPLE_RATE
from sslc.errors import UserError
from sslc.files import write_json_atomically

log = logging.getLogger("sslc.data")

# MP3 is read when this machine's libsndfile decodes it (1.1 and later); otherwise such files are counted and
# named in a warning rather than passed over in silence.
_MP3 = "MP3" in sf.available_formats()
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg") + ((".mp3",) if _MP3 else ())
# Audio a user may mix in that libsndfile cannot decode here: skipped, with a warning saying how many.
UNREADABLE_SUFFIXES = tuple(s for s in (".mp3", ".m4a", ".aac", ".wma") if s not in AUDIO_SUFFIXES)
_LISTED = "/".join(AUDIO_SUFFIXES)
_EXPECTED = f"a directory of {_LISTED} files or a fairseq .tsv manifest"


def _files(count: int) -> str:
    return f"{count} file{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class AudioFile:
    """One usable audio file. `num_samples` is its length at 16 kHz (what load_audio returns, floored)."""

    path: Path
    num_samples: int
    # Path relative to the corpus root, '/'-separated: a machine-independent identity for hashing/splitting.
    rel_path: str = ""

    @property
    def key(self) -> str:
        return self.rel_path or self.path.name


def discover_audio(spec: str | os.PathLike, listing: str | os.PathLike | None = None) -> list[AudioFile]:
    """List the usable audio of a corpus: a directory (searched recursively) or a fairseq TSV manifest.

    Unreadable or empty files are skipped with one warning; a corpus with nothing usable is a UserError. A
    manifest's sample counts are taken as the files' lengths at 16 kHz (fairseq's convention), so those files are
    not opened here; other files' headers are read once. With `listing` (a JSON file), a listing made there
    before for the same corpus is read instead of scanning again, and a new one is written there.
    """
    root = Path(spec).expanduser()
    if listing is not None and root.exists():
        known = _read_listing(Path(listing), root)
        if known is not None:
            return known
    base, files = _discover(root, spec)
    if listing is not None:
        rows = [[f.rel_path, f.num_samples] for f in files]
        write_json_atomically(Path(listing), {"format": _LISTING_FORMAT, "corpus": str(root.resolve()),
                                              "root": str(base), "files": rows})
    return files


_LISTING_FORMAT = 1


def _read_listing(listing: Path, root: Path) -> list[AudioFile] | None:
    """The files of an earlier listing of the corpus at `root` (None: none, or of another corpus)."""
    try:
        saved = json.loads(listing.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("format") != _LISTING_FORMAT or saved.get("corpus") != str(root.resolve()):
        return None
    base = Path(saved["root"])
    return [AudioFile(path=base / rel, num_samples=int(n), rel_path=rel) for rel, n in saved["files"]]


def _discover(root: Path, spec) -> tuple[Path, list[AudioFile]]:
    """(the folder the files' relative paths start from, the usable files)."""
    if not root.exists():
        raise UserError(f"data path does not exist: {root} (expected {_EXPECTED})")
    skipped: dict[str, int] = {}
    known: dict[str, int] = {}
    if root.is_dir():
        candidates, skipped = _scan_directory(root)
        where = f"under {root}"
    elif root.suffix.lower() in AUDIO_SUFFIXES:
        raise UserError(f"data path {root} is a single audio file (expected {_EXPECTED})")
    else:
        root, candidates, known = _read_manifest(root)
        where = f"listed in {Path(spec)}"

    files: list[AudioFile] = []
    bad: list[str] = []
    for rel in candidates:
        path = root / rel
        # A manifest's count spares opening the file (a stat still drops files that are gone).
        num_samples = (known[rel] if path.is_file() else 0) if rel in known else _num_samples_16k(path)
        if num_samples > 0:
            files.append(AudioFile(path=path, num_samples=num_samples, rel_path=rel))
        else:
            bad.append(rel)

    ignored = ", ".join(f"{_files(n)} {suffix}" for suffix, n in sorted(skipped.items()))
    if not files:
        also = f"; ignored {ignored} (this soundfile cannot decode them)" if skipped else ""
        if not candidates:
            raise UserError(f"no audio files ({_LISTED}) {where}{also}")
        raise UserError(f"no usable audio ({_LISTED}) {where}: {_files(len(bad))} unreadable or empty{also}")
    if bad:
        log.warning("skipped %s unreadable or empty %s (first: %s)", _files(len(bad)), where, ", ".join(bad[:3]))
    if skipped:
        log.warning("ignored %s %s: this soundfile cannot decode them (convert them to .flac or .wav)", ignored, where)
    return root, files


def _scan_directory(root: Path) -> tuple[list[str], dict[str, int]]:
    """The audio files under `root`, and how many files of each format this soundfile cannot decode."""
    rels, skipped = [], {}
    for path in root.rglob("*"):
        suffix = path.suffix.lower()
        if suffix in AUDIO_SUFFIXES and path.is_file():
            rels.append(path.relative_to(root).as_posix())
        elif suffix in UNREADABLE_SUFFIXES and path.is_file():
            skipped[suffix] = skipped.get(suffix, 0) + 1
    # Sorted '/'-joined relative paths, so the listing is identical on every machine and filesystem.
    return sorted(rels), skipped


def _read_manifest(manifest: Path) -> tuple[Path, list[str], dict[str, int]]:
    """Parse a fairseq manifest: line 1 is the root directory, then `relative/path<TAB>num_samples` lines.
    Returns (root, relative paths, {relative path: num_samples} where the line gives a positive count)."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read manifest {manifest}: {exc} (expected {_EXPECTED})") from exc
    if not lines or not lines[0].strip():
        raise UserError(f"manifest {manifest} is empty (first line must be the audio root directory)")
    root = Path(lines[0].strip()).expanduser()
    # A relative root is taken relative to the manifest, so the manifest works from any working directory.
    if not root.is_absolute():
        root = manifest.parent / root
    if not root.is_dir():
        raise UserError(f"manifest {manifest}: root directory {root} (line 1) does not exist")

    rels, known = [], {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        columns = line.split("\t")
        rel = columns[0].strip()
        if not rel:
            raise UserError(
                f"manifest {manifest}: line {lineno} has no path (expected 'path<TAB>num_samples')"
            )
        rel = Path(rel).as_posix()
        rels.append(rel)
        count = columns[1].strip() if len(columns) > 1 else ""
        if count.isdigit() and int(count) > 0:
            known[rel] = int(count)  # trusted: a file that went bad fails with its name when read
    return root, rels, known


def _num_samples_16k(path: Path) -> int:
    """Length at 16 kHz from the header alone (no decoding); 0 when the file cannot be opened."""
    try:
        if path.stat().st_size == 0:
            return 0
        info = sf.info(str(path))
    except (RuntimeError, ValueError, OSError):
        return 0
    if info.samplerate <= 0 or info.frames <= 0:
        return 0
    return info.frames * SAMPLE_RATE // info.samplerate


def _stable_hash(key: str) -> int:
    # hashlib, not hash(): Python's str hash is salted per process.
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def split_heldout(
    files: Sequence[AudioFile], fraction: float = 0.1, min_heldout: int = 1, max_heldout: int | None = None
) -> tuple[list[AudioFile], list[AudioFile]]:
    """Split into (train, heldout) by a stable hash of each file's corpus-relative path: `fraction` of the files,
    at least `min_heldout` and at most `max_heldout` (None: no cap).

    The files with the smallest hashes are held out, so the split depends neither on listing order nor on
    the machine. Both sides are non-empty for >= 2 files; a single file is used for both (with a warning).
    """
    if not files:
        raise ValueError("split_heldout needs at least one file")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    ordered = sorted(files, key=lambda f: (f.key, str(f.path)))
    if len(ordered) == 1:
        log.warning(
            "only one audio file (%s): using it for both training and held-out evaluation", ordered[0].key
        )
        return [ordered[0]], [ordered[0]]

    num_heldout = max(min_heldout, 1, round(fraction * len(ordered)))
    if max_heldout is not None:
        num_heldout = min(num_heldout, max(1, max_heldout))
    num_heldout = min(num_heldout, len(ordered) - 1)
    # Ties on the hash fall back to the sort position, which is itself order-independent.
    by_hash = sorted(range(len(ordered)), key=lambda i: (_stable_hash(ordered[i].key), i))
    held = set(by_hash[:num_heldout])
    train = [f for i, f in enumerate(ordered) if i not in held]
    heldout = [f for i, f in enumerate(ordered) if i in held]
    return train, heldout
