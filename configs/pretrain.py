"""Stage 1: learn anatomy on the healthy training split.

  python -m experiments.main --config=configs/pretrain.py         # work dir runs/pretrain
  python -m experiments.main --config=configs/pretrain.py:quick   # runs/pretrain_quick
"""

from configs import default


def get_config(size=None):
    config = default.get_config(size)
    config.stages = ("pretrain",)
    return config
