"""Train and evaluate QS-Net (or a baseline) as a config says (workflow.train_eval.run).

  python -m experiments.main --config=configs/default.py:quick     # work dir runs/default_quick
  python -m experiments.main --config=configs/pretrain.py          # then:
  python -m experiments.main --config=configs/finetune.py          # starts from runs/pretrain
  python -m experiments.main --config=configs/default.py:tiny --workdir=/tmp/tiny \
      --config.pretrain.steps=20

The work dir defaults to runs/<config name>. A config takes a size after ':' (tiny, quick,
paper; no size = paper). `--config.model.name=physics` fits the physics baseline in closed
form instead of training it.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file, optionally with a size "
                                "(configs/default.py:quick).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, metrics and figures "
                    "(default: runs/<config name>).")
flags.mark_flags_as_required(["config"])


def main(argv):
    config = cli.load_config(FLAGS, argv)
    # imported once the flags parsed: a bad flag answers in a second, not after TensorFlow
    from workflow import train_eval

    cli.run(train_eval.run, config, FLAGS.workdir or cli.default_workdir(FLAGS),
            make_parents=FLAGS.workdir is None)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser)
