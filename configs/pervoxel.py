"""Baseline: a per-voxel MLP (1x1 convolutions) that sees one voxel's input channels and
nothing around it; no adversary. The floor a spatial model must clear (issue 12).

  python -m experiments.main --config=configs/pervoxel.py:quick
"""

from configs import default


def apply(config):
    """Turn a QS-Net config (any size) into the per-voxel baseline's."""
    config.model.name = "pervoxel"
    config.discriminator.name = "none"
    return config


def get_config(size=None):
    return apply(default.get_config(size))
