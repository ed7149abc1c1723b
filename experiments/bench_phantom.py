"""Phantom cohort build times; prints JSON.

    python -m experiments.bench_phantom [--skip-quick] [--paper-rounds 2] [--jobs N]

quick: the whole preset built with the CLI's code path (`--jobs` workers, default every
core; seconds, measured), with each subject's own time.
paper: the MRF model (dictionary + tables), then `--paper-rounds` rounds of `jobs` subjects
(healthy and GBM alternating) simulated and written at 1 mm with the CLI's code path, side
by side in `jobs` workers, so every time is measured under the load of a real build. A
worker's first subject also pays the worker's one-time start-up (JAX compiles, the 1 mm
template and its derived volumes, loaded once per process); a real build pays it once per
worker, not once per subject. So the first round gives start-up + subject, the later rounds
the steady per-subject time of each group, and the full cohort on `jobs` cores is
*extrapolated* as model + start-up + sum(steady(group) x count(group)) / jobs
(workflow.benchmarks.extrapolate_build). On a shared machine every number is measured under
load.
"""

from __future__ import annotations

import json

from data_pipelines.phantom import writer
from experiments import cli
from qsnet_jax import benchmarking
from workflow import benchmarks


def build_parser():
    parser = cli.OneLineArgumentParser(prog="python -m experiments.bench_phantom",
                                       description=__doc__.splitlines()[0])
    parser.add_argument("--skip-quick", action="store_true")
    parser.add_argument("--paper-rounds", type=int, default=2,
                        help="rounds of `jobs` 1 mm subjects (0: skip the paper preset)")
    parser.add_argument("--jobs", type=int, default=None, help="workers (default: every core)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.paper_rounds < 0 or (args.jobs is not None and args.jobs < 1):
        cli.fail("--paper-rounds must be >= 0 and --jobs >= 1")
    jobs = args.jobs or writer.available_cores()
    result = {"machine": benchmarking.machine(), "jobs": jobs}
    if not args.skip_quick:
        result.update(benchmarks.bench_phantom_quick(jobs))
    if args.paper_rounds:
        result["paper"] = benchmarks.bench_phantom_paper(args.paper_rounds, jobs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
