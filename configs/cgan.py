"""Baseline: conditional GAN as in pix2pix (Isola et al. 2017): U-Net generator, a single
70x70 PatchGAN (3 layers) seeing (input maps, contrast), L1 weight 100, the vanilla
(cross-entropy) GAN loss, Adam 2e-4 with b1 0.5, constant then linearly decaying rate, no EMA.

  python -m experiments.main --config=configs/cgan.py             # or configs/cgan.py:quick
"""

from configs import default


def apply(config):
    """Turn a QS-Net config (any size) into this baseline's."""
    config.model.name = "pix2pix"
    config.model.deep_supervision = False
    # pix2pix trains with batch size 1, where batch norm is instance norm
    config.model.norm = "instance"
    config.discriminator.name = "patchgan"
    config.discriminator.num_layers = 3
    config.discriminator.num_scales = 1
    config.discriminator.norm = "instance"
    config.loss.l1_weight = 100.0
    config.loss.gan_loss = "vanilla"
    config.loss.adversarial_weight = 1.0
    config.loss.ssim_weight = 0.0
    config.optim.lr_schedule = "linear"
    config.optim.warmup_steps = 0
    config.optim.grad_clip_norm = 0.0
    config.optim.ema_decay = 0.0
    default.freeze_encoder_for_a_tenth(config)
    return config


def get_config(size=None):
    return apply(default.get_config(size))
