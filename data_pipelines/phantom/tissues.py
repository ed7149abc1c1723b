"""Tissue classes of the phantom and their 3 T parameters (docs/design.md section 5).

Every subject draws one value per tissue inside the range of the table, then smooth
within-tissue fields (anatomy.smooth_field) modulate T1 and T2 by a few percent around it, so
that no two voxels of a tissue are exactly alike, as in a real brain.

Susceptibility `chi_ppm` is relative to cortical gray matter; `r2prime_per_ms` is the
reversible dephasing rate that turns T2 into T2* (1/T2* = 1/T2 + R2') for the SWI magnitude.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TissueRange:
    """The population range of one tissue; a subject draws uniformly inside it."""

    name: str
    t1_ms: tuple[float, float]
    t2_ms: tuple[float, float]
    pd: tuple[float, float]
    chi_ppm: tuple[float, float]
    r2prime_per_ms: tuple[float, float]
    source: str


# Order matters only for reproducibility of the draws: append, never reorder.
TISSUE_RANGES = (
    # MRF T1 of WM (780-860 ms) is shorter than inversion-recovery T1 (1084 ms); the phantom
    # models what MRF reports, and the weighted contrasts use the same value.
    TissueRange("wm", (780.0, 860.0), (60.0, 75.0), (0.70, 0.70), (-0.04, -0.02),
                (0.005, 0.007), "mri-q 3T table via MRzero; Stanisz 2005"),
    TissueRange("cgm", (1300.0, 1600.0), (80.0, 100.0), (0.80, 0.80), (0.0, 0.0),
                (0.004, 0.006), "mri-q 3T table via MRzero; Stanisz 2005"),
    # Deep gray matter: iron (chi, R2') is set per voxel from the nucleus (anatomy.py).
    TissueRange("dgm", (1000.0, 1400.0), (50.0, 75.0), (0.78, 0.78), (0.0, 0.0),
                (0.006, 0.008), "literature range"),
    TissueRange("csf", (4000.0, 4300.0), (1500.0, 2000.0), (1.00, 1.00), (-0.01, 0.0),
                (0.0, 0.0005), "Lu 2005"),
    # Venous blood: deoxyhemoglobin gives +0.45 ppm and T2* of ~10-20 ms at 3 T.
    TissueRange("vein", (1600.0, 1700.0), (40.0, 80.0), (0.90, 0.90), (0.40, 0.50),
                (0.050, 0.080), "Sharma 2006"),
    TissueRange("necrosis", (2000.0, 3500.0), (150.0, 400.0), (0.90, 0.95), (0.0, 0.02),
                (0.002, 0.004), "literature range"),
    TissueRange("enhancing", (1500.0, 1900.0), (90.0, 150.0), (0.85, 0.85), (0.0, 0.03),
                (0.008, 0.012), "de Blank (MRF)"),
    TissueRange("edema", (1300.0, 1700.0), (100.0, 180.0), (0.85, 0.85), (-0.02, 0.0),
                (0.003, 0.005), "literature range"),
    # Subacute hemorrhage: methemoglobin shortens T1; strongly paramagnetic, very short T2*.
    TissueRange("hemorrhage", (700.0, 1100.0), (40.0, 80.0), (0.90, 0.90), (0.6, 1.2),
                (0.080, 0.150), "literature range (subacute methemoglobin)"),
)
TISSUE_NAMES = tuple(t.name for t in TISSUE_RANGES)
HEALTHY_TISSUES = ("wm", "cgm", "dgm", "csf", "vein")
LESION_TISSUES = ("necrosis", "enhancing", "edema", "hemorrhage")
RANGES = {t.name: t for t in TISSUE_RANGES}

# Relative amplitude (1 std) of the smooth within-tissue T1 and T2 fields, and their
# correlation length (mm).
WITHIN_TISSUE_T1_STD = 0.03
WITHIN_TISSUE_T2_STD = 0.04
WITHIN_TISSUE_CORRELATION_MM = 25.0
# Necrosis is heterogeneous (liquefied pockets next to coagulated debris): larger, shorter
# range variation (phantom v2, docs/design.md section 8).
HETEROGENEITY = {"necrosis": (0.10, 0.15, 6.0)}  # t1 std, t2 std, correlation mm


def within_tissue(name: str):
    """(t1 std, t2 std, correlation mm) of tissue `name`'s within-tissue fields."""
    return HETEROGENEITY.get(name, (WITHIN_TISSUE_T1_STD, WITHIN_TISSUE_T2_STD,
                                    WITHIN_TISSUE_CORRELATION_MM))


@dataclasses.dataclass(frozen=True)
class TissueParams:
    """One subject's value of one tissue."""

    name: str
    t1_ms: float
    t2_ms: float
    pd: float
    chi_ppm: float
    r2prime_per_ms: float


def draw_tissue_params(rng: np.random.Generator) -> dict[str, TissueParams]:
    """One subject's parameters: a uniform draw inside each tissue's range (all tissues are
    drawn, lesion ones too, so that healthy and GBM subjects consume the stream alike)."""
    params = {}
    for tissue in TISSUE_RANGES:
        values = [rng.uniform(*bounds) for bounds in (tissue.t1_ms, tissue.t2_ms, tissue.pd,
                                                      tissue.chi_ppm, tissue.r2prime_per_ms)]
        params[tissue.name] = TissueParams(tissue.name, *map(float, values))
    return params


def field_bounds(name: str, num_std: float = 4.0):
    """The (T1, T2) box that any voxel of tissue `name` can take: the population range widened
    by `num_std` within-tissue standard deviations (fingerprint tables must cover it)."""
    tissue = RANGES[name]
    t1_std, t2_std, _ = within_tissue(name)
    t1_lo = tissue.t1_ms[0] * np.exp(-num_std * t1_std)
    t1_hi = tissue.t1_ms[1] * np.exp(num_std * t1_std)
    t2_lo = tissue.t2_ms[0] * np.exp(-num_std * t2_std)
    t2_hi = tissue.t2_ms[1] * np.exp(num_std * t2_std)
    return (t1_lo, t1_hi), (t2_lo, t2_hi)
