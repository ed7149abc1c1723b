"""Cohort presets: resolution, grid, subject counts and splits, MRF simulation fidelity, and
the acquisition effects of phantom v2 (docs/design.md section 8), each on by default."""

from __future__ import annotations

import dataclasses

# The effects that make the phantom's acquisition differ from the textbook signal equations.
# Every preset turns all of them on; `--without NAME[,NAME]` (or `effects=` of a preset)
# switches some off, e.g. for the realism report's one-at-a-time ablation.
EFFECTS = {
    "anatomy": "sharp subject-specific tissue boundaries (sulci, ribbon) box-integrated onto "
               "the grid; off: v1's MNI population probabilities used as fractions",
    "tse": "T2w / T1-FLAIR / T2-FLAIR as turbo spin echo: EPG echo train with refocusing < 180 "
           "deg, effective TE and T2 blur along phase encode from the k-space ordering",
    "t1_sequence": "T1w simulated as the site's sequence (site A MPRAGE-like shot by shot, "
                   "site B spin echo)",
    "mt": "magnetization transfer saturation in multi-slice 2D FSE/FLAIR, per site",
    "b1": "smooth per-subject transmit field B1+ (0.8-1.2) scaling every RF angle, MRF too",
    "gibbs": "weighted images simulated on a 2x finer in-plane grid, k-space truncated to the "
             "acquisition matrix (Gibbs ringing, sinc partial volume)",
    "swi_background": "background field of the air/tissue interfaces (sinuses, ear canals) in "
                      "the SWI phase",
}

@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    voxel_mm: int
    in_plane: tuple[int, int]  # (X, Y) voxels, a multiple of 16 (model padding)
    # (split, group, site, count) in manifest order
    splits: tuple[tuple[str, str, str, int], ...]
    num_trs: int  # FISP-MRF shots
    dictionary_step: float  # log step of the matching dictionary
    table_step: float  # log step of the per-tissue fingerprint tables (interpolated)
    epg_states: int | None = None  # None: the states each tissue needs (physics API)
    effects: frozenset = frozenset(EFFECTS)

    @property
    def num_subjects(self) -> int:
        return sum(count for *_, count in self.splits)


def _design(healthy_train, healthy_test, gbm_train, gbm_test, gbm_calib, ext_healthy,
            ext_gbm):
    # gbm_calib: held-out GBM subjects of site A for conformal calibration of the uncertainty
    # (never trained on, never tested on); `--gbm` keeps its count.
    return (("healthy_train", "healthy", "A", healthy_train),
            ("healthy_test", "healthy", "A", healthy_test),
            ("gbm_train", "gbm", "A", gbm_train),
            ("gbm_test", "gbm", "A", gbm_test),
            ("gbm_calib", "gbm", "A", gbm_calib),
            ("external_test", "healthy", "B", ext_healthy),
            ("external_test", "gbm", "B", ext_gbm))


PRESETS = {
    # The study design of the paper (20/12 healthy, 9/9 GBM at site A) plus an external
    # cohort scanned at site B for the generalization test, and 4 GBM calibration subjects.
    # Full-fidelity MRF: 1000 shots, 5% dictionary steps (docs/design.md section 5).
    "paper": Preset("paper", 1, (192, 224), _design(20, 12, 9, 9, 4, 6, 6),
                    num_trs=1000, dictionary_step=0.05, table_step=0.03),
    # The same design at 2 mm with fewer subjects: the CPU quick start. Six calibration
    # subjects for the conformal intervals: with two, the whole-brain coverage of the 90%
    # intervals on the test split ranged 0.80-0.96 over the contrasts (subject-to-subject
    # spread). The four added ones come last, so subjects 0-17 (every training, test and
    # external subject) are the ones the preset had before, byte for byte.
    "quick": Preset("quick", 2, (96, 112),
                    _design(4, 2, 3, 3, 2, 2, 2) + (("gbm_calib", "gbm", "A", 4),),
                    num_trs=1000, dictionary_step=0.05, table_step=0.03),
    # The quick preset's 2 mm grid with the statistical power of issue 17's studies: 10 GBM
    # test subjects at site A and 10 GBM subjects at site B (a two-sided Wilcoxon p can reach
    # 0.002), and 6 calibration subjects for the conformal intervals. Subject k is the same
    # subject as the quick preset's k when both give it the same group and site.
    "bench": Preset("bench", 2, (96, 112), _design(4, 2, 6, 10, 6, 2, 10),
                    num_trs=1000, dictionary_step=0.05, table_step=0.03),
    # Tests and the smoke run. Coarser MRF so that the cohort builds in seconds: 10%
    # dictionary steps (refined between entries, as in every preset) and 32 EPG states (CSF
    # fingerprints ~3e-2 of peak off; the other presets keep the states each tissue needs,
    # to 1e-4 of peak: qsnet_jax.physics.epg.states_needed). The schedule
    # keeps its 1000 shots: a 400-shot train was measured to hide the partial-volume bias
    # that the cohort exists to show (GM/CSF voxels matched nearly right).
    "tiny": Preset("tiny", 4, (48, 56), _design(2, 1, 2, 1, 1, 1, 1),
                   num_trs=1000, dictionary_step=0.10, table_step=0.06, epg_states=32),
}


def parse_effects(without: str | None) -> frozenset:
    """All effects minus the comma-separated names in `without` (ValueError on an unknown
    name)."""
    names = [n.strip() for n in (without or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in EFFECTS]
    if unknown:
        raise ValueError(f"--without: unknown effect {unknown[0]!r}; known: "
                         f"{', '.join(EFFECTS)}")
    return frozenset(EFFECTS) - frozenset(names)


def resolve_preset(name: str, *, healthy: int | None = None, gbm: int | None = None,
                   site: str | None = None, without: str | None = None) -> Preset:
    """The named preset, optionally with other site-A counts or every subject at one site.

    `healthy`/`gbm` replace the site-A totals, split 60/40 (healthy) and 50/50 (GBM) between
    train and test as in the paper; the external cohort is kept. `site` scans every subject at
    that site (the external cohort included).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    splits = list(preset.splits)
    if healthy is not None or gbm is not None:
        for value, what in ((healthy, "healthy"), (gbm, "gbm")):
            if value is not None and value < 0:
                raise ValueError(f"--{what} must be >= 0, got {value}")
        counts = {s[0]: s[3] for s in splits[:4]}
        if healthy is not None:
            counts["healthy_test"] = round(healthy * 0.4) if healthy > 1 else 0
            counts["healthy_train"] = healthy - counts["healthy_test"]
        if gbm is not None:
            counts["gbm_test"] = gbm // 2
            counts["gbm_train"] = gbm - counts["gbm_test"]
        splits[:4] = [(s, g, site_, counts[s]) for s, g, site_, _ in splits[:4]]
    if site is not None:
        if site not in ("A", "B"):
            raise ValueError(f"unknown site {site!r}; known: A, B")
        splits = [(s, g, site, n) for s, g, _, n in splits]
    return dataclasses.replace(preset, splits=tuple(splits), effects=parse_effects(without))
