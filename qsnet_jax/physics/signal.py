"""Closed-form signal equations of the weighted contrasts and the site protocols.

All times are in milliseconds, flip angles in degrees, PD relative. The functions use
`jax.numpy` and accept numpy or jax arrays (they broadcast), so the phantom generator, the
physics baseline model and the tests share one implementation.

Site A / site B values are docs/design.md section 5: two vendors' protocols, so that weighted
*inputs* differ between sites while quantitative maps do not. Each Protocol also carries the
acquisition a scanner really runs (`sequence`: turbo spin echo or MPRAGE parameters,
`qsnet_jax.physics.sequences`, docs/design.md section 8); the textbook fields (kind, TR, TE,
TI, flip) and `synthesize` stay what the physics baseline evaluates.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from qsnet_jax.physics.sequences import MPRAGEParams, TSEParams

# Reversible dephasing rate R2' (1/ms) used to turn T2 into T2* when no tissue-specific value
# is known: 1/T2* = 1/T2 + R2'. About 6 /s, typical of brain parenchyma at 3 T.
DEFAULT_R2_PRIME_PER_MS = 0.006


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One weighted acquisition. kind: spin_echo | inversion_recovery | gre (the textbook
    equation `synthesize` uses). sequence: the simulated acquisition (None: textbook only)."""

    contrast: str
    kind: str
    tr_ms: float
    te_ms: float
    ti_ms: float = 0.0
    flip_deg: float = 90.0
    sequence: TSEParams | MPRAGEParams | None = None


def spin_echo(pd, t1_ms, t2_ms, tr_ms, te_ms):
    """(Fast) spin echo: PD (1 - exp(-TR/T1)) exp(-TE/T2)."""
    t1_ms, t2_ms = _positive(t1_ms), _positive(t2_ms)
    return pd * (1.0 - jnp.exp(-tr_ms / t1_ms)) * jnp.exp(-te_ms / t2_ms)


def inversion_recovery(pd, t1_ms, t2_ms, tr_ms, ti_ms, te_ms):
    """Magnitude IR (FLAIR): PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)."""
    t1_ms, t2_ms = _positive(t1_ms), _positive(t2_ms)
    longitudinal = 1.0 - 2.0 * jnp.exp(-ti_ms / t1_ms) + jnp.exp(-tr_ms / t1_ms)
    return pd * jnp.abs(longitudinal) * jnp.exp(-te_ms / t2_ms)


def gre_magnitude(pd, t1_ms, t2star_ms, tr_ms, te_ms, flip_deg):
    """Spoiled gradient echo steady state (Ernst):
    PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*), E1 = exp(-TR/T1)."""
    t1_ms, t2star_ms = _positive(t1_ms), _positive(t2star_ms)
    alpha = jnp.deg2rad(flip_deg)
    e1 = jnp.exp(-tr_ms / t1_ms)
    return pd * jnp.sin(alpha) * (1.0 - e1) / (1.0 - jnp.cos(alpha) * e1) * jnp.exp(
        -te_ms / t2star_ms)


def t2star_from_t2(t2_ms, r2_prime_per_ms=DEFAULT_R2_PRIME_PER_MS):
    return 1.0 / (1.0 / _positive(t2_ms) + r2_prime_per_ms)


def csf_null_ti(t1_ms, tr_ms):
    """Inversion time that nulls a tissue of T1: T1 ln(2 / (1 + exp(-TR/T1)))."""
    return t1_ms * math.log(2.0 / (1.0 + math.exp(-tr_ms / t1_ms)))


def synthesize(protocol: Protocol, pd, t1_ms, t2_ms, t2star_ms=None):
    """The magnitude signal of `protocol` for tissue maps (arrays broadcast)."""
    if protocol.kind == "spin_echo":
        return spin_echo(pd, t1_ms, t2_ms, protocol.tr_ms, protocol.te_ms)
    if protocol.kind == "inversion_recovery":
        return inversion_recovery(pd, t1_ms, t2_ms, protocol.tr_ms, protocol.ti_ms,
                                  protocol.te_ms)
    if protocol.kind == "gre":
        if t2star_ms is None:
            t2star_ms = t2star_from_t2(t2_ms)
        return gre_magnitude(pd, t1_ms, t2star_ms, protocol.tr_ms, protocol.te_ms,
                             protocol.flip_deg)
    raise ValueError(f"unknown protocol kind {protocol.kind!r}")


