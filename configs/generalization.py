"""The generalization test of the paper: each architecture is trained twice at site A, once
with quantitative inputs (T1, T2, PD maps) and once with qualitative, vendor-specific inputs
(T1w, T2w), to synthesize the contrasts the qualitative input lacks (T1-FLAIR, T2-FLAIR, SWI);
both are tested on the external cohort scanned at site B (split external_test), with a paired
Wilcoxon test of quantitative vs qualitative per architecture.

  python -m experiments.compare --config=configs/generalization.py          # paper size
  python -m experiments.compare --config=configs/generalization.py:quick    # 8 trainings
  python -m experiments.compare --config=configs/generalization.py:tiny \
      --workdir=/tmp/generalization_tiny
  python -m experiments.compare --config=configs/generalization.py:bench \
      --workdir=runs/generalization_bench

The bench size (12 site-B subjects, 10 with GBM): about 2 hours for the 8 variants on a
2-core CPU with the bench cohort built (QS-Net 17-20 min a variant, Res-UNet 14-17, pix2pix
16, Swin-UNet 12-17, measured on a 2-core AMD EPYC Zen 3 and an Ice Lake Xeon); the bench
cohort takes 8-9 min more the first time; README, Generalization at the bench size.
On a 2-core AMD EPYC Zen 4 (cohort built): Res-UNet 12-20 min a variant, pix2pix 12-17,
Swin-UNet 8-9 (seeds 1 and 2 of issue 17).
"""

import ml_collections

from configs import cgan, compare, resunet, swin

ARCHITECTURES = {"qsnet": (), "resunet": (resunet.apply,), "pix2pix": (cgan.apply,),
                 "swin": (swin.apply,)}
QUANTITATIVE = ("t1map", "t2map", "pdmap")
QUALITATIVE = ("t1w", "t2w")
TARGETS = ("t1flair", "t2flair", "swi")


def quantitative_inputs(config):
    config.data.input_channels = QUANTITATIVE


def qualitative_inputs(config):
    config.data.input_channels = QUALITATIVE


def get_config(size=None) -> ml_collections.ConfigDict:
    config = compare.study_base(size)
    config.data.target_channels = TARGETS
    config.eval.split = "external_test"
    variants, pairs = {}, []
    for arch, edits in ARCHITECTURES.items():
        quantitative, qualitative = f"{arch}_quantitative", f"{arch}_qualitative"
        variants[quantitative] = edits + (quantitative_inputs,)
        variants[qualitative] = edits + (qualitative_inputs,)
        pairs.append((quantitative, qualitative))
    config.study = compare.study_section(
        split="external_test", pairs=pairs, variants=variants,
        title="Generalization to site B: quantitative vs qualitative inputs")
    return config
