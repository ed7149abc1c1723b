"""Train and evaluate QS-Net (or a baseline) as a config says.

  python -m experiments.main --config=configs/finetune.py --workdir=runs/finetune
  python -m experiments.main --config=configs/smoke.py --workdir=runs/smoke \
      --config.pretrain.steps=20
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, metrics and figures.")
flags.mark_flags_as_required(["config", "workdir"])


def _load_job():
    from experiments import job  # noqa: PLC0415 (imported after TF is silenced)

    return job.run


main = cli.config_job_main(FLAGS, _load_job)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser)
