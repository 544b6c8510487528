"""`sslc-search`: find the best compressions of a teacher under a compute budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from sslc.cli.common import ArgumentParser, cli_entry
from sslc.search.settings import (
    ANYTIME_SPACE,
    DEMO_DATA,
    LATENCY_DEVICES,
    MACS_CONVENTIONS,
    MODES,
    OBJECTIVE_SETS,
    PRESET_DIR,
    SAMPLERS,
    SearchSettings,
    parse_fidelities,
    parse_gpus_per_trial,
    preset_names,
)

# Defaults, choices and checks live with the settings (one place); the CLI only spells them as options.
DEFAULTS = SearchSettings(budget="")


SPACE_EPILOG = """\
space files (YAML or JSON): each knob is a fixed value, a list of choices, or a range {min, max, step};
"all" stands for the teacher's size, and a knob left out keeps the teacher's size. For example:
  depth: {min: 2, max: all}             # layers kept
  layer_selection: [evenly, first]      # which layers a shallower student keeps
  heads: {min: 1, max: all}             # attention heads per layer (min 0: a layer's attention can be removed)
  ffn_keep: {min: 0.1, max: 1.0, step: 0.05}      # FFN units kept (0: the FFN block is removed)
  attn_rank: [full, 0.75, 0.5]          # low rank, as a share of the break-even rank
  ffn_rank: [full, 0.75, 0.5]
  conv_keep: {min: 0.25, max: 1.0, step: 0.125}   # CNN front-end channels kept
  hidden: {min: 0.5, max: 1.0, step: 0.0625}      # hidden (residual) width kept, rounded to the pos conv's groups
  sparsity: 0.0
  quantize: [none, int8]
  head_importance: [l1, data, diagonal]  # which heads are kept (l1: weights; data: |activation x gradient|;
  ffn_importance: l1                     #   diagonal: attention mass near the diagonal); data-driven scores are
  conv_importance: l1                    #   computed once per teacher and data and cached
  hidden_importance: [l1, data]          # which residual channels (data: mean |activation| over the stream)
