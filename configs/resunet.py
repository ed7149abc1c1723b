"""Baseline: Res-UNet, the QS-Net generator without deep supervision and without adversary.

Trained under the same two-stage schedule (healthy pre-training, GBM fine-tuning):
  python -m experiments.main --config=configs/resunet.py          # or configs/resunet.py:quick
"""

from configs import default


def apply(config):
    """Turn a QS-Net config (any size) into this baseline's."""
    config.model.name = "resunet"  # the registry builds it without auxiliary heads
    config.model.deep_supervision = False
    config.discriminator.name = "none"
    config.loss.adversarial_weight = 0.0
    default.freeze_encoder_for_a_tenth(config)
    return config


def get_config(size=None):
    return apply(default.get_config(size))
