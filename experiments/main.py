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


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.load_config_flag(FLAGS)
    cli.quiet_tensorflow()
    from experiments import job  # noqa: PLC0415 (after TF is silenced)

    try:
        job.run(config, FLAGS.workdir)
    except cli.UserError as error:
        cli.fail(str(error))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser)
