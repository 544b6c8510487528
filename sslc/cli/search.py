"""`sslc-search`: find the best compressions of a teacher under a compute budget."""

from __future__ import annotations

from pathlib import Path

from sslc.cli.common import ArgumentParser, cli_entry
from sslc.errors import UserError

OBJECTIVE_SETS = ("loss,macs", "loss,latency", "loss,macs,latency")
SAMPLERS = ("tpe", "nsga2", "gp", "random")


def build_parser():
    parser = ArgumentParser(
        prog="sslc-search",
        description="Search compressions of a speech SSL teacher under a budget: Ray Tune runs short distillation "
        "trials, Optuna picks configs, the study lives in Optuna storage (watch it with sslc-dashboard).",
    )
    parser.add_argument("--teacher", default="random:hubert-base",
                        help="transformers dir / hub id, torchaudio:BUNDLE, or random:<preset> (default: %(default)s)")
    parser.add_argument("--data", default="demo", help="audio dir, fairseq TSV manifest, or 'demo' (synthetic)")
    parser.add_argument("--budget", required=True, help="MACs (30GMACs, 500MMACs, 3e10) or a share of the teacher (40%%)")
    parser.add_argument("--budget-seconds", type=float, default=10.0, help="audio length MACs are counted for")
    parser.add_argument("--max-params", help="also cap parameters (e.g. 25M)")
    parser.add_argument("--max-latency-ms", type=float, help="also cap measured latency for --budget-seconds of audio")
    parser.add_argument("--space", default="combined", help="preset (combined, prune-only, distil-depth, lowrank) or a YAML/JSON file")
    parser.add_argument("--trials", type=int, default=20, help="trained trials (over-budget configs do not count)")
    parser.add_argument("--steps", type=int, default=100, help="distillation steps per short trial")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-seconds", type=float, default=2.0, help="training crop length")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--targets", default="default",
                        help="teacher layers every candidate is trained and scored on, score = mean over them: "
                        "'default' (1/3, 2/3 and the end: 4,8,12 of 12), 'all', or a list such as 4,8,12 "
                        "(default: %(default)s)")
    parser.add_argument("--name", help="run name; reusing one resumes that search (default: a timestamp)")
    parser.add_argument("--run-dir", type=Path, help="run directory (default: runs/<name>)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<run_dir>/study.db)")
    parser.add_argument("--objectives", default="loss,macs", choices=OBJECTIVE_SETS)
    parser.add_argument("--sampler", default="gp", choices=SAMPLERS, help="Optuna sampler (default: %(default)s)")
    parser.add_argument("--ray-address", help="join an existing Ray cluster (e.g. auto or host:6379)")
    parser.add_argument("--storage-path", help="Ray Tune's experiment state and trial logs (default: <run_dir>/ray; "
                        "on a multi-node cluster a shared path or s3://...; trial files come back through Ray anyway)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, help="trials at once (default: as many as the resources allow)")
    parser.add_argument("--no-early-stopping", action="store_true", help="train every trial to the end")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip the short trials of simple baselines (uniform pruning, 2-layer DistilHuBERT-like)")
    parser.add_argument("--latency-repeats", type=int, default=3, help="timed forward passes per trial (median)")
    parser.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    parser.add_argument("--seed", type=int, default=0)
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sslc.search.budget import parse_budget

    parse_budget(args.budget)  # a typo in the budget is reported at once, before the heavy imports
    from sslc.protocol import parse_targets

    parse_targets(args.targets)
    from sslc.search.runner import SearchSettings, run_search  # heavy imports after argument checks

    if args.trials < 1 or args.steps < 1:
        raise UserError("--trials and --steps must be at least 1")
    settings = SearchSettings(
        teacher=args.teacher, data=args.data, budget=args.budget, budget_seconds=args.budget_seconds,
        max_params=args.max_params, max_latency_ms=args.max_latency_ms, space=args.space, trials=args.trials,
        steps=args.steps, batch_size=args.batch_size, crop_seconds=args.crop_seconds, lr=args.lr,
        targets=args.targets, name=args.name,
        run_dir=args.run_dir, storage=args.storage, objectives=args.objectives.split(","), sampler=args.sampler,
        ray_address=args.ray_address, storage_path=args.storage_path,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        concurrency=args.concurrency, early_stopping=not args.no_early_stopping, report=not args.no_report,
        baselines=not args.no_baselines, latency_repeats=args.latency_repeats,
        seed=args.seed,
    )
    result = run_search(settings)
    if settings.report and result.pareto:
        from sslc.dashboards import write_report  # after the search: the report reads what it recorded

        print(f"report: {write_report(result.run_dir)}")
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
