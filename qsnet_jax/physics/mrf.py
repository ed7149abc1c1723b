"""The FISP-MRF acquisition schedule (Jiang et al., MRM 2015, doi 10.1002/mrm.25559).

A fingerprinting train is an adiabatic inversion followed by N unbalanced-SSFP (FISP) shots
whose flip angle and repetition time change from shot to shot. Tissues with different
(T1, T2) then trace different signal curves ("fingerprints"), matched against a simulated
dictionary (`qsnet_jax.physics.dictionary`). Times are in milliseconds, angles in degrees.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Five half-sine flip-angle lobes as in Jiang 2015 (figure 1): their peaks in degrees.
FLIP_LOBE_PEAKS_DEG = (35.0, 43.0, 70.0, 45.0, 27.0)
FLIP_FLOOR_DEG = 5.0
TR_RANGE_MS = (11.5, 14.5)
TE_MS = 2.0
INVERSION_EFFICIENCY = 0.95
# Delay between the adiabatic inversion and the first shot (Jiang 2015: 40 ms).
INVERSION_DELAY_MS = 40.0


@dataclasses.dataclass(frozen=True)
class MRFSchedule:
    """A FISP-MRF acquisition.

    flip_deg: [N] flip angle of each shot (degrees, nominal, i.e. before B1 scaling).
    tr_ms: [N] repetition time of each shot (ms).
    te_ms: echo time (ms), the same for every shot.
    inversion_efficiency: Mz right after the inversion is -inversion_efficiency (1 = perfect).
    inversion_delay_ms: free recovery between the inversion and the first shot (ms).
    inversion: False starts the train from fully relaxed spins (Mz = 1), no inversion and
        no delay (for tests and for non-inverted variants).
    """

    flip_deg: np.ndarray
    tr_ms: np.ndarray
    te_ms: float = TE_MS
    inversion_efficiency: float = INVERSION_EFFICIENCY
    inversion_delay_ms: float = INVERSION_DELAY_MS
    inversion: bool = True

    def __post_init__(self):
        flip = np.asarray(self.flip_deg, dtype=np.float32)
        tr = np.asarray(self.tr_ms, dtype=np.float32)
        if flip.ndim != 1 or flip.shape != tr.shape or flip.size == 0:
            raise ValueError(f"flip_deg {flip.shape} and tr_ms {tr.shape} must be equal, 1-D")
        if np.any(tr <= self.te_ms):
            raise ValueError(f"every TR must exceed TE = {self.te_ms} ms")
        object.__setattr__(self, "flip_deg", flip)
        object.__setattr__(self, "tr_ms", tr)

    @property
    def num_trs(self) -> int:
        return int(self.flip_deg.shape[0])

    @property
    def duration_ms(self) -> float:
        """Acquisition time of the train (ms), inversion delay included."""
        return float(self.inversion_delay_ms + np.sum(self.tr_ms, dtype=np.float64))


def fisp_flip_angles(num_trs: int) -> np.ndarray:
    """Five half-sine lobes of equal length peaking at FLIP_LOBE_PEAKS_DEG, 5 deg floor."""
    lobe = np.minimum(np.arange(num_trs) * len(FLIP_LOBE_PEAKS_DEG) // num_trs,
                      len(FLIP_LOBE_PEAKS_DEG) - 1)
    lobe_len = num_trs / len(FLIP_LOBE_PEAKS_DEG)
    phase = (np.arange(num_trs) + 0.5 - lobe * lobe_len) / lobe_len  # (0, 1) inside a lobe
    peaks = np.asarray(FLIP_LOBE_PEAKS_DEG)[lobe]
    return FLIP_FLOOR_DEG + (peaks - FLIP_FLOOR_DEG) * np.sin(np.pi * phase)


def fisp_repetition_times(num_trs: int) -> np.ndarray:
    """A smooth TR pattern spanning TR_RANGE_MS.

    Jiang 2015 used Perlin noise; a fixed sum of incommensurate sinusoids has the same
    property that matters (smooth, non-periodic over the train, decorrelated from the flip
    lobes) and is deterministic without a seed.
    """
    t = np.arange(num_trs) / max(num_trs - 1, 1)
    wave = (np.sin(2 * np.pi * 2.3 * t + 0.4) + 0.6 * np.sin(2 * np.pi * 5.7 * t + 1.3)
            + 0.3 * np.sin(2 * np.pi * 11.9 * t + 2.9))
    wave = (wave - wave.min()) / max(np.ptp(wave), 1e-12)  # [0, 1]
    lo, hi = TR_RANGE_MS
    return lo + (hi - lo) * wave


def fisp_schedule(num_trs: int = 1000) -> MRFSchedule:
    """The deterministic default FISP-MRF schedule of `num_trs` shots (docs/design.md section 5)."""
    if num_trs < len(FLIP_LOBE_PEAKS_DEG):
        raise ValueError(f"num_trs must be at least {len(FLIP_LOBE_PEAKS_DEG)}, got {num_trs}")
    return MRFSchedule(flip_deg=fisp_flip_angles(num_trs), tr_ms=fisp_repetition_times(num_trs))
