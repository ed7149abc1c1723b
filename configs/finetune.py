"""Stage 2: fine-tune the stage-1 model on the GBM split, then evaluate on gbm_test.

Starts from the stage-1 run of configs/pretrain.py of the same size (its default work dir):
  python -m experiments.main --config=configs/pretrain.py         # runs/pretrain
  python -m experiments.main --config=configs/finetune.py         # runs/finetune
  python -m experiments.main --config=configs/finetune.py:quick   # from runs/pretrain_quick
Another stage-1 run: --config.init_from=PATH.
"""

from configs import default


def get_config(size=None):
    config = default.get_config(size)
    config.stages = ("finetune",)
    config.init_from = "runs/pretrain" + (f"_{size}" if size else "")
    default.freeze_encoder_for_a_tenth(config)
    return config
