"""Stage 1: learn anatomy on the healthy training split.

  python -m experiments.main --config=configs/pretrain.py         # work dir runs/pretrain
  python -m experiments.main --config=configs/pretrain.py:quick   # runs/pretrain_quick
"""

from configs import default


def get_config(size=None):
    config = default.get_config(size)
    config.stages = ("pretrain",)
    # L1-only warm-up of each stage before the adversary joins (issue 12): 2000 steps, 10% of
    # pre-training and 40% of fine-tuning (not measured at this size; see configs/default.py)
    config.loss.adversarial_start_step = 2000
    return config
