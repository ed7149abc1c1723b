"""Both stages in one command: healthy pre-training, then GBM fine-tuning, then evaluation.

  python -m experiments.main --config=configs/two_stage.py --workdir=runs/two_stage
"""

from configs import default


def get_config():
    config = default.get_config()
    config.stages = ("pretrain", "finetune")
    config.finetune.freeze_encoder_steps = 500
    return config
