"""Train (or reuse) every variant of a study config, evaluate them on one split and write the
combined table, paired Wilcoxon tests and comparison figure (workflow.studies.run_study).

  python -m experiments.compare --config=configs/compare.py:quick     # runs/compare_quick
  python -m experiments.compare --config=configs/generalization.py:quick
  python -m experiments.compare --config=configs/compare.py:tiny --workdir=/tmp/compare_tiny
  python -m experiments.compare --config=configs/compare.py:quick \
      --config.study.only="('qsnet','physics')"

The work dir defaults to runs/<config name>_<size>.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A study config with its size (configs/"
                                "compare.py:quick, generalization.py, ablations.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the variants' work dirs and comparison/ "
                    "(default: runs/<config name>).")
flags.mark_flags_as_required(["config"])


def main(argv):
    config = cli.load_config(FLAGS, argv)
    # imported once the flags parsed: a bad flag answers in a second, not after TensorFlow
    from workflow import studies

    cli.run(studies.run_study, config, FLAGS.workdir or cli.default_workdir(FLAGS),
            make_parents=FLAGS.workdir is None)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser)
