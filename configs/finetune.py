"""Stage 2: fine-tune the stage-1 model on the GBM split, then evaluate on gbm_test.

Starts from the stage-1 run in `init_from` (run configs/pretrain.py first):
  python -m experiments.main --config=configs/finetune.py --workdir=runs/finetune \
      --config.init_from=runs/pretrain
"""

from configs import default


def get_config():
    config = default.get_config()
    config.stages = ("finetune",)
    # L1-only warm-up of each stage before the adversary joins (issue 12): 2000 steps, 10% of
    # pre-training and 40% of fine-tuning (not measured at this size; see configs/default.py)
    config.loss.adversarial_start_step = 2000
    config.init_from = "runs/pretrain"
    config.finetune.freeze_encoder_steps = 500
    return config
