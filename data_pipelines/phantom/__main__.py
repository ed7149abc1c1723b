"""CLI: python -m data_pipelines.phantom --out DIR --preset {tiny,quick,paper} [--seed N]
[--healthy N --gbm N] [--site A|B] [--overwrite]

Bad input prints one line on stderr and exits with code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        print(f"phantom: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv):
    parser = _ArgumentParser(prog="python -m data_pipelines.phantom",
                             description="Build the digital brain phantom cohort.")
    parser.add_argument("--out", required=True, help="cohort folder to create")
    parser.add_argument("--preset", default="quick", help="tiny | quick | paper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--healthy", type=int, default=None,
                        help="site-A healthy subjects (60/40 train/test)")
    parser.add_argument("--gbm", type=int, default=None,
                        help="site-A GBM subjects (50/50 train/test)")
    parser.add_argument("--site", default=None, help="scan every subject at this site (A|B)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from data_pipelines.phantom.presets import resolve_preset
    from data_pipelines.phantom.writer import _non_empty, build_cohort

    try:
        preset = resolve_preset(args.preset, healthy=args.healthy, gbm=args.gbm,
                                site=args.site)
    except ValueError as error:
        print(f"phantom: {error}", file=sys.stderr)
        return 2
    out = os.path.abspath(os.path.expanduser(args.out))
    if _non_empty(out) and not args.overwrite:
        print(f"phantom: {out} exists and is not empty; pass --overwrite to replace it",
              file=sys.stderr)
        return 2
    if preset.num_subjects == 0:
        print("phantom: the cohort would have no subjects", file=sys.stderr)
        return 2
    path = build_cohort(out, preset, args.seed, overwrite=args.overwrite)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
