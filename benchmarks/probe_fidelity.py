"""Does the search's score rank students the way a downstream probe does? Kendall tau on the fixture teacher.

On the trained fixture teacher (`benchmarks/fixtures`), configs are drawn at random from the `combined` space until
N of them fall between 20% and 80% of the teacher's MACs. Each student is built by `compress` from the teacher
(`RunInputs.build_student`, as a search trial builds it) and short-trialled by `run_short_trial` (the search's
trainer) on the fixture's training voices; its score is the held-out distillation loss the search would record.
Then each trained student is probed frozen (sslc-probe's ctc task, phonemes) and scored on the held-out voices.
int8 configs are probed in float (the probe trains on their float weights, as the search distils them).

    python benchmarks/probe_fidelity.py [--quick] [--configs 10] [--steps 100] [--probe-epochs 15]

The score is read through public functions only, so a change of the search's score (what the trainer returns as
`heldout_loss`) is measured by simply running this again. Last line: `probe_fidelity: TAU` (goal >= 0.6).

Measured on the gpu-recipe teacher (defaults: 10 configs, 100 steps, 15 probe epochs, 240 probe files):
- before the `hidden` knob (full-width students only): tau 0.733; 1738 s on 2 cores shared with other jobs.
- `combined` with the `hidden` knob (2026-11-30; 7 of the 10 drawn students are thin, 28-49% of the MACs), heads
  of a thin student started by placing its channels back (pruned ones predicted as zero): tau -0.067. The score
  ranked the thin, deep students last (they had not recovered the pruned channels in 100 steps) while the probe
  ranked them first.
- the same with a thin student's heads started as the least-squares fit on its first batches (sslc.trainers.heads
  `fit_heads_`): tau 0.674 (goal met); 257 s on 2 idle cores (20-35 s a config), within the ~10 minutes the
  benchmarks aim at.
- every student's heads started that way (the same start whatever the shape, as the search now does): tau 0.644
  (goal met); 447 s (one config took 246 s while another benchmark shared the cores, the others 18-25 s).
Measured on the mini-HuBERT (the default teacher since 2026-12-03: 12 layers, MAC shares counted at its 2.5 s;
defaults as above; the held-out ridge-chosen head fit): tau 0.822 (goal met); 791 s on 2 cores shared with three
other jobs (57-154 s a config). The 10 drawn students cost 22-42% of the MACs; scores 0.375-0.616, probe PER
0.496-0.694; the best PER (0.496, 40% of the MACs) is second by score (0.378), the best score (0.375, 36%) third by PER.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import optuna  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from benchmarks.fixtures import add_recipe_option, trained_teacher  # noqa: E402
from sslc.metrics import count_macs  # noqa: E402
from sslc.probes import ProbeSettings, run_probe  # noqa: E402
from sslc.probes.results import encode_fn  # noqa: E402
from sslc.runs.student_file import ExportedStudent  # noqa: E402
from sslc.search.inputs import prepare_inputs  # noqa: E402
from sslc.search.runner import SearchSettings, trainer_config  # noqa: E402
from sslc.spaces import SearchSpace  # noqa: E402
from sslc.trainers import run_short_trial  # noqa: E402


def draw_configs(space, teacher_config, count: int, low: float, high: float, seed: int, seconds: float):
    """`count` configs from `space` whose students cost between `low` and `high` of the teacher's MACs (per
    `seconds` of audio)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    teacher_macs = count_macs(teacher_config, seconds=seconds).total
    chosen = []
    for _ in range(2000):
        config = space.suggest(study.ask(), teacher_config)
        share = count_macs(config.student_architecture(teacher_config), seconds=seconds).total / teacher_macs
        if low <= share <= high:
            chosen.append((config, share))
        if len(chosen) == count:
            break
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick fixture, 4 configs, few steps (smoke test)")
    parser.add_argument("--configs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=SearchSettings.steps, help="short-trial steps (the search's default)")
    parser.add_argument("--probe-epochs", type=int, default=15)
    parser.add_argument("--max-probe-train", type=int, default=240, help="probe training files (every voice kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    add_recipe_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.steps, args.probe_epochs, args.max_probe_train = 3, 2, 1, 12
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)
    probe_train, probe_heldout = fixture.phone_probe_files(args.max_probe_train)

    with tempfile.TemporaryDirectory() as tmp:
        context = prepare_inputs(
            str(fixture.teacher_dir), str(fixture.train_dir), Path(tmp), SearchSettings.crop_seconds, args.seed
        )
        teacher_config = context.teacher.config
        configs = draw_configs(SearchSpace.load("combined"), teacher_config, args.configs, 0.2, 0.8, args.seed,
                               fixture.budget_seconds)
        # The search's own short-trial settings (and protocol: default targets), on the CPU.
        search = SearchSettings(budget="100%", steps=args.steps, seed=args.seed)
        trainer = replace(trainer_config(search), device="cpu", num_threads=args.threads)
        scores, errors = [], []
        for index, (config, share) in enumerate(configs, 1):
            t0 = time.perf_counter()
            student = context.build_student(config, quantize=False)
            result = run_short_trial(student, context.targets(), context.data.train, context.data.heldout, trainer,
                                     kept_layers=config.layers)
            student = student.eval().requires_grad_(False)
            extractor = ExportedStudent(student, student.config)
            outcome = run_probe(encode_fn(extractor), student.config.num_layers + 1, student.config.embed_dim,
                                probe_train, probe_heldout, ProbeSettings("ctc", epochs=args.probe_epochs))
            scores.append(result.heldout_loss)
            errors.append(outcome.metric)
            print(f"[{index}/{len(configs)}] {share:.0%} of the teacher's MACs: score {result.heldout_loss:.4f}, "
                  f"probe PER {outcome.metric:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    tau = kendalltau(scores, errors).statistic
    print(f"{len(configs)} configs in {time.perf_counter() - started:.0f}s")
    print(f"probe_fidelity: {tau:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