def _positive(t_ms):
    # Background voxels carry T = 0; keep the equations finite there (signal -> 0 via PD = 0).
    return jnp.maximum(t_ms, 1e-3)


# Nominal CSF T1 at 3 T (Lu 2005: 4163 +- 263 ms). The T2-FLAIR inversion time of each site
# nulls it: 2432 ms at TR 9000 (site A), 2600 ms at TR 11000 (site B). docs/design.md's rounder
# 2500 / 2800 ms would leave CSF at about 16% / 7% of white matter, not nulled.
CSF_T1_MS = 4163.0

# The simulated acquisitions (docs/design.md section 8). Site A is Siemens-like: MPRAGE T1w,
# refocusing 150 degrees, stronger MT (more slices per TR); site B GE-like: multi-slice
# spin-echo T1w, refocusing 130 degrees, weaker MT. TE_eff = (centre_echo + 1) ESP equals the
# textbook TE. The MPRAGE site keeps its textbook spin-echo fields for the physics baseline.
_MPRAGE_A = MPRAGEParams(flip_deg=9.0, readout_tr_ms=7.0, num_readouts=176, ti_ms=900.0,
                         shot_tr_ms=2300.0, centre_readout=88, te_ms=3.0)

SITE_PROTOCOLS = {
    "A": {
        "t1w": Protocol("t1w", "spin_echo", tr_ms=500.0, te_ms=10.0, sequence=_MPRAGE_A),
        "t2w": Protocol("t2w", "spin_echo", tr_ms=5000.0, te_ms=100.0,
                        sequence=TSEParams(esp_ms=10.0, etl=16, refocus_deg=150.0,
                                           centre_echo=9, mt_w_per_s=2.5)),
        "t1flair": Protocol("t1flair", "inversion_recovery", tr_ms=2000.0, te_ms=10.0,
                            ti_ms=800.0,
                            sequence=TSEParams(esp_ms=10.0, etl=4, refocus_deg=150.0,
                                               centre_echo=0, ordering="centric",
                                               mt_w_per_s=1.5)),
        "t2flair": Protocol("t2flair", "inversion_recovery", tr_ms=9000.0, te_ms=120.0,
                            ti_ms=round(csf_null_ti(CSF_T1_MS, 9000.0)),
                            sequence=TSEParams(esp_ms=12.0, etl=20, refocus_deg=150.0,
                                               centre_echo=9, mt_w_per_s=2.0)),
        "swi": Protocol("swi", "gre", tr_ms=30.0, te_ms=20.0, flip_deg=15.0),
    },
    "B": {
        "t1w": Protocol("t1w", "spin_echo", tr_ms=650.0, te_ms=12.0,
                        sequence=TSEParams(esp_ms=12.0, etl=1, refocus_deg=180.0,
                                           centre_echo=0, mt_w_per_s=0.5)),
        "t2w": Protocol("t2w", "spin_echo", tr_ms=4000.0, te_ms=85.0,
                        sequence=TSEParams(esp_ms=8.5, etl=20, refocus_deg=130.0,
                                           centre_echo=9, mt_w_per_s=1.5)),
        "t1flair": Protocol("t1flair", "inversion_recovery", tr_ms=2500.0, te_ms=12.0,
                            ti_ms=1000.0,
                            sequence=TSEParams(esp_ms=12.0, etl=6, refocus_deg=130.0,
                                               centre_echo=0, ordering="centric",
                                               mt_w_per_s=0.8)),
        "t2flair": Protocol("t2flair", "inversion_recovery", tr_ms=11000.0, te_ms=100.0,
                            ti_ms=round(csf_null_ti(CSF_T1_MS, 11000.0)),
                            sequence=TSEParams(esp_ms=10.0, etl=24, refocus_deg=130.0,
                                               centre_echo=9, mt_w_per_s=1.2)),
        "swi": Protocol("swi", "gre", tr_ms=35.0, te_ms=25.0, flip_deg=15.0),
    },
}


def site_protocols(site: str) -> dict[str, Protocol]:
    try:
        return SITE_PROTOCOLS[site]
    except KeyError:
        raise ValueError(f"unknown site {site!r}; known: {sorted(SITE_PROTOCOLS)}") from None
