"""The CPU quick start: QS-Net through both stages on the quick phantom cohort, then the
report and figures of the GBM test split.

  python -m experiments.main --config=configs/quickstart.py --workdir=runs/quickstart

Measured (issue 12, v1 quick phantom, under load: two CPU jobs on a 2-core machine): the
800 pre-training steps took 25 min (about 1 step/s while L1-only, 0.45 step/s with the
adversary); not yet timed on a quiet machine. WORKDIR/training_curves.png and TensorBoard
(WORKDIR/<stage>/tensorboard) show the loss and validation scores against steps.

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
    config.optim.warmup_steps = 50
    config.optim.ema_decay = 0.99
    # The training recipe (issue 12): random 64x64 patches that hold brain, 16 per batch
    # (fewer pixels per step than 8 whole 96x112 slices, so more updates per second), a
    # quarter of the GBM patches aimed at the tumor, and an L1-only warm-up in each stage
    # before the adversary joins. Evaluation runs on whole slices.
    config.data.patch_size = 64
    config.data.tumor_patch_fraction = 0.25
    config.loss.adversarial_start_step = 500
    config.pretrain.steps = 800
    config.pretrain.learning_rate = 1e-3
    config.finetune.steps = 400
    config.finetune.learning_rate = 5e-4
    config.finetune.freeze_encoder_steps = 30
    config.train.batch_size = 16
    config.train.log_every_steps = 25
    config.train.eval_every_steps = 100
    config.train.image_every_steps = 200
    config.train.checkpoint_every_steps = 200
    config.train.eval_max_subjects = 1
    config.eval.batch_size = 16
    config.eval.num_figure_subjects = 3
    return config
