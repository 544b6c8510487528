"""Run the torchaudio importer's tests (tests/test_teachers.py -k torchaudio) against torchaudio's own model code
on a machine where `import torchaudio` fails.

Why: the package registry's torchaudio is a CUDA build whose compiled extension cannot load beside the CPU torch
used here, so those tests skip. Its wav2vec 2.0 / HuBERT / WavLM models are plain torch modules, though: this
fetches the wheel (no dependencies, ~2 MB), unpacks it, and makes `torchaudio.models` importable without the
package's `__init__` (which loads the extension), then runs the tests in this process. Only the tests see this
stand-in; sslc itself imports torchaudio normally (`sslc.models.torchaudio_import.import_torchaudio`).

    python scripts/torchaudio-fidelity.py [--version 2.11.0] [--wheel-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.machinery
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fetch_wheel(version: str, directory: Path) -> Path:
    wheels = sorted(directory.glob(f"torchaudio-{version}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", f"torchaudio=={version}", "--no-deps", "-q",
                        "-d", str(directory)], check=True)
        wheels = sorted(directory.glob(f"torchaudio-{version}-*.whl"))
    return wheels[0]


def install_model_code(wheel: Path, directory: Path) -> None:
    """`torchaudio` and `torchaudio.models` as bare packages over the unpacked wheel, with the wav2vec2 models."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(directory)
    import transformers  # noqa: F401  (first: it looks for torchaudio when imported)

    package = directory / "torchaudio"
    for name, path in (("torchaudio", package), ("torchaudio.models", package / "models")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__spec__.submodule_search_locations = [str(path)]
        sys.modules[name] = module
    sys.modules["torchaudio"].models = sys.modules["torchaudio.models"]
    from torchaudio.models import wav2vec2

    models = sys.modules["torchaudio.models"]
    for name in ("Wav2Vec2Model", "wav2vec2_model", "wavlm_model", "hubert_base", "wav2vec2_base", "wavlm_base"):
        setattr(models, name, getattr(wav2vec2, name))


class Outcomes:
    """Counts the fidelity tests that ran and passed: skipped ones (the stand-in not found) must not pass for run."""

    def __init__(self):
        self.passed = 0

    def pytest_runtest_logreport(self, report):
        if report.when == "call" and report.passed and "torchaudio_fidelity" in report.nodeid:
            self.passed += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="2.11.0", help="torchaudio version whose model code is tested")
    parser.add_argument("--wheel-dir", type=Path, default=None, help="where the wheel is (or is downloaded to)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sslc-torchaudio-") as tmp:
        wheel = fetch_wheel(args.version, args.wheel_dir or Path(tmp))
        install_model_code(wheel, Path(tmp) / "unpacked")
        import pytest

        outcomes = Outcomes()
        code = pytest.main(["-q", "-p", "no:cacheprovider", "-rA", str(ROOT / "tests" / "test_teachers.py"),
                            "-k", "torchaudio_fidelity or torchaudio_mapping"], plugins=[outcomes])
    if code == 0 and outcomes.passed < 4:  # wav2vec2 / WavLM x base / large layouts
        print(f"error: only {outcomes.passed} of 4 torchaudio fidelity tests ran", file=sys.stderr)
        return 1
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
