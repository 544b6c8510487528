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
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks.fixtures import add_recipe_option, trained_teacher  # noqa: E402
from sslc.budget import parse_budget  # noqa: E402
from sslc.compress import CompressionConfig  # noqa: E402
from sslc.metrics import count_macs, count_params  # noqa: E402
from sslc.probes import ProbeSettings, run_probe, train_and_heldout  # noqa: E402
from sslc.probes.results import encode_fn  # noqa: E402
from sslc.runs.record import open_run  # noqa: E402
from sslc.runs.student_file import ExportedStudent  # noqa: E402
from sslc.search.baselines import anchors_at_budget  # noqa: E402
from sslc.search.retrain import prepare_context, retrain_plan, retrain_trial  # noqa: E402
from sslc.search.runner import SearchSettings, run_search  # noqa: E402
from sslc.trainers import train_full  # noqa: E402

BUDGET = "40%"
TRIALS = 30
STEPS = 60
RETRAIN_STEPS = 300
PROBE_EPOCHS = 10
MAX_PROBE_TRAIN = 120


def probe_error(student, probe_train, probe_heldout, epochs: int) -> float:
    student = student.cpu().eval().requires_grad_(False)
    extractor = ExportedStudent(student, student.config)
    outcome = run_probe(encode_fn(extractor), student.config.num_layers + 1, student.config.embed_dim,
                        probe_train, probe_heldout, ProbeSettings("ctc", epochs=epochs))
    return outcome.metric


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default=BUDGET, help="MACs budget of the search, e.g. 40%%")
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--steps", type=int, default=STEPS, help="short-trial steps of the search")
    parser.add_argument("--retrain-steps", type=int, default=RETRAIN_STEPS)
    parser.add_argument("--probe-epochs", type=int, default=PROBE_EPOCHS)
    parser.add_argument("--max-probe-train", type=int, default=MAX_PROBE_TRAIN)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pick", choices=("retrained", "search"), default="retrained",
                        help="sslc's point: the front's best after retraining every point (default), or the best "
                             "short-trial score")
    parser.add_argument("--quick", action="store_true", help="quick fixture, 2 trials, few steps (smoke test)")
    add_recipe_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.steps, args.retrain_steps, args.probe_epochs, args.max_probe_train = 2, 2, 2, 1, 8
    logging.getLogger("sslc").setLevel(logging.WARNING)
    torch.set_num_threads(2)
    started = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)
    probe_train, probe_heldout = train_and_heldout(fixture.train_dir, "ctc", "tokens", fixture.heldout_dir)
    probe_train = probe_train[:: max(1, len(probe_train) // args.max_probe_train)][: args.max_probe_train]

    with tempfile.TemporaryDirectory(prefix="sslc-anchor-") as tmp:
        settings = SearchSettings(
            teacher=str(fixture.teacher_dir), data=str(fixture.train_dir), budget=args.budget, trials=args.trials,
            steps=args.steps, name="anchor-margin", run_dir=Path(tmp) / "run", baselines=False, report=False,
            seed=args.seed, quiet=True,
        )
        result = run_search(settings)
        searched = time.perf_counter() - started
        run = open_run(result.run_dir)
        front = run.front()
        best = min(front, key=lambda t: (t.heldout_loss, t.number))  # what the short trials rank first
        context = prepare_context(run)
        plan = retrain_plan(run, steps=args.retrain_steps)
        # Every model keeps its last weights (no best-validated pick): the baselines below are trained alike.
        plan.trainer = trainer = replace(plan.trainer, eval_every=None)
        teacher_config = context.teacher.config
        teacher_macs = count_macs(teacher_config, seconds=10.0).total
        budget = parse_budget(args.budget).resolve(teacher_macs)
        print(f"teacher: fixture ({teacher_config.num_layers} layers, {teacher_config.embed_dim} wide, "
              f"{teacher_macs / 1e9:.3f} GMACs / 10 s); budget {args.budget} = {budget / 1e9:.3f} GMACs; search of "
              f"{args.trials} trials x {args.steps} steps in {searched:.0f} s, front of {len(front)}, best trial "
              f"{best.number} (score {best.heldout_loss:.4f}); everything retrained for {trainer.steps} steps")

        rows = []
        # As a user would (sslc-retrain --pareto): retrain the front's points and keep the one whose retrained
        # held-out loss is lowest; with --pick search, only the point the short trials rank first.
        candidates = front if args.pick == "retrained" else [best]
        retrained = []
        for trial in sorted(candidates, key=lambda t: t.number):
            t0 = time.perf_counter()
            summary = retrain_trial(run, trial, plan, context, progress=False)
            retrained.append((summary["heldout_loss"], trial, time.perf_counter() - t0))
            arch = CompressionConfig.from_dict(trial.config).student_architecture(context.teacher.config)
            print(f"  front trial {trial.number:3d}: {arch.num_layers} layers x {arch.embed_dim}, short-trial score "
                  f"{trial.heldout_loss:.4f}, retrained {summary['heldout_loss']:.4f} ({retrained[-1][2]:.0f} s)")
        loss, chosen, seconds = min(retrained, key=lambda r: (r[0], r[1].number))
        student = context.build_student(CompressionConfig.from_dict(chosen.config), quantize=False)
        student.load_state_dict(_retrained_weights(run, chosen.number))
        label = f"sslc search, trial {chosen.number}" + (" (short-trial pick)" if chosen is best else "")
        rows.append((label, CompressionConfig.from_dict(chosen.config), loss, student, seconds))

        anchors, unreachable = anchors_at_budget(teacher_config, budget, 10.0)
        for name, reason in unreachable.items():
            print(f"anchor {name}: not compared ({reason})")
        for name, config in anchors.items():
            arch = config.student_architecture(teacher_config)
            print(f"anchor {name}: {arch.num_layers} layers x {arch.embed_dim}, heads {config.heads[0]}, FFN "
                  f"{config.ffn[0]}, {count_macs(arch, seconds=10.0).total / budget:.2%} of the budget")
            t0 = time.perf_counter()
            student = context.build_student(config, quantize=False)
            trained = train_full(student, context.targets(), context.data.train, context.data.heldout, trainer,
                                 Path(tmp) / "baselines" / name, progress=False, kept_layers=config.layers)
            rows.append((f"anchor {name}", config, trained.heldout_loss, student, time.perf_counter() - t0))

        print(f"{'student':34s} {'MACs':>6s} {'params':>8s} {'width':>5s} {'depth':>5s} {'loss':>7s} {'PER':>7s}")
        errors = {}
        for label, config, loss, student, seconds in rows:
            t0 = time.perf_counter()
            errors[label] = probe_error(student, probe_train, probe_heldout, args.probe_epochs)
            arch = config.student_architecture(teacher_config)
            share = count_macs(arch, seconds=10.0).total / teacher_macs
            print(f"{label:34s} {share:6.1%} {count_params(student) / 1e6:7.3f}M {arch.embed_dim:5d} "
                  f"{arch.num_layers:5d} {loss:7.4f} {errors[label]:7.4f}  (train {seconds:.0f} s, probe "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)

    ours = errors[rows[0][0]]
    baselines = {k: v for k, v in errors.items() if k != rows[0][0]}
    print(f"total {time.perf_counter() - started:.0f} s")
    if not baselines:
        print("no anchor family reaches the budget")
        print("anchor_margin: nan")
        return 0
    best_baseline = min(baselines, key=baselines.get)
    print(f"best anchor: {best_baseline} (PER {baselines[best_baseline]:.4f}) vs sslc's {ours:.4f}")
    print(f"anchor_margin: {baselines[best_baseline] / ours:.3f}")
    return 0


def _retrained_weights(run, number: int) -> dict:
    """The retrained student's weights, from the file sslc-retrain wrote."""
    from sslc.runs.student_file import WEIGHTS_FILE, read_student_file

    return read_student_file(run.retrain_dir(number) / WEIGHTS_FILE)["state_dict"]


if __name__ == "__main__":
    sys.exit(main())
