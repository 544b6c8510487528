"""Do fewer MACs mean proportionally lower latency? Compressed students of random:hubert-base on CPU.

For a handful of compression configs (depth, heads + FFN, low rank, CNN channels, combined, combined + int8)
between ~20% and ~80% of the teacher's MACs, prints the MAC ratio (analytic, student / teacher), the measured
latency ratio (medians, 10 s of audio, batch 1, all models timed interleaved in one run) and their quotient
latency_ratio / mac_ratio: 1.0 means the MAC saving is fully realised, above 1 means the student is slower
than its MACs promise. The last line is `realized_speedup: <the largest quotient>` (the goal is <= 1.15).

Latency depends on the machine and on its load: numbers from a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from sslc.compress import CompressionConfig, compress  # noqa: E402
from sslc.metrics import compare_latency, count_macs  # noqa: E402
from sslc.models import PRESETS, EncoderConfig, build_encoder  # noqa: E402

GOAL = 1.15


def configs(base: EncoderConfig) -> dict[str, CompressionConfig]:
    """Five float configs mixing the structured operators, plus the combined one in int8."""
    layers = base.num_layers
    depth = CompressionConfig.evenly_spaced(base, 8)

    heads_ffn = CompressionConfig.identity(base)
    heads_ffn.heads = [6] * layers
    heads_ffn.ffn = [1536] * layers

    low_rank = CompressionConfig.identity(base)
    low_rank.attn_rank = [96] * layers  # break-even rank of a 768 x 768 linear is 384
    low_rank.ffn_rank = [192] * layers  # ... and of a 768 x 3072 one 614

    conv = CompressionConfig.identity(base)
    conv.conv_channels = [256] * len(base.conv_layers)
    conv.ffn = [1536] * layers

    combined = CompressionConfig.evenly_spaced(base, 6)
    combined.heads = [6] * 6
    combined.ffn = [1024] * 6
    combined.attn_rank = [128] * 6
    combined.conv_channels = [256] * len(base.conv_layers)

    combined_int8 = CompressionConfig.from_dict({**combined.to_dict(), "quantize": "int8"})
    return {
        "depth 8 of 12": depth,
        "heads 6, ffn 1536": heads_ffn,
        "low-rank attn 96, ffn 192": low_rank,
        "cnn 256 ch, ffn 1536": conv,
        "combined": combined,
        "combined + int8": combined_int8,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length per forward pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    base = PRESETS["hubert-base"]()
    teacher = build_encoder(base, seed=0).eval()
    start = time.perf_counter()
    candidates = configs(base)
    models = {"teacher": teacher}
    macs = {"teacher": count_macs(base, seconds=args.seconds).total}
    for name, config in candidates.items():
        models[name] = compress(teacher, config)
        # The analytic count from sizes alone; int8 keeps the float MAC count (its ops are int8 MACs).
        macs[name] = count_macs(config.student_architecture(base), seconds=args.seconds).total
    built = time.perf_counter() - start
    latency = compare_latency(
        models, seconds=args.seconds, repeats=args.repeats, warmup=args.warmup, threads=args.threads
    )

    threads = latency["teacher"].torch_threads
    print(
        f"random:hubert-base, {args.seconds:g} s audio, batch 1, CPU, {threads} torch threads, "
        f"median of {args.repeats} interleaved runs (students built in {built:.0f} s)"
    )
    header = (
        f"{'config':<28} {'GMACs':>7} {'MAC ratio':>10} {'median ms':>10} {'lat. ratio':>11} {'lat/MAC':>8}"
    )
    print(header)
    print("-" * len(header))
    quotients = {}
    for name in models:
        mac_ratio = macs[name] / macs["teacher"]
        latency_ratio = latency[name].median_ms / latency["teacher"].median_ms
        quotients[name] = latency_ratio / mac_ratio
        flag = "  <- above goal" if quotients[name] > GOAL else ""
        print(
            f"{name:<28} {macs[name] / 1e9:>7.2f} {mac_ratio:>10.3f} {latency[name].median_ms:>10.1f} "
            f"{latency_ratio:>11.3f} {quotients[name]:>8.3f}{flag}"
        )
    worst = max(quotients, key=quotients.get)
    print(
        f"goal: latency ratio <= {GOAL} x MAC ratio; worst: {worst} ({quotients[worst]:.3f}); "
        f"torch {torch.__version__}"
    )
    print(f"realized_speedup: {quotients[worst]:.3f}")


if __name__ == "__main__":
    main()
