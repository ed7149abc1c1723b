"""Evaluate a trained generator on a cohort split: scores, tables and figures
(workflow.evaluate).

  python -m experiments.evaluate --workdir runs/default --split gbm_test [--stage finetune] \
      [--cohort DIR] [--subjects sub-001,sub-002] [--no-ema] \
      [--uncertainty residual_net|residual_gain|flip|constant]

Writes WORKDIR/<stage>/eval/<split>/{metrics.json, metrics.csv, report.md, figures/} and
prints the report. `--uncertainty` scores another interval method than the run's config
names, fitted once beside the run's own (WORKDIR/<stage>/uncertainty-<method>/), with its
scores in WORKDIR/<stage>/eval/<split>-uncertainty-<method>/: the run's own report and the
intervals `synthesize` writes stay as they were.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from experiments import cli

# qsnet_jax.uncertainty.METHODS, spelled here so that --help and usage errors need no JAX
UNCERTAINTY_METHODS = ("residual_net", "residual_gain", "flip", "constant")


def main(argv: Sequence[str] | None = None):
    parser = cli.OneLineArgumentParser(prog="python -m experiments.evaluate",
                                       description="Score a trained generator on a split.")
    parser.add_argument("--workdir", required=True, help="the training work dir")
    parser.add_argument("--split", default="", help="cohort split (default: config eval.split)")
    parser.add_argument("--stage", default="", help="stage to evaluate (default: the last)")
    parser.add_argument("--cohort", default="", help="cohort root (default: the run's cohort)")
    parser.add_argument("--subjects", default="", help="comma-separated subset of the split")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA weights")
    parser.add_argument("--uncertainty", default="", choices=UNCERTAINTY_METHODS,
                        help="score this interval method instead of the config's, beside it")
    args = parser.parse_args(argv)
    from workflow import evaluate  # after parsing: a usage error answers in a second

    result = cli.run(evaluate.evaluate_workdir, args.workdir, split=args.split,
                     stage=args.stage, cohort_dir=args.cohort,
                     subjects=[s for s in args.subjects.split(",") if s],
                     use_ema=not args.no_ema, uncertainty_method=args.uncertainty)
    with open(os.path.join(result["dir"], "report.md")) as f:
        print(f.read())
    print(f"wrote {result['dir']}", flush=True)
    return result


if __name__ == "__main__":
    main()
