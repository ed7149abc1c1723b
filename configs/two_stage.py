"""Both stages in one command: healthy pre-training, then GBM fine-tuning, then evaluation.

  python -m experiments.main --config=configs/two_stage.py --workdir=runs/two_stage
"""

from configs import default


def get_config():
    config = default.get_config()
    config.stages = ("pretrain", "finetune")
    # L1-only warm-up of each stage before the adversary joins (issue 12): 2000 steps, 10% of
    # pre-training and 40% of fine-tuning (not measured at this size; see configs/default.py)
    config.loss.adversarial_start_step = 2000
    config.finetune.freeze_encoder_steps = 500
    return config
