"""What bringing a trial's files back through Ray costs, per trial.

Trial workers write `config.json` / `student.pt` (or `error.txt`) into a temp dir of their own and send the bytes
to a sink actor on the driver's node (`sslc.search.artifacts`), so no worker needs the run directory's disk. Each
trial records `artifact_bytes` and `artifact_seconds` (read the files, send them through Ray's object store, wait
until the sink wrote them). This runs a real search (local Ray, demo audio) and prints, per teacher, the median
cost per trial, in seconds and as a share of the trial's training time.

    python benchmarks/artifact_transfer.py [--teacher random:tiny] [--trials 4] [--steps 10] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import TrialState  # noqa: E402

from sslc.runs.storage import load_study  # noqa: E402
from sslc.search.runner import SearchSettings, run_search  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="random:tiny")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 trials of 2 steps: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.steps = 2, 2
    with tempfile.TemporaryDirectory() as tmp:
        settings = SearchSettings(
            teacher=args.teacher, data="demo", budget="100%", trials=args.trials, steps=args.steps, batch_size=2,
            crop_seconds=1.0, name="artifacts", run_dir=Path(tmp) / "run", latency_repeats=1, baselines=False,
            early_stopping=False, report=False, quiet=True, concurrency=1,
        )
        run_search(settings)
        trials = load_study(settings.run_dir).get_trials(states=(TrialState.COMPLETE,))
    seconds = [t.user_attrs["artifact_seconds"] for t in trials]
    sizes = [t.user_attrs["artifact_bytes"] for t in trials]
    training = [t.user_attrs["seconds_training"] for t in trials]
    for t in trials:
        print(f"trial {t.number}: {t.user_attrs['artifact_bytes'] / 1e6:.2f} MB in "
              f"{t.user_attrs['artifact_seconds'] * 1e3:.1f} ms (training {t.user_attrs['seconds_training']:.2f} s)")
    median = statistics.median(seconds)
    print(f"{len(trials)} complete trials of {args.teacher}: median {statistics.median(sizes) / 1e6:.2f} MB per trial, "
          f"{median / statistics.median(training):.1%} of the median training time")
    print(f"artifact_transfer: {median * 1e3:.1f} ms per trial")


if __name__ == "__main__":
    main()
