"""Every knob of QS-Net in JAX, with the paper's defaults, and the sizes every config takes.

Run (both stages, QS-Net, on the phantom cohort built into the cache when absent):
  python -m experiments.main --config=configs/default.py          # paper size, runs/default
  python -m experiments.main --config=configs/default.py:quick    # the CPU quick start
  python -m experiments.main --config=configs/default.py:tiny     # seconds: CI, a smoke test

A size follows the file name after ':' (ml_collections passes it to get_config):
  paper  (also no size) the paper's network and schedule (20000 + 5000 steps)
  quick  a narrower QS-Net (widths 16..128) on the 2 mm quick phantom, a 400-step per-voxel
         pre-fit (20 s), then 400 + 200 steps: about 10 minutes of training on a 2-core
         AMD EPYC (Zen 4), 14 with the uncertainty fit, the segmenter and the evaluation
         (the first run builds the quick cohort, about 4 more)
  tiny   the smallest network on the 4 mm tiny phantom, 6 + 6 steps: seconds, results are
         not meaningful (it checks that everything runs)
A size changes data, widths, steps and logging cadence only; every architecture, loss and
schedule choice stays with the config file (configs/resunet.py etc. take the same sizes).

Override any field on the command line, e.g. `--config.finetune.steps=500`.
Other configs import this one and change a few fields.

Training recipe options (issue 12), off by default because they have not yet been shown to
help: `data.patch_size` (train on random brain-holding patches, evaluation stays on whole
slices), `data.tumor_patch_fraction` (aim a share of the patches at the tumor) and
`loss.adversarial_start_step` (an L1-only warm-up before the adversary joins). On the v1
quick phantom (800 + 400 steps of 64-pixel patches, batch 16, 500 warm-up steps) QS-Net
improved inside the tumor but stayed behind the per-voxel baseline over the whole brain, so
the paper's whole-slice recipe stays the default. Three defaults differ from the paper
because they measured better in the quick start at equal steps (README):
`model.upsample = "nearest_conv"`, the per-voxel path `model.pointwise_width = 64`, and its
pre-fit `pointwise_prefit` (the network starts from a trained per-voxel MLP).
"""

import ml_collections

SIZES = ("tiny", "quick", "paper")
# A baseline keeps its encoder frozen for this fraction of the fine-tuning steps (500 of the
# paper's 5000), at every size.
FREEZE_FRACTION = 0.1

# What a size changes, as {dotted key: value} on top of the paper settings.
SIZE_CHANGES = {
    "paper": {},
    "quick": {
        "data.phantom_preset": "quick",
        "model.base_width": 16, "model.depth": 4, "model.blocks_per_level": 1,
        "model.bottleneck_width": 128,
        "discriminator.base_width": 32, "discriminator.num_scales": 2,
        "optim.warmup_steps": 20, "optim.ema_decay": 0.99,
        "pointwise_prefit.steps": 400,
        "pretrain.steps": 400, "pretrain.learning_rate": 1e-3,
        "finetune.steps": 200, "finetune.learning_rate": 5e-4,
        "finetune.freeze_encoder_steps": 40,
        "train.batch_size": 8, "train.log_every_steps": 25, "train.eval_every_steps": 100,
        "train.image_every_steps": 200, "train.checkpoint_every_steps": 100,
        "train.eval_max_subjects": 1,
        "eval.batch_size": 16, "eval.num_figure_subjects": 3,
        "uncertainty.steps": 200,
    },
    "tiny": {
        "data.phantom_preset": "tiny", "data.shuffle_buffer": 64,
        "model.base_width": 8, "model.depth": 2, "model.blocks_per_level": 1,
        "model.bottleneck_width": 32,
        "discriminator.base_width": 8, "discriminator.num_layers": 2,
        "discriminator.num_scales": 1,
        "optim.warmup_steps": 0, "optim.ema_decay": 0.9,
        "pointwise_prefit.steps": 3, "pretrain.steps": 6, "finetune.steps": 6,
        "finetune.freeze_encoder_steps": 2,  # exercises the encoder freeze end to end
        "train.batch_size": 4, "train.log_every_steps": 2, "train.eval_every_steps": 6,
        "train.image_every_steps": 6, "train.checkpoint_every_steps": 3,
        "train.eval_max_subjects": 1,
        "eval.batch_size": 8, "eval.num_figure_subjects": 1,
        "uncertainty.steps": 4, "uncertainty.width": 4,
        "segmentation.steps": 4, "segmentation.width": 4, "segmentation.levels": 2,
    },
}


