"""The generalization test of the paper: each architecture is trained twice at site A, once
with quantitative inputs (T1, T2, PD maps) and once with qualitative, vendor-specific inputs
(T1w, T2w), to synthesize the contrasts the qualitative input lacks (T1-FLAIR, T2-FLAIR, SWI);
both are tested on the external cohort scanned at site B (split external_test), with a paired
Wilcoxon test of quantitative vs qualitative per architecture.

  python -m experiments.compare --config=configs/generalization.py --workdir=runs/generalization
  python -m experiments.compare --config=configs/generalization.py:quick \
      --workdir=runs/generalization_quick
  python -m experiments.compare --config=configs/generalization.py:tiny \
      --workdir=/tmp/generalization_tiny
"""

import ml_collections

from configs import study_sizes

ARCHITECTURES = {"qsnet": (), "resunet": ("resunet",), "pix2pix": ("cgan",),
                 "swin": ("swin",)}
QUANTITATIVE = ("t1map", "t2map", "pdmap")
QUALITATIVE = ("t1w", "t2w")
TARGETS = ("t1flair", "t2flair", "swi")


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = study_sizes.base_config(arg)
    config.data.target_channels = TARGETS
    config.eval.split = "external_test"
    variants, pairs = {}, []
    freeze = () if arg is None else (study_sizes.freeze_override(config),)
    for arch, entries in ARCHITECTURES.items():
        entries = entries + (freeze if entries else ())
        quantitative, qualitative = f"{arch}_quantitative", f"{arch}_qualitative"
        variants[quantitative] = entries + (f"data.input_channels={','.join(QUANTITATIVE)}",)
        variants[qualitative] = entries + (f"data.input_channels={','.join(QUALITATIVE)}",)
        pairs.append((quantitative, qualitative))
    config.study = study_sizes.study_section(
        split="external_test", pairs=pairs,
        title="Generalization to site B: quantitative vs qualitative inputs")
    config.study.variants = ml_collections.ConfigDict(variants, sort_keys=False)
    return config
