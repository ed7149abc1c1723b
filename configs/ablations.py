"""Ablations of QS-Net, each against the full model on the GBM test set (paired Wilcoxon):
no deep supervision; no adversary; single-stage training (fine-tuning only, from scratch);
inputs without PD; 2.5D input (one neighbouring slice on each side) instead of 2D.

  python -m experiments.ablate --config=configs/ablations.py --workdir=runs/ablations
  python -m experiments.ablate --config=configs/ablations.py:quick --workdir=runs/ablations_quick
  python -m experiments.ablate --config=configs/ablations.py:tiny --workdir=/tmp/ablations_tiny
"""

import ml_collections

from configs import study_sizes


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = study_sizes.base_config(arg)
    config.study = study_sizes.study_section(
        split="gbm_test", reference="full", title="QS-Net ablations (GBM test set)")
    config.study.variants = ml_collections.ConfigDict({
        "full": (),
        "no_deep_supervision": ("model.deep_supervision=False",),
        "no_adversary": ("discriminator.name=none", "loss.adversarial_weight=0.0"),
        "single_stage": ("stages=finetune",),
        "no_pd": ("data.input_channels=t1map,t2map",),
        "context_2_5d": ("data.context_slices=1",),
    }, sort_keys=False)  # run and tabulated in this order
    return config
