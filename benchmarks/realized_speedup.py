"""Do fewer MACs mean proportionally lower latency? Compressed students of random:hubert-base on CPU.

For six compression configs (depth; heads + FFN; low rank; CNN channels + depth + FFN; all combined; combined +
int8) between ~20% and ~80% of the teacher's MACs, prints the MAC ratio (analytic, student / teacher, from
`count_macs(config.student_architecture(...))`), the measured latency ratio (10 s of audio, batch 1, CPU) and
their quotient latency_ratio / mac_ratio: 1.0 means the MAC saving is fully realised, above 1 means the student
is slower than its MACs promise. The goal is a quotient <= 1.15 for every config.

How latency is measured, so that load from other processes hits teacher and students alike: every round times
the teacher between every two students (T S1 T S2 ... S6 T, each run one `measure_latency` forward pass of the
same 10 s input), and a student's ratio in that round is its time over the mean of the two teacher runs around
it. The student order rotates from round to round. A config's latency ratio is the median of its per-round
ratios; the "median ms" column is the median of its raw times.

A second table splits one forward pass (timed with module hooks) into parts and gives each part's quotient
(its latency ratio over its MAC ratio, both vs the teacher's same part), which shows where a saving is lost.

The last line is `realized_speedup: <the largest quotient over the six students>`. Latency depends on the
machine and on its load: numbers from a shared machine are indicative only.

    python benchmarks/realized_speedup.py [--rounds 11] [--seconds 10] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

import sslc  # noqa: E402
from sslc.compress import CompressionConfig, compress  # noqa: E402
from sslc.metrics import compare_latency, count_macs, measure_latency  # noqa: E402
from sslc.models import EncoderConfig  # noqa: E402

GOAL = 1.15
PARTS = ("cnn", "pos conv", "attn proj", "attn core", "ffn", "other")


def configs(base: EncoderConfig) -> dict[str, CompressionConfig]:
    """Five float configs mixing the structured operators, plus the combined one in int8."""
    layers = base.num_layers
    convs = len(base.conv_layers)
    depth = CompressionConfig.evenly_spaced(base, 8)

    heads_ffn = CompressionConfig.identity(base)
    heads_ffn.heads = [6] * layers
    heads_ffn.ffn = [1536] * layers

    low_rank = CompressionConfig.identity(base)
    low_rank.attn_rank = [96] * layers  # break-even rank of a 768 x 768 linear is 384
    low_rank.ffn_rank = [192] * layers  # ... and of a 768 x 3072 one 614

    conv = CompressionConfig.evenly_spaced(base, 8)
    conv.conv_channels = [256] * convs
    conv.ffn = [1536] * 8

    combined = CompressionConfig.evenly_spaced(base, 6)
    combined.heads = [6] * 6
    combined.ffn = [1024] * 6
    combined.attn_rank = [128] * 6
    combined.conv_channels = [256] * convs

    combined_int8 = CompressionConfig.from_dict({**combined.to_dict(), "quantize": "int8"})
    return {
        "depth 8 of 12": depth,
        "heads 6, ffn 1536": heads_ffn,
        "low-rank attn 96, ffn 192": low_rank,
        "cnn 256 ch, 8 layers, ffn 1536": conv,
        "combined": combined,
        "combined + int8": combined_int8,
    }


def latency_rounds(teacher, students: dict, seconds: float, rounds: int, threads: int | None):
    """Per student, its per-round latency ratios (vs the teacher runs just before and after it) and raw times."""
    names = list(students)

    def once(model) -> float:
        return measure_latency(model, seconds=seconds, warmup=0, repeats=1, threads=threads).median_ms

    ratios = {name: [] for name in names}
    raw = {name: [] for name in ["teacher", *names]}
    for round_index in range(rounds):
        shift = round_index % len(names)
        order = names[shift:] + names[:shift]
        before = once(teacher)
        raw["teacher"].append(before)
        for name in order:
            ms = once(students[name])
            after = once(teacher)
            raw[name].append(ms)
            raw["teacher"].append(after)
            ratios[name].append(ms / ((before + after) / 2))
            before = after
    return ratios, raw


class PartTimer:
    """Times the parts of a model's forward pass with module hooks (attention projections, attention core, FFN,
    CNN, positional conv; 'other' is the rest of the wall time)."""

    PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")

    def __init__(self, model):
        self.model = model
        self.spent: dict[str, float] = {}
        self.handles = []
        for name, module in model.named_modules():
            bits = name.split(".")
            watched = (
                name in ("feature_extractor", "pos_conv")
                or (len(bits) == 3 and bits[0] == "layers" and bits[2] in ("attention", "feed_forward"))
                or (len(bits) == 4 and bits[0] == "layers" and bits[2] == "attention" and bits[3] in self.PROJECTIONS)
            )
            if watched:
                self.handles += [
                    module.register_forward_pre_hook(self._pre(name)),
                    module.register_forward_hook(self._post(name)),
                ]

    def _pre(self, name):
        def hook(_module, _inputs):
            self.spent[name] = self.spent.get(name, 0.0) - time.perf_counter()

        return hook

    def _post(self, name):
        def hook(_module, _inputs, _output):
            self.spent[name] += time.perf_counter()

        return hook

    def run(self, waveforms) -> dict[str, float]:
        """Milliseconds per part of one forward pass."""
        self.spent.clear()
        started = time.perf_counter()
        self.model(waveforms)
        total = time.perf_counter() - started
        parts = dict.fromkeys(PARTS, 0.0)
        for name, seconds in self.spent.items():
            if name == "feature_extractor":
                parts["cnn"] += seconds
            elif name == "pos_conv":
                parts["pos conv"] += seconds
            elif name.endswith("_proj"):
                parts["attn proj"] += seconds
                parts["attn core"] -= seconds  # the attention module's time includes its projections
            elif name.endswith("attention"):
                parts["attn core"] += seconds
            else:
                parts["ffn"] += seconds
        parts["other"] = total - sum(parts.values())
        return {part: value * 1000 for part, value in parts.items()}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def part_times(models: dict, seconds: float, passes: int) -> dict[str, dict[str, float]]:
    """Per model, the median ms of each part over `passes` forward passes, the models interleaved (rotating
    order) so that load from other processes spreads over all of them."""
    waveforms = torch.randn(1, int(round(seconds * 16000)), generator=torch.Generator().manual_seed(0))
    timers = {name: PartTimer(model) for name, model in models.items()}
    names = list(models)
    samples = {name: [] for name in names}
    try:
        with torch.inference_mode():
            for index in range(passes):
                for name in names[index % len(names):] + names[: index % len(names)]:
                    samples[name].append(timers[name].run(waveforms))
    finally:
        for timer in timers.values():
            timer.remove()
    return {
        name: {part: statistics.median(s[part] for s in runs) for part in PARTS} for name, runs in samples.items()
    }


def part_macs(architecture: EncoderConfig, seconds: float) -> dict[str, float]:
    m = count_macs(architecture, seconds=seconds)
    return {
        "cnn": m.cnn,
        "pos conv": m.positional_conv,
        "attn proj": m.attention_projections,
        "attn core": m.attention_matmuls + m.relative_position_gate,
        "ffn": m.ffn,
        "other": m.feature_projection,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length per forward pass")
    parser.add_argument("--rounds", type=int, default=11, help="timing rounds (median of per-round ratios)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--part-passes", type=int, default=5, help="passes of the per-part breakdown")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    teacher = sslc.load_teacher("random:hubert-base").eval()
    base = teacher.config
    candidates = configs(base)
    students, architectures = {}, {"teacher": base}
    macs = {"teacher": count_macs(base, seconds=args.seconds).total}
    for name, config in candidates.items():
        students[name] = compress(teacher, config)
        architectures[name] = config.student_architecture(base)
        # The analytic count from sizes alone; int8 keeps the float MAC count (its ops are int8 MACs).
        macs[name] = count_macs(architectures[name], seconds=args.seconds).total
    built = time.perf_counter() - started

    compare_latency({"teacher": teacher, **students}, seconds=args.seconds, warmup=args.warmup, repeats=1,
                    threads=args.threads)  # warm-up only: every model once more, interleaved
    ratios, raw = latency_rounds(teacher, students, args.seconds, args.rounds, args.threads)
    threads = args.threads or torch.get_num_threads()

    print(
        f"random:hubert-base, {args.seconds:g} s audio, batch 1, CPU, {threads} torch threads, torch "
        f"{torch.__version__}; {args.rounds} rounds, each student timed between two teacher runs "
        f"(students built in {built:.0f} s)"
    )
    header = (
        f"{'config':<31} {'GMACs':>6} {'MAC ratio':>9} {'median ms':>9} {'lat. ratio':>10} {'IQR':>13} "
        f"{'lat/MAC':>7}"
    )
    print(header)
    print("-" * len(header))
    print(f"{'teacher':<31} {macs['teacher'] / 1e9:>6.2f} {1:>9.3f} {statistics.median(raw['teacher']):>9.1f} "
          f"{1:>10.3f} {'':>13} {1:>7.3f}")
    quotients = {}
    for name in students:
        mac_ratio = macs[name] / macs["teacher"]
        latency_ratio = statistics.median(ratios[name])
        quartiles = statistics.quantiles(ratios[name], n=4) if len(ratios[name]) > 1 else [latency_ratio] * 3
        quotients[name] = latency_ratio / mac_ratio
        flag = "  <- above goal" if quotients[name] > GOAL else ""
        print(
            f"{name:<31} {macs[name] / 1e9:>6.2f} {mac_ratio:>9.3f} {statistics.median(raw[name]):>9.1f} "
            f"{latency_ratio:>10.3f} {f'{quartiles[0]:.3f}-{quartiles[2]:.3f}':>13} {quotients[name]:>7.3f}{flag}"
        )

    print()
    print(f"where the time goes: ms per part of one forward pass (module hooks, median of {args.part_passes} "
          "interleaved passes),")
    print("and in brackets that part's latency ratio / MAC ratio vs the teacher's same part ('other': layer norms,")
    print("residual adds, dropout/reshapes and the feature projection; 'attn core': SDPA incl. softmax)")
    rows = part_times({"teacher": teacher, **students}, args.seconds, args.part_passes)
    teacher_parts, teacher_part_macs = rows["teacher"], part_macs(base, args.seconds)
    print(f"{'config':<31}" + "".join(f"{part:>14}" for part in PARTS))
    for name, parts in rows.items():
        cells = []
        mine = part_macs(architectures[name], args.seconds)
        for part in PARTS:
            cell = f"{parts[part]:.0f}"
            if name != "teacher" and teacher_part_macs[part] > 0 and mine[part] > 0 and teacher_parts[part] > 0:
                cell += f" ({(parts[part] / teacher_parts[part]) / (mine[part] / teacher_part_macs[part]):.2f})"
            cells.append(f"{cell:>14}")
        print(f"{name:<31}" + "".join(cells))

    print()
    print("notes: int8 counts as many MACs as float but runs them faster (quotient < 1 is expected there); a")
    print("part's quotient > 1 means it got less efficient per MAC: thin low-rank factors and narrow FFNs are")
    print("small matmuls with less reuse; 'other' (norms, GELU, residuals, softmax inside attn core) scales with")
    print("frames x width x depth only, so head/FFN/rank pruning does not shrink it; the positional conv (3% of")
    print("the teacher's MACs) is not compressed by any operator and weighs more in small students.")
    worst = max(quotients, key=quotients.get)
    print(
        f"goal: latency ratio <= {GOAL} x MAC ratio for every student; worst: {worst} ({quotients[worst]:.3f}); "
        f"median over students {statistics.median(quotients.values()):.3f}; "
        f"{'met' if quotients[worst] <= GOAL else 'MISSED'}"
    )
    print("headline = the worst (largest) latency/MAC quotient over the six compressed students")
    print(f"realized_speedup: {quotients[worst]:.3f}")


if __name__ == "__main__":
    main()
