"""`sslc-retrain`: train chosen points of a search to completion (resumable), and record how good they became.

sslc-retrain runs/hubert30 --trial 7 --trial 12
sslc-retrain runs/hubert30 --pareto --under-budget --recipe distilhubert --steps 20000
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

from sslc.cli.common import ArgumentParser, cli_entry


def build_parser():
    parser = ArgumentParser(
        prog="sslc-retrain",
        description="Retrain chosen trials of a search to completion by a recipe (sslc/trainers/recipes.py), scored "
        "on the study's held-out protocol every --eval-every steps; the best validated weights are exported. "
        "Checkpoints live in <run_dir>/retrain/<trial>/; rerunning the same command resumes an interrupted retrain.",
    )
    parser.add_argument("run_dir", type=Path, help="the search's run directory (holds study.db)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--trial", type=int, action="append", help="trial number to retrain (repeatable)")
    choice.add_argument("--pareto", action="store_true", help="retrain every point of the Pareto front")
    parser.add_argument("--under-budget", action="store_true", help="with --pareto: only points within the budget")
    # Names and values are checked by sslc.trainers.recipes (their one place), after parsing: no torch import here.
    parser.add_argument("--recipe", default="quick",
                        help="quick: 10x the search's short trials with their settings (the default); distilhubert, "
                        "dphubert: the published schedules (each value below overrides the recipe's)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    length.add_argument("--epochs", type=int, help="training epochs over the run's training data")
    parser.add_argument("--batch-seconds", type=float, help="seconds of audio per optimizer step (all workers)")
    parser.add_argument("--crop-seconds", type=float, help="training crop length (held-out segments stay the search's)")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--warmup", type=float, help="linear warm-up, as a fraction of the steps")
    parser.add_argument("--decay", choices=("cosine", "linear"), help="decay after the warm-up, to zero at the end")
    parser.add_argument("--grad-clip", type=float, help="max gradient norm (0: no clipping)")
    parser.add_argument("--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32")
    parser.add_argument("--eval-every", type=int, help="validate every N steps (default: 10 times a run)")
    parser.add_argument("--workers", type=int, default=0,
                        help="data-parallel training on N Ray Train workers (DDP; the global batch stays the recipe's)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --workers: GPUs per worker (0: CPU)")
    parser.add_argument("--ray-address", help="with --workers: an existing Ray cluster (auto or host:port)")
    parser.add_argument("--storage-path", help="with --workers: Ray Train's checkpoint storage (a path every node "
                        "sees, or s3://...; default <run_dir>/retrain/<trial>/ray)")
    parser.add_argument("--cpus-per-point", type=float,
                        help="with several points (each a Ray task; as many train at once as fit): CPUs each "
                        "(default where it has no GPU: this machine's CPUs shared among the points, at least 1 each)")
    parser.add_argument("--gpus-per-point", type=float,
                        help="with several points: GPUs each (default: 1 where this machine has GPUs, else 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the search's setting")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@contextlib.contextmanager
def _stop_on_first_ctrl_c():
    """First Ctrl-C: finish the current step, checkpoint, exit 130. Second Ctrl-C: stop at once."""
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(True)
        print("stopping after the next report (a checkpoint is written); Ctrl-C again to stop now", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        yield lambda: False
        return
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_results(results: list[dict]) -> None:
    from rich.table import Table

    from sslc.console import make_console
    from sslc.metrics import format_macs, format_params

    table = Table(title="retrained")
    for name in ("trial", "status", "recipe", "steps", "best step", "short-trial loss", "loss", "params", "MACs",
                 "latency ms"):
        table.add_column(name, justify="right")

    def number(value, fmt):
        return format(value, fmt) if value is not None else "-"

    for r in results:
        if r["status"] == "failed":  # a point that failed in its Ray task: its reason, nothing measured
            table.add_row(str(r["trial"]), "failed", r.get("reason") or "-", *["-"] * 7)
            continue
        table.add_row(
            str(r["trial"]), r["status"] + (" earlier" if r.get("skipped") else ""),
            (r.get("recipe") or {}).get("name", "quick"), str(r["steps"]), str(r.get("best_step", "-")),
            number(r.get("short_trial_heldout_loss"), ".4f"), number(r.get("heldout_loss"), ".4f"),
            format_params(r["params"]), format_macs(r["macs"]), number(r.get("latency_ms"), ".1f"),
        )
    make_console(highlight=False).print(table)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sslc.search.retrain import retrain  # heavy imports after the arguments are checked

    with _stop_on_first_ctrl_c() as should_stop:
        results = retrain(
            args.run_dir, numbers=args.trial, pareto=args.pareto, under_budget=args.under_budget,
            recipe=args.recipe, steps=args.steps, epochs=args.epochs, device=args.device,
            eval_every=args.eval_every, progress=not args.no_progress, should_stop=should_stop,
            say=lambda line: print(line, file=sys.stderr), batch_seconds=args.batch_seconds,
            crop_seconds=args.crop_seconds, lr=args.lr, warmup=args.warmup, decay=args.decay,
            grad_clip=args.grad_clip, precision=args.precision, workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, ray_address=args.ray_address, storage_path=args.storage_path,
            cpus_per_point=args.cpus_per_point, gpus_per_point=args.gpus_per_point,
        )
    _print_results(results)
    if any(r["status"] == "completed" for r in results):
        from sslc.dashboards import write_report  # the report shows retrained points beside the search's

        print(f"report: {write_report(args.run_dir)}")
    print(f"results: {args.run_dir / 'retrain'}/<trial>/result.json; export with sslc-export {args.run_dir} --trial N")
    return 0 if all(r["status"] == "completed" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
