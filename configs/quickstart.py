"""The CPU quick start: QS-Net through both stages on the quick phantom cohort, then the
report and figures of the GBM test split. About 15 minutes on a 2-core CPU.

  python -m experiments.main --config=configs/quickstart.py --workdir=runs/quickstart

The quick phantom cohort (2 mm, 96x112 slices) is built into ~/.cache/qsnet_jax/phantom the
first time (about 1.5 minutes).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.phantom_preset = "quick"
    # A narrower QS-Net than the paper's (widths 16..128 instead of 32..512): same
    # architecture, deep supervision and multi-scale adversary, sized for a laptop CPU.
    config.model.base_width = 16
    config.model.depth = 4
    config.model.blocks_per_level = 1
    config.model.bottleneck_width = 128
    config.discriminator.base_width = 32
    config.discriminator.num_scales = 2
    config.optim.warmup_steps = 20
    config.optim.ema_decay = 0.99
    config.pretrain.steps = 300
    config.pretrain.learning_rate = 1e-3
    config.finetune.steps = 150
    config.finetune.learning_rate = 5e-4
    config.finetune.freeze_encoder_steps = 30
    config.train.batch_size = 8
    config.train.log_every_steps = 25
    config.train.eval_every_steps = 150
    config.train.image_every_steps = 150
    config.train.checkpoint_every_steps = 75
    config.train.eval_max_subjects = 1
    config.eval.batch_size = 16
    config.eval.num_figure_subjects = 3
    return config
