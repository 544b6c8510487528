"""sslc-info: the size and cost of a teacher — parameters, MACs by part at a reference length, CPU latency.

sslc-info --teacher random:hubert-base
sslc-info --teacher random:tiny --seconds 1 --no-latency --json
sslc-info --teacher random:hubert-base --onnx      # onnxruntime's CPU latency beside torch's
"""

from __future__ import annotations

import json
import math

from sslc.cli.common import ArgumentParser, cli_entry
from sslc.errors import UserError
from sslc.metrics import (
    REFERENCE_SECONDS,
    SAMPLE_RATE,
    SUPERB_UTTERANCE_SAMPLES,
    count_macs,
    count_macs_superb,
    count_params,
    describe_conditions,
    format_macs,
    format_params,
    measure_latency,
    num_samples_for,
)

PART_LABELS = {
    "cnn": "CNN feature extractor",
    "feature_projection": "feature projection",
    "positional_conv": "positional conv",
    "attention_projections": "attention q/k/v/out",
    "attention_matmuls": "attention QK^T and AV",
    "relative_position_gate": "relative position gate",
    "ffn": "feed-forward",
}


def build_parser():
    parser = ArgumentParser(
        prog="sslc-info",
        description="Parameters, MACs by part and CPU latency of a teacher encoder.",
    )
    parser.add_argument("--teacher", required=True, help='teacher spec, e.g. "random:hubert-base"')
    parser.add_argument(
        "--seconds",
        type=float,
        default=REFERENCE_SECONDS,
        help=f"length of the input waveform for MACs and latency (default {REFERENCE_SECONDS:g})",
    )
    parser.add_argument("--latency-repeats", type=int, default=5, help="timed forward passes (default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for the latency (default: torch's, all cores); a search's trials "
                        "time with their own threads (--cpus-per-trial) while other trials run")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--onnx", action="store_true",
                        help="also export the model to ONNX and time it in onnxruntime (CPU, as many threads as "
                        "torch), interleaved with torch's runs on the same input (needs sslc[onnx])")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _check_args(args) -> None:
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UserError(f"--seconds must be a positive number of seconds, got {args.seconds:g}")
    if args.latency_repeats < 1:
        raise UserError(f"--latency-repeats must be >= 1, got {args.latency_repeats}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")


def _print_table(report: dict) -> None:
    from rich.table import Table

    from sslc.console import make_console

    console = make_console(highlight=False)
    console.print(f"teacher: {report['description']}", markup=False, soft_wrap=True)
    macs = report["macs"]
    total = macs["total"]
    table = Table(title=f"{report['teacher']} at {report['seconds']:g} s ({report['frames']} frames)")
    table.add_column("", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    table.add_row("parameters", format_params(report["params"]), "")
    for part, label in PART_LABELS.items():
        if macs[part] or part != "relative_position_gate":
            share = f"{100 * macs[part] / total:.1f}%" if total else ""
            table.add_row(f"MACs: {label}", format_macs(macs[part]), share)
    table.add_row("MACs: total", format_macs(total), "100.0%" if total else "", style="bold")
    table.add_row("MACs, SUPERB convention", format_macs(report["macs_superb"]),
                  f"{len(SUPERB_UTTERANCE_SAMPLES)} utterances")
    latency = report["latency"]
    if latency is None:
        table.add_row("CPU latency (median)", "not measured", "")
    else:
        table.add_row("CPU latency (median)", f"{latency['median_ms']:.1f} ms",
                      f"{latency['repeats']} runs, {latency['torch_threads']} thread(s)")
    onnx = report.get("latency_onnxruntime")
    if onnx is not None:
        note = f"{onnx['repeats']} runs, {onnx['threads']} threads"
        table.add_row("onnxruntime CPU latency (median)", f"{onnx['median_ms']:.1f} ms", note)
    console.print(table)
    if latency is not None:
        # The trials of a search time their students with their own thread count while other trials train, so
        # their latencies are not this idle figure: say how each was measured.
        console.print(f"latency measured as: {describe_conditions(latency)}. A search's trials time their students "
                      "with --cpus-per-trial threads while other trials run; each trial records how "
                      "(latency_measurement; the report says it).", markup=False, soft_wrap=True)


def _torch_and_onnxruntime_latency(model, seconds: float, repeats: int, threads: int | None):
    """(torch's LatencyResult, onnxruntime's as a dict with its threads), timed interleaved in one run."""
    import tempfile
    from pathlib import Path

    from sslc.metrics import compare_latency
    from sslc.models.formats.onnx_file import OnnxRuntimeStudent, write_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = write_onnx(model, Path(tmp) / "model.onnx")
        runtime = OnnxRuntimeStudent(path, threads)
        timed = compare_latency({"torch": model, "onnxruntime": runtime}, seconds=seconds, repeats=repeats,
                                device="cpu", threads=threads)
    return timed["torch"], dict(timed["onnxruntime"].as_dict(), threads=runtime.threads)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    from sslc.models.teachers import describe_teacher, load_teacher

    model = load_teacher(args.teacher)
    config = model.config
    num_samples = num_samples_for(args.seconds, SAMPLE_RATE)
    frames = config.frames_for(num_samples)
    if frames < 1:
        raise UserError(f"--seconds {args.seconds:g} is too short: the conv front end leaves no frames")
    macs = count_macs(config, num_samples=num_samples)
    latency = onnx_latency = None
    if args.onnx and args.no_latency:
        raise UserError("--onnx measures latency: drop --no-latency")
    if args.onnx:
        latency, onnx_latency = _torch_and_onnxruntime_latency(model, args.seconds, args.latency_repeats,
                                                               args.threads)
    elif not args.no_latency:
        latency = measure_latency(model, seconds=args.seconds, repeats=args.latency_repeats, device="cpu",
                                  threads=args.threads)
    report = {
        "teacher": args.teacher,
        "description": describe_teacher(model),
        "seconds": args.seconds,
        "sample_rate": SAMPLE_RATE,
        "num_samples": num_samples,
        "frames": frames,
        "params": count_params(model),
        "macs": macs.as_dict(),
        # The published tables' convention: summed over SUPERB's 32 LibriSpeech utterances (HuBERT Base 1669 G).
        "macs_superb": count_macs_superb(config),
        "latency": latency.as_dict() if latency is not None else None,
    }
    if onnx_latency is not None:
        report["latency_onnxruntime"] = onnx_latency
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
