"""Both stages in one command: healthy pre-training, then GBM fine-tuning (the encoder frozen
for the first tenth of it), then evaluation.

  python -m experiments.main --config=configs/two_stage.py        # or configs/two_stage.py:quick
"""

from configs import default


def get_config(size=None):
    config = default.get_config(size)
    config.stages = ("pretrain", "finetune")
    default.freeze_encoder_for_a_tenth(config)
    return config
