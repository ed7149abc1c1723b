"""Throughput of the training input pipeline at the paper's slice size; prints JSON
(workflow.benchmarks.bench_pipeline).

  python -m experiments.bench_pipeline                 # synthetic 192x224x150 cohort
  python -m experiments.bench_pipeline --cohort DIR    # a cohort on disk (e.g. the phantom)

Without --cohort it writes a synthetic cohort (random values inside an ellipsoidal brain,
zeros outside, every channel, uncompressed NIfTI) of a few subjects into a temporary folder,
prepares it with the TFDS builder, then times `make_train_iterator` (3 inputs, 5 targets,
batch 16, flips and jitter on) after a warm-up, for 2.5D context 0 and 1. The bar: >= 5x what
a training step consumes (about 1 slice/s for the full-size model on this CPU, docs/design.md 7).
"""

from __future__ import annotations

import argparse
import json

from configs import default
from workflow import benchmarks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", default="", help="a cohort folder (default: synthetic)")
    parser.add_argument("--split", default="healthy_train")
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-slices-per-s", type=float, default=1.0,
                        help="what a training step consumes (docs/design.md section 7)")
    args = parser.parse_args(argv)
    result = benchmarks.bench_pipeline(default.get_config().data, args)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
