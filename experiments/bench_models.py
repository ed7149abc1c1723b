"""Forward and forward+backward seconds per slice of each generator on this machine; prints
JSON (workflow.benchmarks.bench_model).

  python -m experiments.bench_models [--models qsnet,resunet,pix2pix,swin,physics]
      [--batch 2 --height 192 --width 224 --repeats 3]

The default config's widths, 3 inputs -> 5 contrasts, float32. "forward" is the jitted
inference pass; "train" is the value and gradient of an L1 loss with respect to the
parameters (what a generator step costs without the optimizer and the discriminator).
Each timing is the median of `repeats` runs after one warm-up (compilation excluded). XLA CPU
step times vary about +-10% between runs here (docs/design.md section 7): compare within a run.
"""

from __future__ import annotations

import argparse
import json

import jax

from configs import default
from qsnet_jax import models
from workflow import benchmarks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.GENERATORS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in models.GENERATORS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; known: {', '.join(models.GENERATORS)}")
    results = {"device": str(jax.devices()[0]), "batch": args.batch,
               "slice": [args.height, args.width], "models": {}}
    for name in names:
        results["models"][name] = benchmarks.bench_model(
            default.get_config(), name, batch=args.batch, height=args.height,
            width=args.width, repeats=args.repeats)
        print(json.dumps({name: results["models"][name]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
