"""Baseline: Swin-Transformer U-Net generator in the QS-Net adversarial framework (the same
multi-scale PatchGAN, losses and schedule; no auxiliary heads, so no deep supervision), so
that the comparison isolates the generator.

  python -m experiments.main --config=configs/swin.py             # or configs/swin.py:quick
"""

from configs import default


def apply(config):
    """Turn a QS-Net config (any size) into this baseline's."""
    config.model.name = "swin"
    config.model.deep_supervision = False
    default.freeze_encoder_for_a_tenth(config)
    return config


def get_config(size=None):
    return apply(default.get_config(size))
