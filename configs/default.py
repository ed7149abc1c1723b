"""Every knob of QS-Net in JAX, with the paper's defaults.

Run (both stages, QS-Net, on the phantom cohort built into the cache when absent):
  python -m experiments.main --config=configs/default.py --workdir=runs/default

Override any field on the command line, e.g. `--config.finetune.steps=500`.
Other configs import this one and change a few fields.

Training recipe at the paper's size (issue 12; chosen by measurement on the quick phantom,
configs/quickstart.py, and scaled here for one GPU, not measured at this size):
- random 128x128 patches that hold brain (`data.patch_size`), 16 per batch. At 1 mm a
  128-pixel patch spans 128 mm, the field of view of the quick start's 64-pixel patches at
  2 mm, and the same share (38%) of a 192x224 slice; 16 patches are 262k pixels per step,
  about the 344k of the paper's 8 whole slices, so a GPU step costs about what it did while
  each step sees twice as many brain regions. 128 is a multiple of 2**model.depth (no
  padding) and leaves the 2-scale PatchGAN 64 pixels at its coarse scale (it needs 24).
  Evaluation and inference stay on whole slices (the generators are fully convolutional).
  On the 2 mm quick phantom (96x112, this file's default cohort) a 128 patch is cut to the
  whole slice; the patches apply with `--config.data.phantom_preset=paper` or a 1 mm cohort.
- a quarter of the GBM patches aimed at the tumor (`data.tumor_patch_fraction`), which is a
  small share of the brain.
- the paper's 20000 + 5000 steps and learning rates. The L1-only warm-up before the
  adversary (`loss.adversarial_start_step`) is set by the run configs (two_stage.py,
  pretrain.py, finetune.py: 2000 steps of each stage, so the adversary meets a generator
  that already draws the anatomy, and still trains 90% / 60% of the stages); here it stays
  0, the paper's losses from the first step. The quick start's warm-up is longer (500 of its
  800 pre-training steps, all 400 fine-tuning steps) because its budget is short and its
  scores are MAE and PSNR, which the adversary does not improve.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # ---------------------------------------------------------------- data
    config.data = data = ml_collections.ConfigDict()
    # A cohort root holding manifest.csv. Empty: the phantom cohort named below, built into
    # `phantom_cache_dir` the first time it is needed.
    data.cohort_dir = ""
    data.phantom_preset = "quick"  # tiny | quick | paper (data_pipelines.phantom)
    data.phantom_seed = 0
    data.phantom_cache_dir = "~/.cache/qsnet_jax/phantom"
    data.input_channels = ("t1map", "t2map", "pdmap")
    data.target_channels = ("t1w", "t2w", "t1flair", "t2flair", "swi")
    data.context_slices = 0  # 2.5D: k neighbouring slices on each side as extra channels
    data.min_brain_fraction = 0.05  # training slices with less brain than this are skipped
    # Train on random patches of this size that hold brain (0 = whole slices); evaluation
    # always runs on whole slices. A multiple of 2**model.depth avoids padding.
    data.patch_size = 128
    data.tumor_patch_fraction = 0.25  # share of patches placed on a tumor voxel, when any
    data.flip_lr = True  # augmentation: random left-right flip
    data.intensity_jitter = 0.05  # augmentation: +-5% gain on qualitative inputs only
    data.shuffle_buffer = 2048
    data.prefetch = 2
    # decoded training/validation slices kept in memory per split and process, in MiB
    # (0 = none): from the second epoch on, batches come from memory
    data.cache_mb = 2048
    data.tfds_data_dir = ""  # where TFDS writes prepared data; empty: <cohort>/tfds
    data.convert_seconds = False  # T1/T2 maps given in seconds are multiplied by 1000
    data.resample = False  # modalities on another grid are resampled onto the T1 map's grid

    # --------------------------------------------------------------- model
    config.model = model = ml_collections.ConfigDict()
    model.name = "qsnet"  # qsnet | resunet | pix2pix | swin | physics | pervoxel
    model.base_width = 32
    model.depth = 4  # number of down-samplings; inputs are padded to a multiple of 2**depth
    model.blocks_per_level = 2
    model.bottleneck_width = 512
    model.norm = "group"  # group | instance | batch | none
    model.activation = "silu"  # silu | relu | leaky_relu | gelu
    model.dropout = 0.0
    model.output_activation = "sigmoid"  # sigmoid | none
    model.deep_supervision = True  # auxiliary output heads at every decoder scale
    model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    # pix2pix U-Net-256 generator: ngf of Isola et al. 2017
    model.pix2pix_base_width = 64
    # Swin generator
    model.window_size = 8
    model.embed_dim = 96
    model.swin_depths = (2, 2, 2, 2)
    model.swin_heads = (3, 6, 12, 24)
    # per-voxel baseline (an MLP of 1x1 convolutions: no spatial context)
    model.pervoxel_width = 64
    model.pervoxel_layers = 3
    # physics baseline: the protocol set whose signal equations it evaluates
    model.physics_site = "A"

    # -------------------------------------------------------- discriminator
    config.discriminator = disc = ml_collections.ConfigDict()
    disc.name = "multiscale_patchgan"  # patchgan | multiscale_patchgan | none
    disc.base_width = 64
    disc.num_layers = 3  # 3 layers = the 70x70 PatchGAN
    disc.num_scales = 2
    disc.norm = "instance"
    disc.spectral_norm = False

    # ---------------------------------------------------------------- loss
    config.loss = loss = ml_collections.ConfigDict()
    loss.l1_weight = 100.0
    # weight of the L1 term of each auxiliary head, coarse to fine; the list is cut or
    # extended with its last value to the number of heads
    loss.deep_supervision_weights = (0.125, 0.25, 0.5)
    loss.adversarial_weight = 1.0
    # L1-only warm-up: the adversarial term and the discriminator's updates start at this
    # step of each stage (0 = from the first step)
    loss.adversarial_start_step = 0
    loss.gan_loss = "lsgan"  # lsgan | vanilla | hinge
    loss.ssim_weight = 0.0

    # ------------------------------------------------------ optimization
    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"  # adam | adamw
    optim.b1 = 0.5
    optim.b2 = 0.999
    optim.weight_decay = 0.0
    optim.lr_schedule = "cosine"  # constant | cosine | linear
    optim.warmup_steps = 100
    optim.grad_clip_norm = 1.0  # 0 = off
    optim.disc_steps_per_gen_step = 1
    optim.disc_learning_rate_factor = 1.0
    optim.ema_decay = 0.999  # 0 = no EMA of generator weights

    # ------------------------------------------------- the two-stage schedule
    # Stages run in this order in one command. configs/pretrain.py runs ("pretrain",),
    # configs/finetune.py runs ("finetune",) starting from `init_from`.
    config.stages = ("pretrain", "finetune")
    config.init_from = ""  # a work dir or checkpoint path the first stage starts from
    config.pretrain = _stage("healthy_train", "healthy_test", steps=20000, lr=2e-4)
    config.finetune = _stage("gbm_train", "gbm_test", steps=5000, lr=1e-4)

    # ---------------------------------------------------------- training
    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 16  # global, over all devices and hosts (patches, see the docstring)
    train.log_every_steps = 50
    train.eval_every_steps = 1000
    train.image_every_steps = 1000
    train.checkpoint_every_steps = 500
    train.max_checkpoints_to_keep = 3
    train.best_metric = "ssim"  # validation score that marks the best checkpoint (higher=better)
    train.eval_max_subjects = 4  # validation during training uses at most this many subjects
    train.inject_nan_at_step = -1  # test hook: NaN in the batch of this (1-based) step
    # XLA's persistent compilation cache: a re-run (or the next stage, when its program is the
    # same) skips compilation. Empty: off.
    train.compilation_cache_dir = "~/.cache/qsnet_jax/jax_cache"

    # --------------------------------------------------------- evaluation
    config.eval = ev = ml_collections.ConfigDict()
    ev.split = "gbm_test"
    ev.batch_size = 16
    ev.num_figure_subjects = 3
    ev.use_ema = True
    ev.after_each_stage = True

    # ------------------------------------------------------------- mesh
    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1  # devices along the batch axis; -1 = all that the model axis leaves
    mesh.model = 1
    mesh.param_sharding = "replicated"  # replicated | fsdp (shard large params over "data")
    mesh.fsdp_min_size = 2**18  # params with fewer elements stay replicated under fsdp

    # ------------------------------------------------------ distributed
    config.distributed = dist = ml_collections.ConfigDict()
    dist.initialize = False  # call jax.distributed.initialize() (multi-host)
    dist.coordinator_address = ""  # empty: let JAX detect (TPU pods, SLURM)
    dist.num_processes = 0
    dist.process_id = -1
    return config


def _stage(train_split, eval_split, *, steps, lr):
    stage = ml_collections.ConfigDict()
    stage.train_split = train_split
    stage.eval_split = eval_split
    stage.steps = steps
    stage.learning_rate = lr
    stage.freeze_encoder_steps = 0  # keep the generator encoder fixed for the first N steps
    return stage
