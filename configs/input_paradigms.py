"""Three input paradigms for the same targets: weighted images (qualitative), the matched
quantitative maps (as in the QS-Net paper) and the MRF subspace itself (direct contrast
synthesis, Wang et al. MRM 2023: the fingerprint's coefficients in the dictionary's rank-k
temporal basis, before any matching). Each is fed to QS-Net and to the per-voxel baseline
(an MLP of 1x1 convolutions: what a voxel's own values alone can tell), trained at site A
under the same two-stage schedule, scored on one split, with paired Wilcoxon tests between
the paradigms of each architecture and between the architectures of each paradigm.

The targets are the contrasts the weighted input lacks (T1-FLAIR, T2-FLAIR, SWI), as in
configs/generalization.py, so that every paradigm predicts the same images from inputs that
do not contain them. Weighted inputs: T1w and T2w (site-specific images, normalized per
volume); maps: T1, T2, PD; subspace: `mrf_subspace` (2k channels, normalized by
qsnet_jax.physics.channels.normalize_subspace). The cohort must have an mrf_subspace column
and its mrf_basis.npy (`python -m data_pipelines.cohort check DIR` says so).

The argument is the size (configs/compare.py's study sizes: tiny, quick, bench, paper), optionally
followed by ",site_b" to score on the external cohort scanned at site B (split
external_test) instead of the GBM test split (gbm_test):

  python -m experiments.compare --config=configs/input_paradigms.py:quick \
      --workdir=runs/input_paradigms_quick
  python -m experiments.compare --config=configs/input_paradigms.py:quick,site_b \
      --workdir=runs/input_paradigms_quick_site_b
  python -m experiments.compare --config=configs/input_paradigms.py:tiny \
      --workdir=/tmp/input_paradigms_tiny

At the bench size (10 GBM test subjects at site A, 12 external subjects at site B) the six
variants took 92 min with `:bench,site_b` on a 2-core Intel Xeon (Ice Lake) from an empty
cache (the bench cohort 18 min of it), not quiet; an earlier version took 55 min on a quiet
2-core Xeon with the cohort built. Scoring the same trained variants at site A with `:bench`
took 32 s more (README, Input paradigms). Two more training seeds of the three QS-Net
variants, --config.study.only="('qsnet_maps','qsnet_weighted','qsnet_subspace')"
--config.study.seeds="(1,2)" with `:bench,site_b`: 91 min for the six trainings on a 2-core
AMD EPYC (Zen 4) with the cohort built, 13-17.5 min a variant.

The variants train identically for both splits: copying the finished variant folders of one
work dir into the other's reuses them (only the evaluation and WORKDIR/comparison/ are new).
Variant names are <architecture>_<paradigm>. Run a subset with
--config.study.only="('qsnet_maps','qsnet_subspace')".
"""

import ml_collections

from configs import compare


def pervoxel(config):
    """The per-voxel baseline (qsnet_jax.models: an MLP of 1x1 convolutions), no adversary."""
    config.model.name = "pervoxel"
    config.discriminator.name = "none"
    config.loss.adversarial_weight = 0.0
    return config


def _inputs(channels):
    def edit(config):
        config.data.input_channels = channels
        return config

    edit.__name__ = f"inputs_{'_'.join(channels)}"
    return edit


ARCHITECTURES = {"qsnet": (), "pervoxel": (pervoxel,)}
PARADIGMS = {
    "weighted": ("t1w", "t2w"),
    "maps": ("t1map", "t2map", "pdmap"),
    "subspace": ("mrf_subspace",),
}
TARGETS = ("t1flair", "t2flair", "swi")
SPLITS = {"gbm": "gbm_test", "site_b": "external_test"}


def _parse(arg):
    """(size, split key) from 'SIZE' or 'SIZE,site_b' (an empty SIZE: the paper size)."""
    parts = [p.strip() for p in (arg or "").split(",")]
    where = parts[1] if len(parts) > 1 else "gbm"
    if len(parts) > 2 or where not in SPLITS:
        raise ValueError(f"bad argument {arg!r}: SIZE or SIZE,site_b (splits: {list(SPLITS)})")
    return parts[0] or None, where


def get_config(arg=None) -> ml_collections.ConfigDict:
    size, where = _parse(arg)
    config = compare.study_base(size)
    config.data.target_channels = TARGETS
    split = SPLITS[where]  # the study's split only: the trained variants are the same
    variants, pairs = {}, []
    names = list(PARADIGMS)
    for arch, edits in ARCHITECTURES.items():
        for paradigm, inputs in PARADIGMS.items():
            variants[f"{arch}_{paradigm}"] = edits + (_inputs(inputs),)
        # the paradigms of one architecture against each other
        pairs += [(f"{arch}_{a}", f"{arch}_{b}") for i, a in enumerate(names)
                  for b in names[i + 1:]]
    # the spatial network against the per-voxel one, per paradigm
    pairs += [(f"qsnet_{p}", f"pervoxel_{p}") for p in names]
    where_text = "GBM test set" if where == "gbm" else "site B (external cohort)"
    config.study = compare.study_section(
        split=split, pairs=pairs, variants=variants,
        title=f"Input paradigms, {where_text}: weighted images vs maps vs the MRF subspace")
    return config
