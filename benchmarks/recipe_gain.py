"""Does the distilhubert-style recipe retrain a searched point better than `quick`? Phone error rate of each.

On the trained fixture teacher (`benchmarks/fixtures`, `--teacher-recipe gpu|cpu|mini`), a point is searched the
search's way, at small scale: `--configs` random configs of the `combined` space between 30% and 50% of the
teacher's MACs, each short-trialled by the search's trainer (`--steps`, its batch of 4 x 2 s crops); the one with
the lowest short-trial score (the search's held-out loss) is the point. It is then retrained from its compressed
start twice, by `sslc.trainers.recipes` as `sslc-retrain` does (`apply_recipe`, `train_full`, the best
validated weights kept):
- `quick`: 10x the short trial's steps with its settings (batch 8 s of audio, lr 2e-4, cosine decay);
- `distilhubert`, scaled down to fit 2 cores: the same number of steps as quick (`--distil-steps`, not 200k) and
  `--distil-batch-seconds` of audio a step (default 16 s = 8 x 2 s crops, not 288 s = 24 x 12 s: the fixture's
  utterances are a few seconds long), with the recipe's own lr 2e-4, 7% linear warm-up, linear decay, clipping
  at 10. So it sees twice quick's audio: the gain measured is the recipe's as scaled, not the schedule's alone.
Both students are probed frozen with the project's phone probe (sslc-probe's ctc task on the fixture's phone
labels, as `probe_fidelity.py` and `teacher_probe.py` run it) on the held-out voices.

    python benchmarks/recipe_gain.py [--quick] [--teacher-recipe gpu] [--configs 3] [--steps 40]

Last line: `recipe_gain: X` = quick PER / distilhubert PER (goal > 1.0: the longer recipe helps).

Measured (2026-12-03, 2 cores shared with two other helpers' tests and a teacher pretraining, load 8-11):
- `--quick` as first written (quick fixture teacher, 2 configs of 1 step, 10 retraining steps each, 1 probe
  epoch on 12 files): recipe_gain 1.006 (PER 2.783 vs 2.766: a smoke test, not a figure), 275 s (56 s of CPU:
  the rest waiting for the cores). `--quick` now retrains 2 steps each.
- the default run on the gpu fixture teacher (`--teacher-recipe gpu`), 2026-12-03 17:35 UTC on 2 idle cores: 91 s
  in all. The point: 48% of the MACs (3 layers, hidden 144, heads 2/2/3, low-rank attention and FFN, CNN of 8-28
  channels; short-trial score 0.9712 against 0.9813 and 0.9860). `quick` (400 steps of 8 s, cosine): best held-out
  loss 0.8350, phone error rate 0.4669 (32 s); `distilhubert` scaled (400 steps of 16 s, 7% warm-up, linear decay):
  0.8055, 0.4557 (48 s). recipe_gain: 1.025 (goal met, narrowly: twice the audio bought 2.4% of the error rate).
  An earlier attempt on cores shared with three other jobs had not finished the distilhubert retrain after 12
  minutes: the 10-minute sizing holds on idle cores only. Not yet run on the mini-HuBERT (the default teacher).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks (probe_fidelity)

import torch  # noqa: E402
from probe_fidelity import draw_configs  # noqa: E402

from benchmarks.fixtures import add_recipe_option, trained_teacher  # noqa: E402
from sslc.probes import ProbeSettings, run_probe  # noqa: E402
from sslc.probes.results import encode_fn  # noqa: E402
from sslc.runs.student_file import ExportedStudent  # noqa: E402
from sslc.search.inputs import prepare_inputs  # noqa: E402
from sslc.search.retrain import HEAD_FIT_FRAMES_PER_DIM, VALIDATIONS_PER_RUN  # noqa: E402
from sslc.search.runner import SearchSettings, trainer_config  # noqa: E402
from sslc.spaces import SearchSpace  # noqa: E402
from sslc.trainers import load_checkpoint, run_short_trial, train_full  # noqa: E402
from sslc.trainers.recipes import apply_recipe  # noqa: E402


def retrained(context, config, short, recipe: str, out: Path, **overrides):
    """The point's student retrained by `recipe` (+ overrides) from its compressed start: (best student, result)."""
    trainer, resolved = apply_recipe(short, recipe, **overrides)
    trainer = replace(trainer, eval_every=max(1, trainer.steps // VALIDATIONS_PER_RUN), checkpoint_every=trainer.steps,
                      log_every=max(1, trainer.steps // 50), head_fit_frames_per_dim=HEAD_FIT_FRAMES_PER_DIM)
    student = context.build_student(config, quantize=False)
    result = train_full(student, context.targets(), context.data.train, context.data.heldout, trainer, out,
                        progress=False, kept_layers=config.layers)
    if result.best_checkpoint:
        student.load_state_dict(load_checkpoint(result.best_checkpoint)["student"])
    return student.eval().requires_grad_(False), result, resolved


def phone_error_rate(student, probe_train, probe_heldout, epochs: int) -> float:
    extractor = ExportedStudent(student, student.config)
    return run_probe(encode_fn(extractor), student.config.num_layers + 1, student.config.embed_dim, probe_train,
                     probe_heldout, ProbeSettings("ctc", epochs=epochs)).metric


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick fixture, few steps (smoke test)")
    parser.add_argument("--configs", type=int, default=3, help="random configs short-trialled to find the point")
    parser.add_argument("--steps", type=int, default=40, help="short-trial steps (quick retrains 10x this)")
    parser.add_argument("--distil-steps", type=int, help="distilhubert's steps (default: quick's)")
    parser.add_argument("--distil-batch-seconds", type=float, default=16.0)
    parser.add_argument("--probe-epochs", type=int, default=15)
    parser.add_argument("--max-probe-train", type=int, default=240, help="probe training files (every voice kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    add_recipe_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.steps, args.probe_epochs, args.max_probe_train = 2, 1, 1, 12
        args.distil_steps = 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)
    probe_train, probe_heldout = fixture.phone_probe_files(args.max_probe_train)

    with tempfile.TemporaryDirectory() as tmp:
        context = prepare_inputs(
            str(fixture.teacher_dir), str(fixture.train_dir), Path(tmp), SearchSettings.crop_seconds, args.seed
        )
        search = SearchSettings(budget="100%", steps=args.steps, seed=args.seed)
        short = replace(trainer_config(search), device="cpu", num_threads=args.threads)
        tried = []
        for config, share in draw_configs(SearchSpace.load("combined"), context.teacher.config, args.configs, 0.3,
                                          0.5, args.seed, fixture.budget_seconds):
            student = context.build_student(config, quantize=False)
            score = run_short_trial(student, context.targets(), context.data.train, context.data.heldout, short,
                                    kept_layers=config.layers).heldout_loss
            tried.append((score, share, config))
            print(f"short trial: {share:.0%} of the teacher's MACs, score {score:.4f}", flush=True)
        score, share, config = min(tried, key=lambda t: t[0])
        print(f"the point: {share:.0%} of the MACs, short-trial score {score:.4f}: {config.to_dict()}", flush=True)

        errors = {}
        distil_steps = args.distil_steps or short.steps * 10
        quick = {"steps": 2} if args.quick else {}  # --quick: 2 steps each (quick's own length is 10x the trial's)
        for recipe, overrides in (("quick", quick),
                                  ("distilhubert", {"steps": distil_steps, "batch_seconds": args.distil_batch_seconds,
                                                    "crop_seconds": SearchSettings.crop_seconds})):
            t0 = time.perf_counter()
            student, result, resolved = retrained(context, config, short, recipe, Path(tmp) / recipe, **overrides)
            errors[recipe] = phone_error_rate(student, probe_train, probe_heldout, args.probe_epochs)
            best = min(v for _, v, _ in result.validation) if result.validation else result.heldout_loss
            print(f"{recipe}: {resolved['steps']} steps of {resolved['batch_seconds']:g} s (lr {resolved['lr']:g}, "
                  f"warm-up {resolved['warmup']:g}, {resolved['decay']} decay, clip {resolved['grad_clip']}): "
                  f"best held-out loss {best:.4f}, phone error rate {errors[recipe]:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    print(f"done in {time.perf_counter() - started:.0f}s on {args.threads} threads")
    print(f"recipe_gain: {errors['quick'] / max(errors['distilhubert'], 1e-9):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
