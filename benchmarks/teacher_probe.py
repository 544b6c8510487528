"""The fixture teacher's phoneme probe error rate, trained vs random (the same model at its initial weights).

Builds (or reuses) `benchmarks/fixtures` (eSpeak NG corpus + HuBERT-style pretraining), then probes both teachers
with sslc-probe's ctc task on phonemes (`.phn`, `--units tokens`): trained on the training voices, scored on the
held-out voices. The trained teacher is only worth using in benchmarks if its error rate is clearly lower.

    python benchmarks/teacher_probe.py [--quick] [--epochs 20] [--max-train N] [--teacher-recipe mini|gpu|cpu]

Last line: `teacher_probe: <PER trained> vs <PER random> (ratio R)`. Measured with --max-train 240, 20 epochs:
- recipe mini (the default; 12-layer mini-HuBERT, committed fp16 weights, 3000 CPU steps; 2026-12-03): 0.3747 vs
  0.8876 (ratio 0.42), the probe's layer weights 0.03 on the CNN output and 0.04 / 0.05 / 0.06 / 0.15 / 0.15 /
  0.15 / 0.08 / 0.11 / 0.09 / 0.06 / 0.02 / 0.02 on layers 1-12 (the random teacher's lean on layers 8-10: 0.17 /
  0.25 / 0.16): trained well below the random teacher, its middle layers carry what the probe uses. 49 s + 58 s
  on 2 cores shared with other jobs.
- recipe gpu (committed fp16 weights, 24000 GPU steps): 0.1848 vs 0.8623 (ratio 0.21), the probe's
  layer weights 0.06 / 0.41 / 0.46 / 0.06 (CNN output, layers 1-3; the random teacher's 0.11 / 0.47 / 0.10 / 0.32):
  clearly better, and its Transformer layers carry what the probe uses. 137 s + 160 s on 2 shared cores. (fp32
  weights before the fp16 copy: 0.1852; the same recipe with masked frames only in the loss: 0.3284.)
- recipe cpu (built from nothing here in 408 s: 2000 steps at lr 1e-3): 0.3057 vs 0.8623 (ratio 0.35), layer
  weights 0.11 / 0.29 / 0.54 / 0.06: clearly trained as well (17 s + 19 s on 2 idle cores). Its predecessor (250 steps
  at lr 5e-4): 0.7099 vs 0.8623 (ratio 0.82), 0.96 of the probe's weight on the CNN output: not trained enough.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks.fixtures import add_recipe_option, trained_teacher  # noqa: E402
from sslc.probes import ProbeSettings, run_probe  # noqa: E402
from sslc.probes.results import encode_fn, resolve_targets  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick fixture (smoke test)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--max-train", type=int, default=None, help="probe on at most this many training files")
    parser.add_argument("--threads", type=int, default=2)
    add_recipe_option(parser)
    parser.add_argument("--teacher", type=Path, action="append", default=[],
                        help="probe this HubertModel directory instead of the recipe's teacher (repeatable)")
    parser.add_argument("--no-random", action="store_true", help="skip the random teacher")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    fixture = trained_teacher(args.teacher_recipe, quick=args.quick)
    print(f"fixture: teacher {fixture.teacher_dir} (recipe {fixture.info.get('recipe', args.teacher_recipe)}), "
          f"corpus {fixture.corpus_dir} (ready after {time.perf_counter() - started:.0f}s here)")
    train, heldout = fixture.phone_probe_files(args.max_train)
    print(f"probe: {len(train)} training / {len(heldout)} held-out files, {args.epochs} epochs")
    results = {}
    models = [(f"trained{i or ''}", path) for i, path in enumerate(args.teacher or [fixture.teacher_dir])]
    for label, path in models + ([] if args.no_random else [("random", fixture.random_dir)]):
        [target] = resolve_targets([str(path)], pareto=False, device="cpu", say=lambda line: None)
        config = target.extractor.config
        t0 = time.perf_counter()
        outcome = run_probe(encode_fn(target.extractor), config.num_layers + 1, config.embed_dim, train, heldout,
                            ProbeSettings("ctc", epochs=args.epochs))
        results[label] = outcome.metric
        print(f"{label}: PER {outcome.metric:.4f}, last train loss {outcome.train_loss:.3f}, layer weights "
              f"{outcome.layer_weights} ({time.perf_counter() - t0:.0f}s)")
    if "random" not in results:
        print(f"teacher_probe: {results['trained']:.4f}")
        return 0
    ratio = results["trained"] / results["random"] if results["random"] else float("nan")
    print(f"teacher_probe: {results['trained']:.4f} vs {results['random']:.4f} (ratio {ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
