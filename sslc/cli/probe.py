"""`sslc-probe`: SUPERB-style probes of frozen encoders (teachers, exported students, search trials).

sslc-probe random:tiny student.pt --task ctc --data corpus/train --heldout corpus/heldout --units tokens
sslc-probe runs/hubert30 --pareto --task classify --data speech_commands/ -o probe.json
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from sslc.cli.common import ArgumentParser, cli_entry


def build_parser():
    parser = ArgumentParser(
        prog="sslc-probe",
        description="Probe frozen encoders SUPERB-style: a softmax-weighted sum of their hidden states feeds a "
        "small head, and only the head trains. ctc: unit error rate (phonemes or characters); classify: accuracy.",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="teacher spec (checkpoint dir, hub id, random:<preset>), exported student file, "
                        "RUN_DIR:TRIAL, or RUN_DIR with --pareto")
    parser.add_argument("--task", required=True, help="ctc (sequence labels, error rate) or classify (accuracy)")
    parser.add_argument("--data", required=True, type=Path, help="labelled audio directory")
    parser.add_argument("--heldout", type=Path,
                        help="held-out labelled audio (default: a fixed share of --data's speakers)")
    parser.add_argument("--units", default="chars", help="ctc labels: chars (text) or tokens (e.g. phonemes)")
    parser.add_argument("--pareto", action="store_true", help="a RUN_DIR model means its Pareto points + teacher")
    parser.add_argument("--epochs", type=int, default=20, help="passes of the head over the training files")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("-o", "--output", type=Path, help="write the results as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


class _RichProgress:
    """The probe loop's progress, as a rich bar on stderr (stdout stays for the results)."""

    def __init__(self, model: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.model = model
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)
        self.task = None

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def stage(self, name: str, total: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"{self.model}: {name}", total=total)

    def advance(self) -> None:
        self.bar.advance(self.task)


def _print_table(rows: list[dict], task: str, split: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from sslc.metrics import format_macs, format_params

    metric = rows[0]["metric_name"].replace("_", " ")
    reference = rows[0].get("reference")  # None: no teacher beside the other models, no ratio column
    table = Table(title=f"probe: {task}" + (f" ({rows[0]['units']})" if rows[0].get("units") else ""),
                  caption=split)
    columns = ["model", "params", "MACs (10 s)", f"held-out {metric}"] + ([f"vs {reference}"] if reference else [])
    for name in columns:
        table.add_column(name, justify="left" if name == "model" else "right")
    for r in rows:
        relative = r.get("relative_to_reference")
        cells = [r["model"] + (" (random weights)" if r.get("random_weights") else ""),
                 format_params(r["params"]), format_macs(r["macs"]), f"{r['metric']:.4f}"]
        if reference:
            cells.append("reference" if r["model"] == reference else f"{relative:.2f}x" if relative is not None else "-")
        table.add_row(*cells)
    Console(highlight=False).print(table)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sslc.errors import UserError, first_line
    from sslc.probes.labels import check_task, describe_split, train_and_heldout

    check_task(args.task, args.units)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UserError("--epochs and --batch-size must be at least 1 and --lr positive")
    train, heldout = train_and_heldout(args.data, args.task, args.units, args.heldout)  # data checked first

    import torch

    from sslc.files import write_json_atomically
    from sslc.probes.results import (
        add_relative,
        probe_target,
        record_on_runs,
        reference_index,
        resolve_targets,
    )
    from sslc.probes.train import ProbeSettings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise UserError(f"--device {device} is not usable here: {first_line(error)}") from None
    split = describe_split(train, heldout, args.heldout)
    print(f"probe: {args.task}, {split}; device {device}")
    targets = resolve_targets(args.models, args.pareto, device)
    settings = ProbeSettings(args.task, args.epochs, args.batch_size, args.lr, args.seed, device)
    show = not args.no_progress and sys.stderr.isatty()
    rows = []
    for number, target in enumerate(targets, 1):
        print(f"[{number}/{len(targets)}] {target.name}")
        progress = _RichProgress(target.name) if show else None
        with progress or contextlib.nullcontext():
            rows.append(probe_target(target, train, heldout, settings, args.units, progress))
    add_relative(rows, reference_index(targets))
    recorded = record_on_runs(targets, rows, args.task)
    _print_table(rows, args.task, split)
    if recorded:
        print(f"recorded {recorded} result(s) on the run's study (sslc-report draws them)")
    if args.output:
        write_json_atomically(args.output, {"task": args.task, "units": args.units if args.task == "ctc" else None,
                                            "data": str(args.data), "heldout": str(args.heldout or ""), "split": split,
                                            "settings": settings.__dict__, "results": rows})
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
