"""Baseline: Res-UNet, the QS-Net generator without deep supervision and without adversary.

Trained under the same two-stage schedule (healthy pre-training, GBM fine-tuning):
  python -m experiments.main --config=configs/resunet.py --workdir=runs/resunet
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "resunet"  # the registry builds it without auxiliary heads
    config.model.deep_supervision = False
    config.discriminator.name = "none"
    config.loss.adversarial_weight = 0.0
    config.finetune.freeze_encoder_steps = 500
    return config
