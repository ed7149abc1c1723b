"""The paper's model comparison: QS-Net, Res-UNet, pix2pix cGAN, Swin and the physics baseline
(signal equations with per-contrast scales fitted on the training data) and the per-voxel
MLP (the floor a spatial model must clear), each trained under
the same two-stage schedule on the same data, scored on the GBM test set, with Wilcoxon
signed-rank tests of QS-Net against each other model.

  python -m experiments.compare --config=configs/compare.py            # paper size
  python -m experiments.compare --config=configs/compare.py:quick      # runs/compare_quick
  python -m experiments.compare --config=configs/compare.py:tiny --workdir=/tmp/compare_tiny

Writes WORKDIR/<variant>/ (ordinary training work dirs; finished ones are reused) and
WORKDIR/comparison/{report.md, metrics.json, metrics.csv, figures/}. The `:quick` size
(quick phantom, 2 mm; CPU-sized widths; 200 + 100 steps, batch 4) trained QS-Net in 4 min
and Res-UNet in 3.3 min on a 2-core CPU (shared with a test run); the README's comparison
table comes from it. Change the length with --config.pretrain.steps / --config.finetune.steps.

A variant is a tuple of edits applied in order to the base (this config without `study`):
Python functions `edit(config)` (configs/resunet.py's `apply` etc.), or, from the command
line, "dotted.key=value" strings. Run a subset with --config.study.only="('qsnet','resunet')".

The study sizes (shared by compare, generalization, ablations and input_paradigms) are their
own, since a study trains many variants: `tiny` is smaller than configs/default.py:tiny
(1 + 2 steps), `quick` shallower and shorter than the quick start (depth 3, 200 + 100 steps),
`bench` the quick networks trained 600 + 300 steps on the bench phantom (10 GBM test subjects
per site: raw Wilcoxon p down to 0.002, Holm-adjusted down to 0.0195 over 10 comparisons;
the six variants took 51 min on a 2-core CPU, QS-Net 13.5 of them; README, Studies; QS-Net
and Res-UNet alone with --config.study.seeds="(1,)" took 33 min from an empty cache on a
(nearly) quiet 2-core AMD EPYC Zen 4: the cohort 5.3, QS-Net 16.3, Res-UNet 11.6; so seeds (0,1,2)
of those two take about 90 min there; pix2pix, Swin-UNet, the physics baseline and the
per-voxel MLP with seeds (1,2) took 56.5 min more there: 11-12, 7-8.3, 3.3 and 5.3-5.7 min
a seed),
`paper` (no argument) the paper's sizes.
Several training seeds: --config.study.seeds="(0,1,2)" (workflow.studies); one seed's own
report beside the seed means: --config.study.report_seeds="(1,)" (WORKDIR/comparison_seed1/).
"""

import ml_collections

from configs import cgan, default, pervoxel, physics, resunet, swin

# What a study size changes on top of the paper settings ({dotted key: value}).
STUDY_SIZE_CHANGES = {
    "paper": {},
    "quick": {
        "data.phantom_preset": "quick", "data.shuffle_buffer": 256,
        "model.base_width": 16, "model.depth": 3, "model.blocks_per_level": 1,
        "model.bottleneck_width": 128, "model.pix2pix_base_width": 16,
        "model.embed_dim": 24, "model.swin_depths": (2, 2, 2), "model.swin_heads": (2, 4, 8),
        "model.window_size": 7,
        "discriminator.base_width": 16, "discriminator.num_layers": 3,
        "discriminator.num_scales": 2,
        "optim.warmup_steps": 0, "optim.ema_decay": 0.99,
        # few steps: the quick start's higher learning rates (the same for every variant)
        "pretrain.steps": 200, "finetune.steps": 100,
        "pointwise_prefit.steps": 200,  # as many as the first stage, as the quick start
        "pretrain.learning_rate": 1e-3, "finetune.learning_rate": 5e-4,
        "train.batch_size": 4, "train.eval_max_subjects": 1,
        "train.log_every_steps": 50, "train.eval_every_steps": 100,
        "train.image_every_steps": 100, "train.checkpoint_every_steps": 100,
        "eval.batch_size": 16,
        "eval.num_figure_subjects": 0,  # the study draws its own comparison figure
    },
    "tiny": {
        "data.phantom_preset": "tiny", "data.shuffle_buffer": 64,
        "model.base_width": 4, "model.depth": 2, "model.blocks_per_level": 1,
        "model.bottleneck_width": 8, "model.pix2pix_base_width": 2,
        "model.embed_dim": 4, "model.swin_depths": (1, 1), "model.swin_heads": (1, 1),
        "model.window_size": 4,
        "discriminator.base_width": 4, "discriminator.num_layers": 2,
        "discriminator.num_scales": 1,
        "optim.warmup_steps": 0, "optim.ema_decay": 0.5,
        "pretrain.steps": 1, "finetune.steps": 2, "pointwise_prefit.steps": 1,
        "train.batch_size": 2, "train.eval_max_subjects": 1,
        "train.log_every_steps": 1, "train.eval_every_steps": 2,
        "train.image_every_steps": 2, "train.checkpoint_every_steps": 2,
        "eval.batch_size": 32, "eval.num_figure_subjects": 0,
    },
}


# `bench` (issue 17): the quick sizes on the bench phantom (10 GBM test subjects at each
# site, 6 calibration subjects), trained three times as long. In its first run (README,
# Studies) QS-Net's validation flattened T1w, T2w and T1-FLAIR by step 450 of
# pre-training; T2-FLAIR and SWI still fell at 600, so longer pre-training is the next
# thing to measure.
STUDY_SIZE_CHANGES["bench"] = STUDY_SIZE_CHANGES["quick"] | {
    "data.phantom_preset": "bench", "pretrain.steps": 600, "finetune.steps": 300,
    "pointwise_prefit.steps": 600,
    "train.eval_every_steps": 150, "train.checkpoint_every_steps": 150,
    "train.image_every_steps": 300}
STUDY_SIZES = ("tiny", "quick", "bench", "paper")


def study_base(size=None) -> ml_collections.ConfigDict:
    """The training config every variant of a study starts from, at a study size."""
    config = default.paper_config()
    return default.set_fields(config, STUDY_SIZE_CHANGES[default.check_size(size, STUDY_SIZES)])


def study_section(*, split, variants, reference="", pairs=(), title=""):
    study = ml_collections.ConfigDict()
    study.title = title
    study.split = split
    study.reference = reference
    study.pairs = tuple(pairs)
    study.only = ()  # names of a subset of the variants to run; empty: all
    study.num_figure_subjects = 2
    study.seeds = ()  # training seeds; empty: config.seed only (workflow.studies)
    study.report_seeds = ()  # seeds of study.seeds that also get comparison_seed<N>/
    study.variants = ml_collections.ConfigDict(variants, sort_keys=False)  # run in this order
    return study


def get_config(size=None) -> ml_collections.ConfigDict:
    config = study_base(size)
    config.study = study_section(
        split="gbm_test", reference="qsnet", title="Model comparison (GBM test set)",
        variants={"qsnet": (), "resunet": (resunet.apply,), "pix2pix": (cgan.apply,),
                  "swin": (swin.apply,), "physics": (physics.apply,),
                  "pervoxel": (pervoxel.apply,)})
    return config
