"""Every benchmark still runs: its `--quick` mode end to end, in a fresh process, ending on its headline line.

A refactor that breaks a benchmark (a renamed function, a changed signature) fails here, in CI, instead of after
a 14-minute run. Every script under benchmarks/ must have a `--quick` mode for this test to pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_quick_mode_runs_and_prints_its_headline_last(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(script.parents[1])}
    done = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, f"{script.name} --quick failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"{script.name} printed nothing"
    assert re.match(rf"^{script.stem}: -?[0-9.]+", lines[-1]), f"last line is not the headline: {lines[-1]!r}"
