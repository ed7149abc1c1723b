"""CLI: python -m data_pipelines.phantom --out DIR --preset {tiny,quick,bench,paper} [--seed N]
[--healthy N --gbm N] [--site A|B] [--jobs N] [--subjects sub-001,sub-004]
[--without EFFECT,...] [--overwrite]

    python -m data_pipelines.phantom realism --preset quick   # the realism report (JSON)

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
    parser.add_argument("--preset", default="quick", help="tiny | quick | bench | paper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--healthy", type=int, default=None,
                        help="site-A healthy subjects (60/40 train/test)")
    parser.add_argument("--gbm", type=int, default=None,
                        help="site-A GBM subjects (50/50 train/test)")
    parser.add_argument("--site", default=None, help="scan every subject at this site (A|B)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default: every core, as many as the "
                             "available memory holds); the files do not depend on it")
    parser.add_argument("--subjects", default=None,
                        help="build only these subjects of the preset (comma-separated ids)")
    parser.add_argument("--without", default=None,
                        help="switch acquisition effects off (comma-separated): "
                             "anatomy, tse, t1_sequence, mt, b1, gibbs, swi_background")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out folder")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["realism"]:
        from data_pipelines.phantom import realism

        return realism.main(argv[1:])
    args = parse_args(argv)
    from data_pipelines.phantom.presets import resolve_preset
    from data_pipelines.phantom.writer import _non_empty, build_cohort, select_specs

    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] \
        if args.subjects else None
    try:
        preset = resolve_preset(args.preset, healthy=args.healthy, gbm=args.gbm,
                                site=args.site, without=args.without)
        select_specs(preset, args.seed, subjects)
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
    path = build_cohort(out, preset, args.seed, overwrite=args.overwrite, jobs=args.jobs,
                        subjects=subjects)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
