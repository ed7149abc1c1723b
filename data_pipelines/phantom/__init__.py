"""The digital brain phantom cohort: QS-Net's embedded default data set (docs/design.md section 5).

    python -m data_pipelines.phantom --out DIR --preset {tiny,quick,paper} [--seed N]
    python -m data_pipelines.phantom.figure --cohort DIR --subject sub-004 --out fig.png

Library: `ensure_cohort(preset, seed, cache_dir) -> path` (`cohort_path`: the same path,
nothing built), `build_cohort(out_dir, preset, seed)`, `simulate.simulate_subject(...)` for
in-memory volumes and ground truth.
"""

from data_pipelines.phantom.presets import PRESETS, Preset, resolve_preset
from data_pipelines.phantom.writer import (
    MANIFEST_COLUMNS,
    build_cohort,
    cohort_path,
    ensure_cohort,
)

__all__ = ["PRESETS", "Preset", "resolve_preset", "MANIFEST_COLUMNS", "build_cohort",
           "cohort_path", "ensure_cohort"]
