"""Cohort presets: resolution, grid, subject counts and splits, MRF simulation fidelity."""

from __future__ import annotations

import dataclasses


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
    epg_states: int = 64

    @property
    def num_subjects(self) -> int:
        return sum(count for *_, count in self.splits)


def _design(healthy_train, healthy_test, gbm_train, gbm_test, ext_healthy, ext_gbm):
    return (("healthy_train", "healthy", "A", healthy_train),
            ("healthy_test", "healthy", "A", healthy_test),
            ("gbm_train", "gbm", "A", gbm_train),
            ("gbm_test", "gbm", "A", gbm_test),
            ("external_test", "healthy", "B", ext_healthy),
            ("external_test", "gbm", "B", ext_gbm))


PRESETS = {
    # The study design of the paper (20/12 healthy, 9/9 GBM at site A) plus an external
    # cohort scanned at site B for the generalization test. Full-fidelity MRF: 1000 shots,
    # 5% dictionary steps (docs/design.md section 5).
    "paper": Preset("paper", 1, (192, 224), _design(20, 12, 9, 9, 6, 6),
                    num_trs=1000, dictionary_step=0.05, table_step=0.03),
    # The same design at 2 mm with fewer subjects: the CPU quick start.
    "quick": Preset("quick", 2, (96, 112), _design(4, 2, 3, 3, 2, 2),
                    num_trs=1000, dictionary_step=0.05, table_step=0.03),
    # Tests and the smoke run. Coarser MRF so that the cohort builds in seconds: 10%
    # dictionary steps (maps are coarser-quantized than in the other presets) and 32 EPG
    # states. The schedule keeps its 1000 shots: a 400-shot train was measured to hide the
    # partial-volume bias that the cohort exists to show (GM/CSF voxels matched nearly right).
    "tiny": Preset("tiny", 4, (48, 56), _design(2, 1, 2, 1, 1, 1),
                   num_trs=1000, dictionary_step=0.10, table_step=0.06, epg_states=32),
}


def resolve_preset(name: str, *, healthy: int | None = None, gbm: int | None = None,
                   site: str | None = None) -> Preset:
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
    return dataclasses.replace(preset, splits=tuple(splits))
