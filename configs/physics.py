"""Baseline: the signal equations of the site protocol with one scale per contrast, fitted in
closed form (least squares inside the brain mask) on the training splits; no gradient
descent, no adversary. The fit is saved as an ordinary checkpoint (docs/design.md).

  python -m experiments.main --config=configs/physics.py          # or configs/physics.py:quick
"""

from configs import default


def apply(config):
    """Turn a QS-Net config (any size) into the physics baseline's."""
    config.model.name = "physics"
    config.discriminator.name = "none"
    return config


def get_config(size=None):
    return apply(default.get_config(size))
