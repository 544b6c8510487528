"""What does each compression knob cost on a trained teacher? One knob changed at a time from an anchor's shape.

On the trained fixture teacher (benchmarks/fixtures), the FitHuBERT-like shape (`sslc.search.baselines`: every
layer at 0.625 of the width, FFN as wide, 0.625 of the heads, CNN whole) and variants of it that change one knob
each (half the CNN channels, low-rank attention or FFN, one head per layer, its first 2 layers) are trained by the
search's short-trial trainer for SHORT and for LONG steps and scored by the search's protocol (held-out loss). For
each: its share of the teacher's MACs and the two losses. This is the measurement behind the search's warm start
(sslc/search/searcher.py): a knob that costs much more loss than it saves MACs, sampled per layer, keeps a sampler
away from the anchors' region.

Last line: `knob_costs: R` = the loss after LONG steps with half the CNN channels / the shape's own (how much the
cheapest-looking knob costs here).

    python benchmarks/knob_costs.py [--short 60] [--long 300] [--teacher-recipe mini|gpu|cpu] [--quick]

Measured 2026-12-03 on the mini-HuBERT (the default teacher now: 12 layers, HuBERT Base's MAC shares at 2.5 s,
where the shares below are counted; 708 s on 2 cores shared with three other jobs; losses after 60 / 300 steps):
  fithubert-like 52.0% of the MACs 0.213 / 0.164; half the CNN channels 26.8% 0.555 / 0.418; attention rank 1/2
  of break-even 47.8% 0.218 / 0.170; FFN rank 1/2 49.9% 0.227 / 0.180; one head per layer 45.7% 0.230 / 0.181;
  first 2 layers 38.1% 0.285 / 0.239. knob_costs: 2.55. With HuBERT Base's proportions the CNN is a third of the
  MACs and halving it saves 25 points, yet after 300 steps it still costs 2.55x the loss, more than keeping 2 of
  12 layers (1.46x). What this measures is the cost at short-trial length: every layer above a narrowed CNN sees
  new inputs and must re-learn, which the published CNN pruning (DPHuBERT: 75k steps) has time for and 300 steps
  do not. A short-trial search on this judge therefore under-rates CNN cuts; longer fidelities (issue 24's
  promotion, the finalists' retraining) are where such a cut can show its worth.

Measured 2026-12-01 on the 3-layer gpu-recipe teacher (2 idle cores, 275 s; losses after 60 / 300 steps):
  fithubert-like 42.3% of the MACs 0.637 / 0.592; half the CNN channels 35.5% 0.983 / 0.906; attention rank 1/2
  of break-even 38.0% 0.641 / 0.596; FFN rank 1/2 40.1% 0.653 / 0.612; one head per layer 29.5% 0.647 / 0.602;
  first 2 layers 32.3% 0.642 / 0.600. knob_costs: 1.53. The fixture's CNN is narrow (32 channels, about a tenth of
  its MACs), so halving it saves little and loses much; HuBERT Base's 512-channel CNN is another matter.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks.fixtures import add_recipe_option, trained_teacher  # noqa: E402
from sslc.compress.config import break_even_rank  # noqa: E402
from sslc.metrics import count_macs  # noqa: E402
from sslc.search.baselines import thin_config  # noqa: E402
from sslc.search.inputs import prepare_inputs  # noqa: E402
from sslc.search.runner import SearchSettings, trainer_config  # noqa: E402
from sslc.trainers import run_short_trial  # noqa: E402

SHORT, LONG = 60, 300


def variants(teacher) -> dict:
    shape = thin_config(teacher, 0.625, 0.625, 1.0)
    width = shape.width(teacher)
    depth = len(shape.layers)

    def changed(**knobs):
        return dataclasses.replace(shape, **knobs)

    inner = [h * teacher.head_dim for h in shape.heads]
    return {
        "fithubert-like": shape,
        "half the CNN channels": changed(conv_channels=[max(1, c // 2) for c in shape.conv_channels]),
        "attention rank 1/2": changed(attn_rank=[break_even_rank(width, i) // 2 for i in inner]),
        "FFN rank 1/2": changed(ffn_rank=[break_even_rank(width, f) // 2 for f in shape.ffn]),
        "one head per layer": changed(heads=[1] * depth),
        "first 2 layers": changed(layers=shape.layers[:2], heads=shape.heads[:2], ffn=shape.ffn[:2],
                                  attn_rank=shape.attn_rank[:2], ffn_rank=shape.ffn_rank[:2]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=SHORT, help="steps of the short training (the search's)")
    parser.add_argument("--long", type=int, default=LONG, help="steps of the longer training")
    parser.add_argument("--quick", action="store_true", help="the quick fixture, 2 and 3 steps (smoke test)")
    add_recipe_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.short, args.long = 2, 3
    torch.set_num_threads(2)
    started = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)
    settings = SearchSettings(teacher=str(fixture.teacher_dir), data=str(fixture.train_dir), budget="100%")
    with tempfile.TemporaryDirectory(prefix="sslc-knobs-") as tmp:
        inputs = prepare_inputs(str(fixture.teacher_dir), str(fixture.train_dir), Path(tmp), settings.crop_seconds,
                                settings.seed)
        targets, teacher = inputs.targets(), inputs.teacher.config
        teacher_macs = count_macs(teacher, seconds=fixture.budget_seconds).total
        print(f"teacher: fixture ({teacher.num_layers} layers, {teacher.embed_dim} wide); losses after "
              f"{args.short} / {args.long} steps of the search's trainer")
        losses = {}
        for name, config in variants(teacher).items():
            share = count_macs(config.student_architecture(teacher), seconds=fixture.budget_seconds).total / teacher_macs
            row = []
            for steps in (args.short, args.long):
                trainer = dataclasses.replace(trainer_config(settings), steps=steps, log_every=max(1, steps // 10),
                                              device="cpu")
                torch.manual_seed(0)
                student = inputs.build_student(config, quantize=False)
                result = run_short_trial(student, targets, inputs.data.train, inputs.data.heldout, trainer,
                                         kept_layers=config.layers)
                row.append(result.heldout_loss)
            losses[name] = row
            print(f"{name:22s} {share:6.1%} of the MACs: loss {row[0]:.4f} / {row[1]:.4f}", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")
    print(f"knob_costs: {losses['half the CNN channels'][1] / losses['fithubert-like'][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
