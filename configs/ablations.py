"""Ablations of QS-Net, each against the full model on the GBM test set (paired Wilcoxon):
no deep supervision; no adversary; single-stage training (fine-tuning only, from scratch);
inputs without PD; 2.5D input (one neighbouring slice on each side) instead of 2D.

  python -m experiments.ablate --config=configs/ablations.py           # paper size
  python -m experiments.ablate --config=configs/ablations.py:quick     # runs/ablations_quick
  python -m experiments.ablate --config=configs/ablations.py:tiny --workdir=/tmp/ablations_tiny
  python -m experiments.ablate --config=configs/ablations.py:bench --workdir=runs/ablations_bench

The bench size (10 GBM test subjects) took 51 min for the five ablated variants on a quiet
2-core CPU, the full model reused from configs/compare.py:bench's work dir (copy its qsnet
folder to WORKDIR/full; otherwise 13.5 min more); README, Studies. Two more training seeds
(--config.study.seeds="(1,2)", the full models copied from the seed-1 and seed-2 bench
comparisons) took 99 min on a 2-core AMD EPYC Zen 4 with other work beside it for about 35:
47-52 min per seed, so one seed per study stays within the hour. The 2.5D variant with
seeds 1 and 2 alone (--config.study.only="('full','context_2_5d')", the same full models)
took 40 min there beside a test run, 20 min a seed.
"""

import ml_collections

from configs import compare


def no_deep_supervision(config):
    config.model.deep_supervision = False


def no_adversary(config):
    config.discriminator.name = "none"
    config.loss.adversarial_weight = 0.0


def single_stage(config):
    config.stages = ("finetune",)


def no_pd(config):
    config.data.input_channels = ("t1map", "t2map")


def context_2_5d(config):
    config.data.context_slices = 1


def get_config(size=None) -> ml_collections.ConfigDict:
    config = compare.study_base(size)
    config.study = compare.study_section(
        split="gbm_test", reference="full", title="QS-Net ablations (GBM test set)",
        variants={"full": (), "no_deep_supervision": (no_deep_supervision,),
                  "no_adversary": (no_adversary,), "single_stage": (single_stage,),
                  "no_pd": (no_pd,), "context_2_5d": (context_2_5d,)})
    return config
