"""Train (or reuse) every variant of a study config, evaluate them on one split and write the
combined table, paired Wilcoxon tests and comparison figure (experiments/study.py).

  python -m experiments.compare --config=configs/compare.py --workdir=runs/compare
  python -m experiments.compare --config=configs/generalization.py --workdir=runs/generalization
  python -m experiments.compare --config=configs/compare.py:tiny --workdir=/tmp/compare_tiny
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a study config (configs/compare.py, "
                                "configs/generalization.py, configs/ablations.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the variants' work dirs and comparison/.")
flags.mark_flags_as_required(["config", "workdir"])


def _load_job():
    from experiments import study  # noqa: PLC0415 (imported after TF is silenced)

    return study.run_study


main = cli.config_job_main(FLAGS, _load_job)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser)
