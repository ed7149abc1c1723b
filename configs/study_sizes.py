"""Shared sizes of the study configs (compare, generalization, ablations): the base training
config every variant of a study starts from, as configs/default.py gives it, or shrunk.

  size None     the paper's sizes and steps (configs/default.py as it is)
  size "tiny"   the tiny phantom, the smallest widths, 2 steps per stage (tests, seconds)
  size "quick"  the quick phantom (2 mm) and CPU-sized widths and steps: a whole comparison
                trains in about half an hour on a 2-core CPU (see the measured step times in
                the docstrings of the study configs)

Only data, widths, steps and logging cadence change here; every architecture, loss and
schedule choice stays with the variant's configs module (configs/resunet.py etc.).
"""

import ml_collections

from configs import default

SIZES = (None, "tiny", "quick")
# the fine-tuning steps with a frozen encoder in configs/resunet.py, cgan.py and swin.py
# (500 of 5000): the sized settings keep that fraction
FREEZE_FRACTION = 0.1


def base_config(size=None) -> ml_collections.ConfigDict:
    if size in ("", "none", "None"):
        size = None
    if size not in SIZES:
        raise ValueError(f"unknown study size {size!r}; known: tiny, quick (or none)")
    config = default.get_config()
    if size is None:
        return config
    config.data.shuffle_buffer = 256
    config.optim.warmup_steps = 0
    config.train.eval_max_subjects = 1
    config.eval.num_figure_subjects = 0  # the study draws its own comparison figure
    model, disc = config.model, config.discriminator
    if size == "tiny":
        config.data.phantom_preset = "tiny"
        config.data.shuffle_buffer = 64
        model.base_width, model.depth, model.blocks_per_level = 4, 2, 1
        model.bottleneck_width = 8
        model.pix2pix_base_width = 2
        model.embed_dim, model.swin_depths, model.swin_heads = 4, (1, 1), (1, 1)
        model.window_size = 4
        disc.base_width, disc.num_layers, disc.num_scales = 4, 2, 1
        config.optim.ema_decay = 0.5
        config.pretrain.steps, config.finetune.steps = 1, 2
        config.train.batch_size = 2
        config.eval.batch_size = 32
        every = 2
    else:
        config.data.phantom_preset = "quick"
        model.base_width, model.depth, model.blocks_per_level = 16, 3, 1
        model.bottleneck_width = 128
        model.pix2pix_base_width = 16
        model.embed_dim, model.swin_depths, model.swin_heads = 24, (2, 2, 2), (2, 4, 8)
        model.window_size = 7
        disc.base_width, disc.num_layers, disc.num_scales = 16, 3, 2
        config.optim.ema_decay = 0.99
        # few steps: the quick start's higher learning rates (the same for every variant)
        config.pretrain.steps, config.finetune.steps = 200, 100
        config.pretrain.learning_rate, config.finetune.learning_rate = 1e-3, 5e-4
        config.train.batch_size = 4
        config.eval.batch_size = 16
        every = 100
    config.train.log_every_steps = max(1, every // 2)
    config.train.eval_every_steps = every
    config.train.image_every_steps = every
    config.train.checkpoint_every_steps = every
    return config


def freeze_override(config) -> str:
    """The sized counterpart of the baselines' `finetune.freeze_encoder_steps=500`."""
    steps = round(FREEZE_FRACTION * int(config.finetune.steps))
    return f"finetune.freeze_encoder_steps={steps}"


def study_section(*, split, reference="", pairs=(), title="") -> ml_collections.ConfigDict:
    study = ml_collections.ConfigDict()
    study.base = "default"  # variant modules are applied as their changes to configs/default.py
    study.title = title
    study.split = split
    study.reference = reference
    study.pairs = tuple(pairs)
    study.only = ()  # names of a subset of the variants to run; empty: all
    study.num_figure_subjects = 2
    return study
