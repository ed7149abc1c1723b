"""The paper's model comparison: QS-Net, Res-UNet, pix2pix cGAN, Swin and the physics baseline
(signal equations with per-contrast scales fitted on the training data), each trained under
the same two-stage schedule on the same data, scored on the GBM test set, with Wilcoxon
signed-rank tests of QS-Net against each other model.

  python -m experiments.compare --config=configs/compare.py --workdir=runs/compare
  python -m experiments.compare --config=configs/compare.py:quick --workdir=runs/compare_quick
  python -m experiments.compare --config=configs/compare.py:tiny --workdir=/tmp/compare_tiny

Writes WORKDIR/<variant>/ (ordinary training work dirs; finished ones are reused) and
WORKDIR/comparison/{report.md, metrics.json, metrics.csv, figures/}. The `:quick` setting
(quick phantom, 2 mm; CPU-sized widths; 200 + 100 steps, batch 4) trained QS-Net in 4 min
and Res-UNet in 3.3 min on a 2-core CPU (shared with a test run); the README's comparison
table comes from it. Change the length with --config.pretrain.steps / --config.finetune.steps.

Variants are configs modules (their changes to configs/default.py) and/or "dotted.key=value"
overrides on top of this base; data, widths and steps come from the base for every variant.
Run a subset with --config.study.only="('qsnet','resunet')".
"""

import ml_collections

from configs import study_sizes


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = study_sizes.base_config(arg)
    config.study = study_sizes.study_section(
        split="gbm_test", reference="qsnet",
        title="Model comparison (GBM test set)")
    baseline = () if arg is None else (study_sizes.freeze_override(config),)
    config.study.variants = ml_collections.ConfigDict({
        "qsnet": (),
        "resunet": ("resunet",) + baseline,
        "pix2pix": ("cgan",) + baseline,
        "swin": ("swin",) + baseline,
        "physics": ("model.name=physics", "discriminator.name=none"),
        "pervoxel": ("model.name=pervoxel", "discriminator.name=none"),
    }, sort_keys=False)  # run and tabulated in this order
    return config
