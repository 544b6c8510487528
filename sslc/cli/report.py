"""`sslc-report`: the offline HTML report of a search (Pareto front, hypervolume, per-layer view, table).

sslc-report runs/hubert30                 # writes runs/hubert30/report.html
sslc-report runs/hubert30 -o /tmp/r.html
"""

from __future__ import annotations

from pathlib import Path

from sslc.cli.common import ArgumentParser, cli_entry


def build_parser():
    parser = ArgumentParser(
        prog="sslc-report",
        description="Write a self-contained HTML report of a search (works offline; plotly.js is embedded).",
    )
    parser.add_argument("run_dir", type=Path, help="the search's run directory")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: <run_dir>/report.html)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sslc.dashboards import write_report

    path = write_report(args.run_dir, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
