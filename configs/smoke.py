"""A seconds-long end-to-end run of both stages on the tiny phantom cohort (CI, laptops).

  python -m experiments.main --config=configs/smoke.py --workdir=runs/smoke
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.phantom_preset = "tiny"
    config.data.shuffle_buffer = 64
    config.model.base_width = 8
    config.model.depth = 2
    config.model.blocks_per_level = 1
    config.model.bottleneck_width = 32
    config.discriminator.base_width = 8
    config.discriminator.num_layers = 2
    config.discriminator.num_scales = 1
    config.optim.warmup_steps = 0
    config.optim.ema_decay = 0.9
    for stage in (config.pretrain, config.finetune):
        stage.steps = 6
    config.finetune.freeze_encoder_steps = 2  # exercises the encoder freeze end to end
    config.train.batch_size = 4
    config.train.log_every_steps = 2
    config.train.eval_every_steps = 6
    config.train.image_every_steps = 6
    config.train.checkpoint_every_steps = 3
    config.train.eval_max_subjects = 1
    config.eval.batch_size = 8
    config.eval.num_figure_subjects = 1
    return config
