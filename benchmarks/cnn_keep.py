"""Does a thin-deep student gain from cutting the CNN front end, at equal MACs, once retrained and probed?

Every thin anchor family keeps the teacher's CNN whole, which is a third of HuBERT Base's MACs (and of the
mini-HuBERT's at its `budget_seconds`); at 40% of the MACs FitHuBERT's rule then leaves the Transformer 64 wide on
the mini-HuBERT. This measures what the search's warm start assumes (`sslc.search.baselines.WARM_START_CONV_KEEP`):
the family `--family` (default fithubert-like) scaled to `--budget` by its own rule (`anchor_at_budget`) with its
CNN at each keep of `--keeps` (1 = whole, the anchor itself), each retrained by anchor_margin's plan (a study
made by a one-trial search at the budget: `retrain_plan`, the quick recipe at `--retrain-steps`, best validated
weights kept) and probed by sslc-probe's phone probe (MAX_PROBE_TRAIN training-voice files, PROBE_EPOCHS epochs, scored on the
fixture's held-out voices). Printed per keep: shape, share of the budget, retrained loss, PER.

Last line: `cnn_keep: X` = PER with the CNN whole / PER with the warm start's cut (WARM_START_CONV_KEEP); above 1
the cut pays for itself.

    python benchmarks/cnn_keep.py [--budget 40%] [--family fithubert-like] [--keeps 1,0.75,0.625,0.5]
                                  [--retrain-steps 300] [--teacher-recipe mini|gpu|cpu] [--quick]

Measured 2026-12-07 on mini, 40%, fithubert-like, 2 idle cores (the cut configs, each in about 2 minutes; the
whole-CNN row is anchor_margin's own measurement of that day, the same plan and probe): keep 1 (12x64 h1 ffn104,
the anchor) loss 0.3079 PER 0.5717; 0.75 (12x144 h2 ffn146) 0.2451 / 0.5080; 0.625 (12x160 h2 ffn236) 0.3185 /
0.5949; 0.5 (12x176 h3 ffn113) 0.4045 / 0.6972: cnn_keep 1.125. A quarter of the channels buys 2.25x the width
and pays; deeper cuts cost more than the width they buy after 300 steps (every layer above a narrowed CNN must
re-learn its input), although published CNN pruning with full training keeps HuBERT's quality to a 40-50% cut.
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
from anchor_margin import RETRAIN_STEPS, phone_error, retrain_config, shape  # noqa: E402

from benchmarks.fixtures import add_recipe_option, trained_teacher  # noqa: E402
from sslc.budget import parse_budget  # noqa: E402
from sslc.metrics import count_macs  # noqa: E402
from sslc.probes import ProbeSettings  # noqa: E402
from sslc.runs.record import open_run  # noqa: E402
from sslc.search.baselines import WARM_START_CONV_KEEP, anchor_at_budget  # noqa: E402
from sslc.search.retrain import prepare_context, retrain_plan  # noqa: E402
from sslc.search.runner import SearchSettings, run_search  # noqa: E402

BUDGET = "40%"
FAMILY = "fithubert-like"
KEEPS = "1,0.75,0.625,0.5"
SEARCH_STEPS = 60  # anchor_margin's short trials: the retrain plan is the study's trainer at RETRAIN_STEPS
# The phone probe this benchmark's figure was measured with: 120 training files, 10 epochs (anchor_margin's until
# 2026-12-08; anchor_margin now trains its judge for 2000 steps, 800 files x 20 epochs, see its docstring).
PROBE_EPOCHS = 10
MAX_PROBE_TRAIN = 120


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default=BUDGET)
    parser.add_argument("--family", default=FAMILY, help="a thin anchor family (sslc.search.baselines)")
    parser.add_argument("--keeps", default=KEEPS, help="CNN channel shares to compare (1: the CNN whole)")
    parser.add_argument("--retrain-steps", type=int, default=RETRAIN_STEPS)
    parser.add_argument("--quick", action="store_true", help="quick fixture, two keeps, a few steps (smoke test)")
    add_recipe_option(parser)
    args = parser.parse_args(argv)
    probe_epochs, max_probe_train, search_steps = PROBE_EPOCHS, MAX_PROBE_TRAIN, SEARCH_STEPS
    if args.quick:  # the quick fixture is 2 layers of 128: a larger budget for its thin shapes
        args.budget, args.keeps, args.retrain_steps = "70%", f"1,{WARM_START_CONV_KEEP}", 2
        probe_epochs, max_probe_train, search_steps = 1, 12, 2
    keeps = [float(k) for k in args.keeps.split(",")]
    if 1.0 not in keeps or WARM_START_CONV_KEEP not in keeps:
        parser.error(f"--keeps must hold 1 and the warm start's {WARM_START_CONV_KEEP:g} (the headline's pair)")
    logging.getLogger("sslc").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    started = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)
    seconds = fixture.budget_seconds
    probe_train, probe_heldout = fixture.phone_probe_files(max_probe_train)
    probe = ProbeSettings("ctc", epochs=probe_epochs, device="cpu")
    errors = {}
    with tempfile.TemporaryDirectory(prefix="sslc-cnn-keep-") as tmp:
        root = Path(tmp)
        # A one-trial study at the budget: what the retrain plan (anchor_margin's) is made from.
        run_search(SearchSettings(teacher=str(fixture.teacher_dir), data=str(fixture.train_dir), budget=args.budget,
                                  budget_seconds=seconds, trials=1, steps=search_steps, name="cnn-keep",
                                  run_dir=root / "run", baselines=False, report=False, quiet=True,
                                  warm_start=False))
        run = open_run(root / "run")
        context = prepare_context(run)
        teacher = context.teacher.config
        budget = parse_budget(args.budget).resolve(count_macs(teacher, seconds=seconds).total)
        plan = retrain_plan(run, recipe="quick", steps=args.retrain_steps)
        print(f"teacher: fixture {'quick' if args.quick else args.teacher_recipe}; {args.family} at {args.budget} = {budget / 1e9:.4f} GMACs "
              f"({seconds:g} s); retrained {args.retrain_steps} steps (quick), probe {len(probe_train)} training "
              f"files, {len(probe_heldout)} held-out-voice files, {probe_epochs} epochs")
        print(f"  {'CNN keep':>8s} {'shape':30s} {'MACs':>7s} {'loss':>7s} {'PER':>7s}")
        for number, keep in enumerate(keeps):
            config = anchor_at_budget(args.family, teacher, budget, seconds, conv_keep=keep)
            loss, weights = retrain_config(run, config, -1 - number, plan, context, root / f"keep-{keep:g}")
            errors[keep] = phone_error(weights, probe_train, probe_heldout, probe)
            macs = count_macs(config.student_architecture(teacher), seconds=seconds).total
            print(f"  {keep:8g} {shape(config, teacher):30s} {macs / budget:7.1%} {loss:7.4f} {errors[keep]:7.4f}",
                  flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")
    print(f"cnn_keep: {errors[1.0] / errors[WARM_START_CONV_KEEP]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
