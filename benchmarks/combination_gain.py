"""Do the techniques combined find a better front than the best of them alone, judged after retraining?

The seed paper's headline (basic techniques combined beat each of them), reproduced with sslc's own search. On
the trained fixture teacher (benchmarks/fixtures, `--teacher-recipe`, default mini: the 12-layer mini-HuBERT),
one real search (in-process `run_search`: Ray Tune trials, the default sampler, its warm start, no baselines)
runs in each space at the same budget, trials, steps, seed and concurrency:

- `combined` (depth, heads, FFN, low rank, CNN channels and hidden width together), against the single
  techniques: `prune-only` (heads / FFN / CNN channels at full depth), `distil-depth` (layer dropping),
  `lowrank` (factorised projections at full depth) and `thin` (hidden width, heads and FFN, the CNN whole).

The warm start is each space's nearest configs to the anchor families at the budget, as a user's search gets it.
A space whose configs within the budget run out before `--trials` (layer dropping has one or two depths at a
tight budget) stops there; its front is what it found. Each front is thinned to at most `--retrain` points
spread over its MACs and each point is retrained by sslc-retrain's `retrain_trial` with the `quick` recipe (10 x
--steps from the teacher's weights, the best validated weights kept): the retrained held-out loss is what a user
gets from that point. Hypervolumes of the retrained (GMACs, loss) fronts are normalised over the union of every
space's points, reference at the worst value plus 10% of the range (`sampler_quality.Normalisation`). Headline:
`combination_gain: X` = hypervolume(combined) / the best single technique's (goal >= 1.1).

Run time: sized for at most 30 minutes on 2 cores on mini (587 s measured) (5 searches of `--trials` x `--steps`,
then up to `--retrain` x 5 retrainings); `--quick` (the quick fixture, 3 trials, 2 steps, 2 points retrained for 4
steps) only checks that the benchmark runs; its figure means nothing.

    python benchmarks/combination_gain.py [--budget 40%] [--trials 10] [--steps 30] [--retrain 3]
                                          [--spaces combined,prune-only,distil-depth,lowrank,thin]
                                          [--teacher-recipe gpu|cpu|mini] [--quick]

Measured 2026-12-03 on mini at the defaults (2 idle cores, 587 s; MACs counted for 10 s as the search's budget
does, 40% = 2.21 GMACs): **combination_gain 1.546** (goal >= 1.1 met), best single technique `prune-only`.
Retrained fronts: combined 0.577 / 1.516 / 2.188 GMACs at 0.596 / 0.421 / 0.182 (its best point is DistilHuBERT's
2-layer shape at the budget, a warm start, which no single technique can build: the combined space narrows it);
prune-only (6 of 10 trials within the budget) 1.803 / 2.068 at 0.367 / 0.299; distil-depth one point, 2 layers at
full width, 2.040 at 0.193 (the space ran out after 6 distinct configs, 2 of them within the budget);
`lowrank` cannot reach 40% (its smallest config, the CNN whole, needs 3.39 GMACs) and `thin` barely can (0 of
400 random configs fit, so the search refuses to start): both count as empty fronts, so the figure compares
combined with prune-only and layer dropping only. Ten trials a space is few; the figure is one seed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks

import torch  # noqa: E402
from fidelity_gain import retrained_front, spread  # noqa: E402
from sampler_quality import Normalisation  # noqa: E402

from benchmarks.fixtures import add_recipe_option, trained_teacher  # noqa: E402
from sslc.errors import UserError  # noqa: E402
from sslc.runs.record import open_run  # noqa: E402
from sslc.runs.trials import Outcome  # noqa: E402
from sslc.search.retrain import prepare_context, retrain_plan  # noqa: E402
from sslc.search.runner import SearchSettings, run_search  # noqa: E402

BUDGET = "40%"
TRIALS = 10
STEPS = 30
RETRAIN_POINTS = 3
CONCURRENCY = 2
COMBINED = "combined"
SINGLE_TECHNIQUES = ("prune-only", "distil-depth", "lowrank", "thin")


def search_space(space: str, run_dir: Path, common: dict) -> tuple[object | None, float, str]:
    """The space's search run (None when it could not start: no config of the space within the budget), its
    wall time, and how it ended ("" or the one line that stopped it early)."""
    started = time.perf_counter()
    try:
        run_search(SearchSettings(space=space, name=space, run_dir=run_dir, **common))
        ended = ""
    except UserError as error:  # e.g. a space with fewer configs within the budget than trials: keep what it found
        ended = str(error).split(";")[0]
    try:
        run = open_run(run_dir)
    except UserError:
        run = None
    return run, time.perf_counter() - started, ended


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default=BUDGET, help="MACs budget of every search, e.g. 40%%")
    parser.add_argument("--trials", type=int, default=TRIALS, help="trials of each space's search")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps of a trial")
    parser.add_argument("--retrain", type=int, default=RETRAIN_POINTS, help="front points retrained per space")
    parser.add_argument("--spaces", default=",".join((COMBINED, *SINGLE_TECHNIQUES)),
                        help=f"spaces compared; the first is the combined one (default {COMBINED})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="quick fixture, 3 trials, few steps (smoke test)")
    add_recipe_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.steps, args.retrain = 3, 2, 2
    spaces = [s for s in args.spaces.split(",") if s]
    logging.getLogger("sslc").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    started = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)

    retrained = {}
    with tempfile.TemporaryDirectory(prefix="sslc-combination-") as tmp:
        common = dict(teacher=str(fixture.teacher_dir), data=str(fixture.train_dir), budget=args.budget,
                      trials=args.trials, steps=args.steps, baselines=False, report=False, seed=args.seed,
                      quiet=True, concurrency=CONCURRENCY)
        for space in spaces:
            run, wall, ended = search_space(space, Path(tmp) / space, common)
            if run is None:
                print(f"{space}: no search ({ended}): an empty front", flush=True)
                retrained[space] = []
                continue
            front = sorted(run.front(), key=lambda t: t.macs)
            trained = sum(1 for t in run.trials() if t.outcome == Outcome.COMPLETE)
            print(f"{space}: {trained} trials trained ({wall:.0f} s), front of {len(front)}: "
                  + ", ".join(f"{t.macs / 1e9:.3f} G {t.heldout_loss:.4f}" for t in front)
                  + (f" (stopped early: {ended})" if ended else ""), flush=True)
            if not front:
                retrained[space] = []
                continue
            plan = retrain_plan(run, recipe="quick", **({"steps": 4} if args.quick else {}))
            retrained[space] = retrained_front(run, spread(front, args.retrain), plan, prepare_context(run), space)

    normalise = Normalisation([points for points in retrained.values() if points])
    volumes = {space: normalise.hypervolume(points) if points else 0.0 for space, points in retrained.items()}
    print(f"hypervolume of the retrained fronts (normalised, reference {normalise.reference}): "
          + ", ".join(f"{space} {volume:.4f}" for space, volume in volumes.items())
          + f"; total {time.perf_counter() - started:.0f} s")
    combined, singles = spaces[0], spaces[1:]
    best = max(singles, key=lambda s: volumes[s])
    gain = volumes[combined] / volumes[best] if volumes[best] > 0 else float("inf")
    print(f"best single technique: {best}")
    print(f"combination_gain: {gain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
