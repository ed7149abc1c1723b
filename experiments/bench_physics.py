"""Benchmark of the MRF physics: dictionary build, SVD energy, matching throughput
(workflow.benchmarks.bench_physics).

Run: python -m experiments.bench_physics [--num_trs 1000] [--voxels 262144]
Prints one JSON object. Times are wall-clock seconds on whatever device JAX uses.
"""

from __future__ import annotations

import argparse
import json

from qsnet_jax import benchmarking
from workflow import benchmarks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_trs", type=int, default=1000)
    parser.add_argument("--voxels", type=int, default=262144)
    args = parser.parse_args()
    result = benchmarks.bench_physics(num_trs=args.num_trs, voxels=args.voxels)
    print(json.dumps({"machine": benchmarking.machine(), **result}, indent=1))


if __name__ == "__main__":
    main()
