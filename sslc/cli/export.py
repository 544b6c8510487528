"""`sslc-export`: one trial of a search as a standalone student file (`sslc.load_student(path)` reads it), or an
anytime run's shared weights and front as one anytime file (`sslc.load_student(path, budget=...)`).

sslc-export runs/hubert30 --trial 7 -o student.pt
sslc-export runs/anytime30 --anytime -o model.pt
"""

from __future__ import annotations

from pathlib import Path

from sslc.cli.common import ArgumentParser, cli_entry


def build_parser():
    parser = ArgumentParser(
        prog="sslc-export",
        description="Write a trial's student (weights, architecture, provenance and metrics) to one file that loads "
        "with sslc.load_student(path), without Ray, Optuna or the run directory.",
    )
    parser.add_argument("run_dir", type=Path, help="the search's run directory")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number (a COMPLETE trial)")
    which.add_argument("--anytime", action="store_true",
                       help="an anytime run (sslc-search --mode anytime): its shared weights and whole front in one "
                       "file; sslc.load_student(path, budget='20GMACs') returns the best point within a budget")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: student-<run>-<trial>.pt)")
    parser.add_argument(
        "--weights", choices=("auto", "retrained", "retrained-last", "short-trial"), default="auto",
        help="auto: retrained weights when sslc-retrain finished this trial (its best validated ones; "
        "retrained-last: its last), else the short trial's",
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sslc.metrics import format_macs, format_params
    from sslc.runs.export import export_anytime, export_student

    if args.anytime:
        output = args.output or Path(f"anytime-{args.run_dir.resolve().name}.pt")
        info = export_anytime(args.run_dir, output)
        print(f"wrote {output}: the shared weights and {info['points']} front point(s) of run "
              f"{info['provenance']['run']} ({info['provenance']['once_for_all_steps']} once-for-all steps)")
        return 0

    output = args.output or Path(f"student-{args.run_dir.resolve().name}-{args.trial}.pt")
    info = export_student(args.run_dir, args.trial, output, source=args.weights)
    metrics = info["metrics"]
    loss = metrics.get("heldout_loss")
    loss_text = f"{loss:.4f}" if loss is not None else "-"
    print(
        f"wrote {output}: trial {args.trial}, {info['provenance']['weights']} weights, "
        f"{format_params(metrics.get('params') or 0)} params, {format_macs(metrics.get('macs') or 0)} MACs, "
        f"held-out loss {loss_text}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