The presets are in %(presets)s."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help, except where there is none to show (flags, unset options)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    presets = preset_names()
    parser = ArgumentParser(
        prog="sslc-search",
        description="Search compressions of a speech SSL teacher under a budget: Ray Tune runs short distillation\n"
        "trials, Optuna picks configs, the study lives in Optuna storage (watch it with sslc-dashboard).",
        epilog=SPACE_EPILOG % {"presets": PRESET_DIR},
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--teacher", default=DEFAULTS.teacher,
                        help="transformers checkpoint dir or hub id, torchaudio:BUNDLE, or random:<preset>")
    parser.add_argument("--data", required=True,
                        help="audio directory (searched recursively for .wav/.flac/.ogg/.mp3), fairseq TSV manifest, "
                        f"or '{DEMO_DATA}' for synthetic audio (no default, so a search never trains on synthetic "
                        "audio by accident)")
    parser.add_argument("--budget", required=True,
                        help="MACs (30GMACs, 500MMACs, 3e10) or a share of the teacher's MACs (40%%)")
    parser.add_argument("--budget-seconds", type=float, default=DEFAULTS.budget_seconds, help="audio length the MACs are counted for")
    parser.add_argument("--macs-convention", default=DEFAULTS.macs_convention, choices=MACS_CONVENTIONS,
                        help="how --budget counts MACs: seconds (one waveform of --budget-seconds) or superb (summed "
                        "over the SUPERB profiler's 32 LibriSpeech utterances, as published tables quote them: "
                        "HuBERT Base 1669G)")
    parser.add_argument("--max-params", help="also cap parameters (e.g. 25M)")
    parser.add_argument("--max-latency-ms", type=float, help="also cap measured latency for --budget-seconds of audio")
    parser.add_argument("--space", default=None,
                        help=f"a preset ({', '.join(presets)}) or a YAML/JSON space file (format below; the anytime "
                        f"mode's default is {ANYTIME_SPACE}) (default: {DEFAULTS.space})")
    parser.add_argument("--mode", default=DEFAULTS.mode, choices=MODES,
                        help="trials: a short distillation per config; anytime: one elastic student distilled once "
                        f"(once-for-all), every config scored on its shared weights (default space there: "
                        f"{ANYTIME_SPACE}; export the whole front as one model with sslc-export --anytime)")
    parser.add_argument("--trials", type=int, default=DEFAULTS.trials,
                        help="trained trials (over-budget configs do not count; in the anytime mode, configs scored)")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, help="distillation steps per short trial")
    parser.add_argument("--fidelities", default=",".join(map(str, DEFAULTS.fidelities)),
                        help="multi-fidelity search: rungs as multiples of --steps, e.g. 1,3,9; every trial trains "
                        "--steps and goes on to the next rung, in the same process, only when it is in the top third "
                        "of the trials scored at its rung by non-dominated rank on (held-out loss, MACs); 1: every "
                        "trial trains --steps")
    parser.add_argument("--anytime-steps", type=int,
                        help="--mode anytime: once-for-all distillation steps (default: 10 x --steps)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="training crops per step")
    parser.add_argument("--crop-seconds", type=float, default=DEFAULTS.crop_seconds, help="training crop length in seconds")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate of the short trials")
    parser.add_argument("--targets", default=DEFAULTS.targets,
                        help="teacher layers every candidate is trained and scored on, score = mean over them: "
                        "'default' (1/3, 2/3 and the end: 4,8,12 of 12), 'all', or a list such as 4,8,12")
    parser.add_argument("--name", help="run name; reusing one resumes that search (default: a timestamp)")
    parser.add_argument("--run-dir", type=Path, help="run directory (default: runs/<name>)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<run_dir>/study.db)")
    parser.add_argument("--objectives", default=",".join(DEFAULTS.objectives), choices=OBJECTIVE_SETS,
                        metavar="{" + " | ".join(OBJECTIVE_SETS) + "}", help="what the search minimises")
    parser.add_argument("--sampler", default=DEFAULTS.sampler, choices=SAMPLERS, help="Optuna sampler")
    parser.add_argument("--ray-address", help="join an existing Ray cluster (e.g. auto or host:6379)")
    parser.add_argument("--storage-path", help="Ray Tune's experiment state and trial logs (default: <run_dir>/ray; "
                        "on a multi-node cluster a shared path or s3://...; trial files come back through Ray anyway)")
    parser.add_argument("--cpus-per-trial", type=float, default=DEFAULTS.cpus_per_trial, help="CPU cores each trial reserves in Ray")
    parser.add_argument("--gpus-per-trial", type=parse_gpus_per_trial, default=DEFAULTS.gpus_per_trial,
                        help="GPUs (or a share of one) each trial and baseline reserves; auto: where Ray sees GPUs, "
                        "as many trials per GPU as fit by the measured memory of a training step of the space's "
                        "largest config (capped by the CPUs), 0 where it sees none")
    parser.add_argument("--concurrency", type=int, help="trials at once (default: as many as the resources allow)")
    parser.add_argument("--no-early-stopping", action="store_true", help="train every trial to the end")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip the short trials of simple baselines (uniform pruning, 2-layer DistilHuBERT-like)")
    parser.add_argument("--no-warm-start", action="store_true",
                        help="do not ask the anchor families' shapes at the budget (as the space's nearest configs) as the first trials")
    parser.add_argument("--latency-repeats", type=int, default=DEFAULTS.latency_repeats, help="timed forward passes per trial (median)")
    parser.add_argument("--latency-device", default=DEFAULTS.latency_device, choices=LATENCY_DEVICES,
                        help="the device the student is meant for: its latency is measured there (cuda: the trial's "
                        "GPU), while no other trial of the run uses that device")
    parser.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    parser.add_argument("--plan", action="store_true",
                        help="print the plan (corpus, teacher work, cache size and free disk, per-trial compute, devices, "
                        "a GPU projection) and exit without creating a study")
    parser.add_argument("--cache-limit",
                        help="most disk the teacher-target cache may take (e.g. 20GB; default: the free disk); training "
                        "targets that would not fit are computed live on each trial's device")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the sampler, the data split and random teachers")
    finalists = parser.add_argument_group(
        "the pick after retraining", "end the search by retraining K trials near the budget and naming the "
        "winner (lowest probe error when probed, else lowest retrained loss) in pareto.json and the report")
    finalists.add_argument("--finalists", type=int, metavar="K",
                           help="retrain K trials near the budget (between half the budget and the budget: the "
                           "lowest short-trial loss, the best of the farthest depth, its twin with the other CNN "
                           "(cut / whole: the closest Transformer at its depth), the farthest depths left; then the "
                           "lowest left)")
    # The recipe's name is checked by sslc.trainers.recipes (its one place) before the search: no torch import here.
    finalists.add_argument("--finalist-recipe", default=DEFAULTS.finalist_recipe,
                           help="sslc-retrain's recipe for the finalists: quick, distilhubert or dphubert")
    finalists.add_argument("--finalist-steps", type=int, help="the finalists' training steps (default: the recipe's)")
    finalists.add_argument("--probe-data", help="labelled audio (as sslc-probe --data): probe each retrained finalist "
                           "and pick the winner by the probe")
    finalists.add_argument("--probe-heldout", help="the probe's held-out audio (default: a share of --probe-data's "
                           "speakers)")
    finalists.add_argument("--probe-task", default=DEFAULTS.probe_task, help="ctc (error rate) or classify (accuracy)")
    finalists.add_argument("--probe-units", default=DEFAULTS.probe_units, help="ctc labels: chars or tokens")
    finalists.add_argument("--probe-epochs", type=int, default=DEFAULTS.probe_epochs, help="epochs of the probe head")
    return parser


def settings_from_args(args) -> SearchSettings:
    """The parsed options as `SearchSettings`, checked (before any heavy import: a typo fails in a fraction of a
    second)."""
    space = args.space
    if space is None:
        space = ANYTIME_SPACE if args.mode == "anytime" else DEFAULTS.space
    settings = SearchSettings(
        teacher=args.teacher, data=args.data, budget=args.budget, budget_seconds=args.budget_seconds,
        macs_convention=args.macs_convention,
        max_params=args.max_params, max_latency_ms=args.max_latency_ms, space=space, mode=args.mode,
        trials=args.trials, steps=args.steps, fidelities=parse_fidelities(args.fidelities),
        anytime_steps=args.anytime_steps, batch_size=args.batch_size, crop_seconds=args.crop_seconds, lr=args.lr,
        targets=args.targets, name=args.name,
        run_dir=args.run_dir, storage=args.storage, objectives=args.objectives.split(","), sampler=args.sampler,
        ray_address=args.ray_address, storage_path=args.storage_path,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        concurrency=args.concurrency, early_stopping=not args.no_early_stopping, report=not args.no_report,
        baselines=not args.no_baselines, warm_start=not args.no_warm_start, latency_repeats=args.latency_repeats,
        latency_device=args.latency_device, cache_limit=args.cache_limit, seed=args.seed,
        finalists=args.finalists, finalist_recipe=args.finalist_recipe, finalist_steps=args.finalist_steps,
        probe_data=args.probe_data, probe_heldout=args.probe_heldout, probe_task=args.probe_task,
        probe_units=args.probe_units, probe_epochs=args.probe_epochs,
    )
    settings.check()
    return settings


@cli_entry
def main(argv: list[str] | None = None, before_training=None) -> int:
    """`before_training`: passed to `run_search` (a seam for tests of failure handling)."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    from sslc.search.runner import run_search  # heavy imports (torch, Ray) after the checks

    result = run_search(settings, before_training=before_training, plan_only=args.plan)
    if args.plan:
        return 0
    if settings.report and result.pareto:
        from sslc.dashboards import write_report  # after the search: the report reads what it recorded

        print(f"report: {write_report(result.run_dir)}")
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
