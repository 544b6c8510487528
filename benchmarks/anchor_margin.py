"""The claim sslc exists for, in miniature: does a search beat the anchors' shapes at equal compute?

On the trained fixture teacher (benchmarks/fixtures, recipe gpu: 3 layers, 192 wide, pretrained on synthesized
English speech), a real `sslc-search` (in-process `run_search`: Ray Tune trials, the default sampler, the
`combined` space, its short trials and evaluation protocol, its warm start) runs at 40% of the teacher's MACs
(`--budget`). Every point of its front is retrained with sslc-retrain's `retrain_trial` for RETRAIN_STEPS steps, and
sslc's point is the one with the lowest retrained held-out loss (`--pick search`: the best short-trial score,
retrained alone).
Every anchor family (`sslc.search.baselines.anchors_at_budget`: uniform pruning, DistilHuBERT's 2 layers,
LightHuBERT Small's thin uniform shape, a FitHuBERT-like thin-deep shape, ARMHuBERT-S's and STaRHuBERT's shapes),
each scaled to the budget by its own rule (within 1% below it; each anchor's MACs are printed as a share of the
budget; a family that cannot reach the budget is listed with why, not trained), is built from the same teacher
and trained by the same trainer (`train_full`, the retrain's settings) for the same steps. All of them are then
compared by a downstream measurement outside the search: sslc-probe's phoneme CTC
probe (frozen features, weighted sum of hidden states), trained on the fixture's training voices and scored by
phoneme error rate on its held-out voices. The held-out distillation loss after retraining is printed too.

Last line: `anchor_margin: X` = the best anchor's PER / the sslc point's PER (goal > 1.0: the searched
student is better than every anchor shape at the same budget).

Run time: sized for about 10 minutes on 2 idle cores; `--quick` (the quick fixture, 2 trials, a few steps) only
checks that the benchmark runs (CI runs it).

    python benchmarks/anchor_margin.py [--budget 40%] [--trials 30] [--steps 60] [--retrain-steps 300]
                                       [--probe-epochs 10] [--max-probe-train 120] [--pick retrained|search]
                                       [--teacher-recipe gpu|cpu] [--quick]

Not yet re-measured with the anchors at exactly the budget (issue 23 part 4); the figures below compared the
anchors' fixed shapes, up to 15% over the budget (their extra MACs favoured them).
Measured 2026-12-01 (2 idle cores), after the search's warm start (its first trials are the baselines' shapes as
the space's nearest configs, their FFN narrowed to the budget):
- defaults (302 s): anchor_margin 0.878. The front's best after retraining is the warm-started LightHuBERT-Small
  shape narrowed to the budget (trial 1: 3 layers x 96, 39.4% of the MACs): loss 0.643, PER 0.327, against
  fithubert-like (42.3%) 0.592 / 0.287 and lighthubert-small (44.2%) 0.622 / 0.332. Without a warm start that
  fits the budget, the same day: 0.448 (defaults; sslc's point 2 layers x 96, loss 0.828), 0.359 (a first warm
  start that dropped every shape over the budget, so none was asked at 40%: 3 layers x 128, 0.809), 0.368 (45%,
  24 trials x 150 steps: 3 layers x 112, 0.811).
- `--budget 45%` (both anchor shapes within it; 465 s): 0.918. sslc's point (trial 31: 2 layers x 160, 30.1% of
  the MACs) has the lowest retrained loss of all (0.573 vs fithubert-like's 0.592) at 30% against 42% of the
  MACs, but a higher PER (0.313 vs 0.287): the distillation loss and the probe disagree between a 2-layer and a
  3-layer student here.
Why the short-trial search did poorly before: `benchmarks/knob_costs.py` (fithubert-like, one knob changed) found
that halving the fixture's CNN channels raises the loss from 0.59 to 0.91 for 7% fewer MACs, while one head per
layer (29.5% of the MACs: 0.60) or 2 layers (32.3%: 0.60) cost almost nothing; ranks cost little (0.59-0.61). With
one conv_keep knob per CNN layer (7), a sampler almost never keeps the whole CNN, so 30 trials hardly visit the
anchors' region; the warm start puts it in the study from the first trials.

Earlier measurements (before the warm start and the retrain-the-front pick), goal missed every time:

- defaults (30 trials x 60 steps, 300 retrain steps, probe 10 epochs on 120 files; 299 s): anchor_margin 0.478.
  The search's best point (trial 32: 2 of 3 layers, width 96, 16.5% of the MACs) retrained to loss 0.784 and PER
  0.601; uniform (40%) 0.895 / 0.921; lighthubert-small (44%, 3 layers x 96) 0.622 / 0.332; fithubert-like (42%,
  3 layers x 128, FFN 128) 0.592 / 0.287.
- 12 trials x 30 steps, 150 retrain steps (114 s): 0.453 (best point 2 layers x 96, 31%).
- before every student's heads started fitted, 8 trials x 40 steps, 300 retrain steps (1475 s, shared cores):
  0.391 (best point 2 layers x 160, 32%).
(The 2026-11-30 reading, that short trials rank depth wrongly, did not survive the knob study above: at 2 layers
the fithubert-like shape loses almost nothing. Those searches' configs were not kept, so that their students had
pruned CNN layers is inferred, not checked: a sampled config keeps all 7 CNN layers whole with probability
(1/7)^7.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from benchmarks.fixtures import add_recipe_option, trained_teacher  # noqa: E402
from sslc.budget import parse_budget  # noqa: E402
from sslc.compress import CompressionConfig  # noqa: E402
from sslc.metrics import count_macs  # noqa: E402
from sslc.probes import ProbeSettings, train_and_heldout  # noqa: E402
from sslc.probes.results import probe_target, resolve_targets  # noqa: E402
from sslc.runs.export import RESULT_FILE  # noqa: E402
from sslc.runs.record import open_run  # noqa: E402
from sslc.runs.student_file import WEIGHTS_FILE  # noqa: E402
from sslc.runs.trials import Outcome, TrialRecord  # noqa: E402
from sslc.search.baselines import anchors_at_budget  # noqa: E402
from sslc.search.retrain import prepare_context, retrain_plan, retrain_trial  # noqa: E402
from sslc.search.runner import SearchSettings, run_search  # noqa: E402

BUDGETS = "25%,40%,55%"
TRIALS = 12
STEPS = 60
FINALISTS = 3
RECIPE = "quick"
RETRAIN_STEPS = 300
PROBE_EPOCHS = 10
MAX_PROBE_TRAIN = 120


def probe_files(examples, root: Path) -> Path:
    """A directory of links to `examples` (audio and label sidecar, voice folders kept): the finalists' probe
    corpus, as a user would pass one to --probe-data."""
    for example in examples:
        source = Path(example.audio.path)
        folder = root / source.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        for path in (source, source.with_suffix(".phn")):
            (folder / path.name).symlink_to(path)
    return root


def shape(config: CompressionConfig, teacher_config) -> str:
    arch = config.student_architecture(teacher_config)
    heads, ffn = sorted({layer.heads for layer in arch.layers}), sorted({layer.ffn_dim for layer in arch.layers})

    def spread(values):
        return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"

    cnn = sum(c.channels for c in arch.conv_layers) / sum(c.channels for c in teacher_config.conv_layers)
    return (f"{arch.num_layers}x{arch.embed_dim} h{spread(heads)} ffn{spread(ffn)}"
            + (f" cnn{cnn:.0%}" if cnn < 1 else ""))


def one_budget(budget_text: str, args, fixture, seconds: float, probe_train, probe_heldout, root: Path) -> dict:
    """sslc's pick at one budget by `sslc-search --finalists`, against every anchor family at that budget, each
    retrained by the same plan and probed by the same probe."""
    started = time.perf_counter()
    select_dir = probe_files(probe_train, root / "probe-select")
    settings = SearchSettings(
        teacher=str(fixture.teacher_dir), data=str(fixture.train_dir), budget=budget_text, budget_seconds=seconds,
        trials=args.trials, steps=args.steps, name="anchor-margin", run_dir=root / "run", baselines=False,
        report=False, seed=args.seed, quiet=True, finalists=args.finalists, finalist_recipe=args.recipe,
        finalist_steps=args.retrain_steps, probe_data=str(select_dir), probe_task="ctc", probe_units="tokens",
        probe_epochs=args.probe_epochs,
    )
    result = run_search(settings)  # the search, then its finalist stage: exactly what sslc-search --finalists does
    finalists = result.finalists
    searched = time.perf_counter() - started
    run = open_run(result.run_dir)
    context = prepare_context(run)
    teacher_config = context.teacher.config
    teacher_macs = count_macs(teacher_config, seconds=seconds).total
    budget = parse_budget(budget_text).resolve(teacher_macs)
    plan = retrain_plan(run, recipe=args.recipe, steps=args.retrain_steps)
    winner = finalists["winner"]
    used = json.loads((run.retrain_dir(winner) / RESULT_FILE).read_text())["trainer"]
    assert used == plan.trainer.to_dict(), "the anchors must be retrained exactly as the finalists were"
    print(f"budget {budget_text} = {budget / 1e9:.4f} GMACs ({seconds:g} s): search of {args.trials} trials x "
          f"{args.steps} steps and {len(finalists['finalists'])} finalists ({finalists['label']}) in {searched:.0f} s")
    for row in finalists["finalists"]:
        config = CompressionConfig.from_dict(run.trial(row["trial"]).config)
        print(f"  finalist trial {row['trial']:3d}: {shape(config, teacher_config):28s} {row['macs'] / budget:6.1%} of "
              f"the budget, short-trial {row['short_trial_loss']:.4f}, retrained {row['retrained_loss']:.4f}, "
              f"selection PER {row['probe_metric']:.4f}")
    print(f"  {finalists['winner_by']} picks trial {winner}"
          + (f" (lowest retrained loss: trial {finalists['lowest_retrained_loss']})"
             if finalists["lowest_retrained_loss"] != winner else ""))

    models = [(f"sslc (trial {winner})", CompressionConfig.from_dict(run.trial(winner).config),
               run.record.retrains[winner]["heldout_loss"], run.retrain_dir(winner) / WEIGHTS_FILE)]
    anchors, unreachable = anchors_at_budget(teacher_config, budget, seconds)
    for name, reason in unreachable.items():
        print(f"  anchor {name}: not compared ({reason})")
    for number, (name, config) in enumerate(anchors.items()):
        # An anchor is not a trial of the study: retrained by the same driver and plan into its own directory.
        trial = TrialRecord(number=-1 - number, state=TrialState.COMPLETE, outcome=Outcome.COMPLETE, values=None,
                            params={}, config=config.to_dict())
        out = root / "anchors" / name
        summary = retrain_trial(run, trial, plan, context, out_dir=out, progress=False)
        models.append((f"anchor {name}", config, summary["heldout_loss"], out / WEIGHTS_FILE))

    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = ProbeSettings("ctc", epochs=args.probe_epochs, device=device)
    print(f"  {'model':32s} {'shape':28s} {'MACs':>7s} {'loss':>7s} {'PER':>7s}   (PER: held-out voices)")
    errors = {}
    for label, config, loss, weights in models:
        target = resolve_targets([str(weights)], False, device)[0]
        errors[label] = probe_target(target, probe_train, probe_heldout, probe, "tokens")["metric"]
        macs = count_macs(config.student_architecture(teacher_config), seconds=seconds).total
        print(f"  {label:32s} {shape(config, teacher_config):28s} {macs / budget:7.1%} {loss:7.4f} "
              f"{errors[label]:7.4f}", flush=True)
    ours = errors[models[0][0]]
    rest = {k: v for k, v in errors.items() if k != models[0][0]}
    if not rest:
        print(f"  no anchor family reaches {budget_text}")
        return {"budget": budget_text, "margin": float("nan")}
    best = min(rest, key=rest.get)
    margin = rest[best] / ours
    print(f"  {budget_text}: best {best} PER {rest[best]:.4f} / sslc {ours:.4f} = margin {margin:.3f} "
          f"({time.perf_counter() - started:.0f} s)")
    return {"budget": budget_text, "margin": margin, "best_anchor": best}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default=BUDGETS, help="comma-separated budgets, e.g. 25%%,40%%,55%%")
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--steps", type=int, default=STEPS, help="short-trial steps of the search")
    parser.add_argument("--finalists", type=int, default=FINALISTS, help="sslc-search --finalists K")
    parser.add_argument("--recipe", default=RECIPE, help="the finalists' and the anchors' retrain recipe")
    parser.add_argument("--retrain-steps", type=int, default=RETRAIN_STEPS)
    parser.add_argument("--probe-epochs", type=int, default=PROBE_EPOCHS)
    parser.add_argument("--max-probe-train", type=int, default=MAX_PROBE_TRAIN)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="quick fixture, 2 trials, few steps (smoke test)")
    add_recipe_option(parser)
    args = parser.parse_args(argv)
    if args.quick:  # one budget: the quick fixture's smallest configs cost more than 25% of it
        args.budgets, args.trials, args.steps, args.finalists, args.retrain_steps = "55%", 3, 2, 2, 2
        args.probe_epochs, args.max_probe_train = 1, 12
    logging.getLogger("sslc").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    started = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)
    seconds = float((fixture.info.get("settings") or {}).get("budget_seconds", 10.0))
    probe_train, probe_heldout = train_and_heldout(fixture.train_dir, "ctc", "tokens", fixture.heldout_dir)
    probe_train = probe_train[:: max(1, len(probe_train) // args.max_probe_train)][: args.max_probe_train]
    print(f"teacher: fixture {args.teacher_recipe} ({fixture.teacher_dir}); MACs for {seconds:g} s; probe: "
          f"{len(probe_train)} training files, {len(probe_heldout)} held-out-voice files, {args.probe_epochs} epochs")
    results = []
    for budget_text in args.budgets.split(","):
        with tempfile.TemporaryDirectory(prefix="sslc-anchor-") as tmp:
            results.append(one_budget(budget_text, args, fixture, seconds, probe_train, probe_heldout, Path(tmp)))
    print(f"total {time.perf_counter() - started:.0f} s; margins: "
          + ", ".join(f"{r['budget']} {r['margin']:.3f}" for r in results))
    print(f"anchor_margin: {min(r['margin'] for r in results):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
