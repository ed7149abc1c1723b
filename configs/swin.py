"""Baseline: Swin-Transformer U-Net generator in the QS-Net adversarial framework (the same
multi-scale PatchGAN, losses and schedule; no auxiliary heads, so no deep supervision), so
that the comparison isolates the generator.

  python -m experiments.main --config=configs/swin.py --workdir=runs/swin
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "swin"
    config.model.deep_supervision = False
    config.finetune.freeze_encoder_steps = 500
    return config
