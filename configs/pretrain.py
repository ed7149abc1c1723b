"""Stage 1: learn anatomy on the healthy training split.

  python -m experiments.main --config=configs/pretrain.py --workdir=runs/pretrain
"""

from configs import default


def get_config():
    config = default.get_config()
    config.stages = ("pretrain",)
    return config
