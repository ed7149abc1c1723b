"""Parameters and forward FLOPs per slice of the generators (and the discriminator).

  python -m experiments.summary --config=configs/default.py [--height 192 --width 224]
  python -m experiments.summary --config=configs/default.py --model all

Sizes are those of the config (channels, widths, context slices) at one H x W slice; FLOPs
are XLA's count for the compiled inference forward pass at batch 1 (2 per multiply-add),
including the padding each model adds to reach its size multiple. Nothing is run.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                lock_config=False)
flags.DEFINE_integer("height", 192, "Slice height H (the paper preset's 192 x 224).")
flags.DEFINE_integer("width", 224, "Slice width W.")
flags.DEFINE_string("model", "all", "A generator name, or 'all' for every registered one.")
flags.mark_flags_as_required(["config"])


def summary_rows(config, names, height, width):
    """[(name, params, flops_per_slice)] for the generators `names` and the discriminator."""
    import jax  # noqa: PLC0415 (after flags parse, so --help stays fast)
    import jax.numpy as jnp  # noqa: PLC0415

    from qsnet_jax import models  # noqa: PLC0415

    span = 2 * config.data.context_slices + 1
    input_shape = (1, height, width, len(config.data.input_channels) * span)
    rows = []
    for name in names:
        model_config = config.model.copy_and_resolve_references()
        model_config.name = name
        module = models.build_generator(model_config,
                                        input_channels=config.data.input_channels,
                                        target_channels=config.data.target_channels,
                                        context_slices=config.data.context_slices)
        summary = models.model_summary(module, input_shape)
        rows.append((name, summary["params"], summary["flops_per_slice"]))
    disc = models.build_discriminator(config.discriminator)
    if disc is not None:
        condition = jax.ShapeDtypeStruct(input_shape, jnp.float32)
        image = jax.ShapeDtypeStruct(input_shape[:3] + (len(config.data.target_channels),),
                                     jnp.float32)
        variables = models.summary.abstract_variables(disc, condition, image)
        flops = models.summary.forward_flops(disc, variables, condition, image)
        rows.append((f"discriminator: {config.discriminator.name}",
                     models.count_params(variables), flops))
    return rows


def format_table(rows, height, width):
    lines = [f"{'model':<36} {'params':>14} {'GFLOP/slice':>12}   ({height} x {width}, fwd)"]
    for name, params, flops in rows:
        lines.append(f"{name:<36} {params:>14,d} {flops / 1e9:>12.2f}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.load_config_flag(FLAGS)
    from qsnet_jax import models  # noqa: PLC0415

    names = sorted(models.GENERATORS) if FLAGS.model == "all" else [FLAGS.model]
    unknown = [n for n in names if n not in models.GENERATORS]
    if unknown:
        cli.fail(f"unknown --model {unknown[0]!r}; known: all, {', '.join(models.GENERATORS)}")
    if FLAGS.height < 1 or FLAGS.width < 1:
        cli.fail(f"--height and --width must be positive, got {FLAGS.height} x {FLAGS.width}")
    try:
        rows = summary_rows(config, names, FLAGS.height, FLAGS.width)
    except ValueError as error:  # a config the models reject (unknown norm, channels ...)
        cli.fail(str(error))
    print(format_table(rows, FLAGS.height, FLAGS.width))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser)
