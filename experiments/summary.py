"""Parameters and forward FLOPs per slice of the generators (and the discriminator).

  python -m experiments.summary --config=configs/default.py [--height 192 --width 224]
  python -m experiments.summary --config=configs/default.py --model qsnet

Sizes are those of the config (channels, widths, context slices) at one H x W slice; FLOPs
are XLA's count for the compiled inference forward pass at batch 1 (2 per multiply-add),
including the padding each model adds to reach its size multiple. Nothing is run.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from qsnet_jax import models
from workflow import reports

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                lock_config=False)
flags.DEFINE_integer("height", 192, "Slice height H (the paper preset's 192 x 224).")
flags.DEFINE_integer("width", 224, "Slice width W.")
flags.DEFINE_string("model", "all", "A generator name, or 'all' for every registered one.")
flags.mark_flags_as_required(["config"])


def main(argv):
    config = cli.load_config(FLAGS, argv)
    names = sorted(models.GENERATORS) if FLAGS.model == "all" else [FLAGS.model]
    unknown = [n for n in names if n not in models.GENERATORS]
    if unknown:
        cli.fail(f"unknown --model {unknown[0]!r}; known: all, {', '.join(models.GENERATORS)}")
    if FLAGS.height < 1 or FLAGS.width < 1:
        cli.fail(f"--height and --width must be positive, got {FLAGS.height} x {FLAGS.width}")
    try:
        rows = reports.model_summary_rows(config, names, FLAGS.height, FLAGS.width)
    except ValueError as error:  # a config the registries reject (unknown norm, channels ...)
        cli.fail(str(error))
    print(reports.model_summary_table(rows, FLAGS.height, FLAGS.width))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser)