def get_config(size=None) -> ml_collections.ConfigDict:
    """The paper settings, or those of `size` (tiny | quick | paper; None = paper)."""
    config = paper_config()
    set_fields(config, SIZE_CHANGES[check_size(size)])
    return config


def check_size(size, known=SIZES) -> str:
    """`size`, or "paper" for None / ""; ValueError naming the `known` sizes otherwise."""
    if size in (None, ""):
        return "paper"
    if size not in known:
        raise ValueError(f"unknown config size {size!r}; known: {', '.join(known)}")
    return size


def set_fields(config: ml_collections.ConfigDict, changes) -> ml_collections.ConfigDict:
    """Set {dotted key: value} fields of `config` (each must exist)."""
    for key, value in changes.items():
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"config has no field {key!r}")
        node[leaf] = value
    return config


def freeze_encoder_for_a_tenth(config: ml_collections.ConfigDict):
    """The baselines' encoder freeze: FREEZE_FRACTION of the fine-tuning steps."""
    config.finetune.freeze_encoder_steps = round(FREEZE_FRACTION * int(config.finetune.steps))


def paper_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # ---------------------------------------------------------------- data
    config.data = data = ml_collections.ConfigDict()
    # A cohort root holding manifest.csv. Empty: the phantom cohort named below, built into
    # `phantom_cache_dir` the first time it is needed.
    data.cohort_dir = ""
    data.phantom_preset = "quick"  # tiny | quick | bench | paper (data_pipelines.phantom)
    data.phantom_seed = 0
    data.phantom_cache_dir = "~/.cache/qsnet_jax/phantom"
    data.input_channels = ("t1map", "t2map", "pdmap")
    data.target_channels = ("t1w", "t2w", "t1flair", "t2flair", "swi")
    data.context_slices = 0  # 2.5D: k neighbouring slices on each side as extra channels
    data.min_brain_fraction = 0.05  # training slices with less brain than this are skipped
    # Train on random patches of this size that hold brain (0 = whole slices); evaluation
    # always runs on whole slices. A multiple of 2**model.depth avoids padding.
    data.patch_size = 0
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
    # decoder 2x up-sampling: nearest_conv (resize + 3x3 conv) | transposed (2x2 stride 2, the
    # paper's; checkerboard at the quick start's length) | bilinear_conv. nearest_conv won
    # 4 of 5 contrasts at equal steps in the quick start (README, Benchmarks).
    model.upsample = "nearest_conv"
    # conv weight gradient: xla (XLA's own) | per_sample (summed over samples: faster only under
    # XLA's YNNPACK convolutions, which qsnet_jax.xla_cpu turns off; README, Benchmarks)
    model.conv_weight_grad = "xla"
    # QS-Net / Res-UNet: a per-voxel MLP of the input added to the output head (hidden width;
    # 0 = none, as in the paper; qsnet_jax/models/qsnet.py). On: in the quick start at equal
    # steps it lowered brain MAE on all five contrasts but T2-FLAIR (README, Results). Three
    # hidden layers, as the per-voxel baseline: against two, 600-step quick start, brain MAE
    # lower or equal on all five contrasts (T1w -6%, T2w -5%; README, Results).
    model.pointwise_width = 64
    model.pointwise_layers = 3
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
    disc.conv_weight_grad = "xla"  # xla | per_sample (as model.conv_weight_grad)

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
    # A stage trains on train_split, is scored on eval_split when it ends, and is validated
    # during training on validation_split: the curves and the checkpoint that
    # train.best_metric picks, which evaluation and the next stage then use. The GBM stage
    # validates on the calibration subjects (gbm_calib), never on the test split that it
    # reports. The phantom has no spare healthy split, so pretraining validates on
    # healthy_test: that stage's own report is selected on its split; the headline numbers
    # (the last stage on gbm_test) are not. A validation split that the cohort lacks, or "",
    # means no validation: no curves, the last checkpoint is used.
    config.pretrain = _stage("healthy_train", "healthy_test", "healthy_test", steps=20000,
                             lr=2e-4)
    config.finetune = _stage("gbm_train", "gbm_test", "gbm_calib", steps=5000, lr=1e-4)
    # Per-voxel pre-fit (issue 12, not in the paper): before the first stage, a per-voxel MLP
    # of the network's per-voxel path size (model.pointwise_*) is trained alone on that
    # stage's training split (WORKDIR/prefit, no adversary); the first stage then starts with
    # its per-voxel path set to that MLP and its full-resolution head at zero, i.e. from the
    # per-voxel baseline's answer, and the U-Net learns only what needs spatial context. In
    # the quick start it lowered brain MAE on all five contrasts at equal network steps
    # (README, Results). Skipped for networks without a per-voxel path, with
    # config.init_from, and with steps = 0. The quick start pre-fits as many steps as its
    # first stage; paper size: 2000 steps (each step sees 16x the voxels of a quick-start
    # one: 1 mm slices against 2 mm), at the rate the quick start measured.
    config.pointwise_prefit = prefit = ml_collections.ConfigDict()
    prefit.steps = 2000
    prefit.learning_rate = 1e-3
    # The MLP trains on every n-th voxel of each slice along both in-plane axes: it has no
    # spatial context, so the neighbours only cost time (stride 2: a quarter of the voxels;
    # the quick start's 400 pre-fit steps take ~20 s on 2 cores).
    prefit.voxel_stride = 2

    # ---------------------------------------------------------- training
    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 8  # global, over all devices and hosts
    train.log_every_steps = 50
    train.eval_every_steps = 1000
    train.image_every_steps = 1000
    train.checkpoint_every_steps = 500
    train.max_checkpoints_to_keep = 3
    train.best_metric = "ssim"  # validation score that marks the best checkpoint (higher=better)
    # Validation during training uses the first this-many subjects of the validation split.
    # The GBM stage validates on gbm_calib, so these subjects also chose its checkpoint and
    # the conformal calibration leaves them out (workflow.uncertainty.calibration_subjects):
    # 2 of the paper preset's 4 calibration subjects validate, the other 2 calibrate.
    train.eval_max_subjects = 2
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

    # ------------------------------------------------------- volume rescaling
    # The targets are normalized per volume (brain 99.5th percentile = 1), a statistic of the
    # whole volume that one slice does not show (in T2-FLAIR the lesion sets it). Once a
    # volume is synthesized, each contrast is scaled so that its own brain 99.5th percentile
    # equals a level fitted per contrast on `fit_splits` (empty: the stage's train split;
    # never the calibration or test split), then clipped to [0, 1]
    # (qsnet_jax.volume_rescale, workflow.rescale; fitted on first use into
    # <stage>/rescale.json). Measured on the quick start (README): T2-FLAIR brain MAE 12.4 ->
    # 8.9, SWI 6.6 -> 6.0, the other three level.
    config.rescale = rs = ml_collections.ConfigDict()
    rs.enabled = True
    rs.fit_splits = ()

    # ------------------------------------------------------- uncertainty
    # Per-voxel intervals y_hat +- q sigma for every synthesized contrast (qsnet_jax.uncertainty,
    # workflow.uncertainty): sigma from `method`, q by split-conformal calibration on
    # `calibration_split` (held-out subjects, never the test split), at coverage `level`.
    # Fitted on first use into <stage>/uncertainty/; evaluate scores it, synthesize writes
    # <contrast>_uncertainty.nii.gz (the half-width). A cohort without the calibration split
    # gets no intervals (a note in the report). Subjects of the calibration split that also
    # validated the stage (they chose its checkpoint) do not calibrate: their residuals are
    # small by selection (train.eval_max_subjects).
    config.uncertainty = unc = ml_collections.ConfigDict()
    unc.enabled = True
    unc.method = "residual_net"  # residual_net | residual_gain | flip | constant
    unc.level = 0.9
    unc.calibration_split = "gbm_calib"
    unc.fit_splits = ()  # splits whose residuals train the scale net; empty: the stage's
    unc.steps = 400
    unc.batch_size = 16
    unc.learning_rate = 2e-3
    unc.width = 16

    # ------------------------------------------- downstream segmentation
    # BraSyn's utility score: a small U-Net trained on the ground-truth contrasts of
    # `train_splits` with the cohort's labels, applied to the ground-truth and synthesized
    # contrasts of the evaluated split; Dice per sub-region (qsnet_jax.models.segmenter).
    config.segmentation = seg = ml_collections.ConfigDict()
    seg.enabled = True
    seg.train_splits = ("healthy_train", "gbm_train")  # those absent from a cohort are skipped
    seg.steps = 300
    seg.batch_size = 8
    seg.learning_rate = 2e-3
    seg.width = 16
    seg.levels = 3
    # where the segmenter is kept: empty = <workdir>/segmenter; a study points every variant
    # at one folder (it depends on the cohort, targets and these settings, not the generator)
    seg.dir = ""

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


def _stage(train_split, eval_split, validation_split, *, steps, lr):
    stage = ml_collections.ConfigDict()
    stage.train_split = train_split
    stage.eval_split = eval_split
    stage.validation_split = validation_split
    stage.steps = steps
    stage.learning_rate = lr
    stage.freeze_encoder_steps = 0  # keep the generator encoder fixed for the first N steps
    return stage
