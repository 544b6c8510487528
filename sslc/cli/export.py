"""`sslc-export`: one trial of a search as a standalone student in the format where it will run, or an anytime
run's shared weights and front as one anytime file (`sslc.load_student(path, budget=...)`).

sslc-export runs/hubert30 --trial 7 -o student.safetensors            # sslc.load_student reads it (no pickle)
sslc-export runs/hubert30 --trial 7 --format onnx -o student.onnx      # onnxruntime
sslc-export runs/hubert30 --trial 7 --format transformers -o student/  # AutoModel.from_pretrained
sslc-export runs/anytime30 --anytime -o model.safetensors
sslc-export runs/anytime30 --anytime --budget 40% --format onnx --split-layer 2 -o split/
"""

from __future__ import annotations

from pathlib import Path

from sslc.cli.common import ArgumentParser, cli_entry
from sslc.errors import UserError

_SUFFIX = {"sslc": ".pt", "safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".torchscript.pt",
           "transformers": "-transformers", "s3prl": "-s3prl"}


def build_parser():
    from sslc.models.formats import DEFAULT, FORMATS

    parser = ArgumentParser(
        prog="sslc-export",
        description="Write a trial's student (weights, architecture, provenance and metrics) where it will run: "
        "sslc's own file (sslc.load_student(path), without Ray, Optuna or the run directory), ONNX, TorchScript, "
        "a transformers directory or an s3prl upstream.",
    )
    parser.add_argument("run_dir", type=Path, help="the search's run directory")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number (a COMPLETE trial)")
    which.add_argument("--anytime", action="store_true",
                       help="an anytime run (sslc-search --mode anytime): its shared weights and whole front in one "
                       "file; sslc.load_student(path, budget='20GMACs') returns the best point within a budget")
    parser.add_argument(
        "--format", choices=FORMATS, default=None,
        help=f"safetensors: weights + JSON architecture, no pickle (the default; sslc.load_student reads it); "
        "sslc: the same in torch.save's file; onnx: one graph with dynamic batch and time (onnxruntime); "
        "torchscript: torch.jit.load runs it with torch alone; transformers: a from_pretrained directory (a plain "
        "HubertConfig/Wav2Vec2Config/WavLMConfig where the student fits one, else remote code); s3prl: an "
        f"upstream directory. Default: from the output's suffix (.pt: sslc, .onnx: onnx), else {DEFAULT}",
    )
    parser.add_argument("-o", "--output", type=Path,
                        help="output file or directory (default: student-<run>-<trial> with the format's suffix)")
    parser.add_argument(
        "--weights", choices=("auto", "retrained", "retrained-last", "short-trial"), default="auto",
        help="auto: retrained weights when sslc-retrain finished this trial (its best validated ones; "
        "retrained-last: its last), else the short trial's",
    )
    parser.add_argument("--budget", help="with --anytime: export only the best front point within this budget "
                        "(20GMACs, 40%%), as one student in any format")
    parser.add_argument("--split-layer", type=int, default=None,
                        help="onnx: write a client graph (CNN + the first K layers) and a server graph (the rest) "
                        "into the output directory instead of one graph")
    parser.add_argument("--remote-code", action="store_true",
                        help="transformers: write sslc's model code (trust_remote_code) even where a plain config "
                        "would do")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sslc.metrics import format_macs, format_params
    from sslc.models.formats import format_for
    from sslc.runs.export import export_anytime, export_student

    if args.budget is not None and not args.anytime:
        raise UserError("--budget picks a point of an anytime run: use it with --anytime")
    if args.remote_code and args.format != "transformers":
        raise UserError("--remote-code applies to --format transformers only")
    fmt = args.format or ("onnx" if args.split_layer is not None else format_for(args.output))
    if args.anytime:
        stem = f"anytime-{args.run_dir.resolve().name}"
        output = args.output or Path(stem + ("-split" if args.split_layer is not None else _SUFFIX[fmt]))
        info = export_anytime(args.run_dir, output, fmt, args.budget, args.split_layer, args.remote_code or None)
        if args.budget is None:
            print(f"wrote {output}: the shared weights and {info['points']} front point(s) of run "
                  f"{info['provenance']['run']} ({info['provenance']['once_for_all_steps']} once-for-all steps), "
                  f"format {fmt}")
        else:
            print(f"wrote {output}: the best front point within {args.budget} of run "
                  f"{info['provenance']['run']}, {format_macs(info['metrics']['macs'])} MACs, format {fmt}")
        for note in info["notes"]:
            print(f"  {note}")
        return 0

    stem = f"student-{args.run_dir.resolve().name}-{args.trial}"
    output = args.output or Path(stem + ("-split" if args.split_layer is not None else _SUFFIX[fmt]))
    info = export_student(args.run_dir, args.trial, output, source=args.weights, fmt=fmt,
                          split_layer=args.split_layer, remote_code=args.remote_code or None)
    metrics = info["metrics"]
    loss = metrics.get("heldout_loss")
    loss_text = f"{loss:.4f}" if loss is not None else "-"
    print(
        f"wrote {output}: trial {args.trial}, {info['provenance']['weights']} weights, "
        f"{format_params(metrics.get('params') or 0)} params, {format_macs(metrics.get('macs') or 0)} MACs, "
        f"held-out loss {loss_text}, format {fmt}"
    )
    for note in info["notes"]:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
