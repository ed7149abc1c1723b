"""Channel names and the fixed normalizations of docs/design.md section 3.

Every array that enters a model is normalized here, the same way for training, evaluation
and whole-volume synthesis:

- T1 and T2 maps (milliseconds) go through a fixed logarithmic transform; no per-subject
  statistic is used, because the absolute values are the point of quantitative input:
      t_norm = log(T / lo) / log(hi / lo), clipped to [0, 1]
  with (lo, hi) = (100, 5000) ms for T1 and (10, 2500) ms for T2. A log scale gives white
  matter, gray matter and CSF comparable room in [0, 1] (a linear scale would squeeze all
  tissue below 0.1 next to CSF). Voxels with T <= 0 (background) map to 0.
- PD is relative: scaled per volume like a weighted image.
- Weighted images (t1w, t2w, t1flair, t2flair, swi): scaled per volume so that the 99.5th
  percentile inside the brain mask is 1, then clipped to [0, 1].
"""

from __future__ import annotations

import dataclasses

import numpy as np

QUANTITATIVE_CHANNELS = ("t1map", "t2map", "pdmap")
WEIGHTED_CHANNELS = ("t1w", "t2w", "t1flair", "t2flair", "swi")
ALL_CHANNELS = QUANTITATIVE_CHANNELS + WEIGHTED_CHANNELS
# Channels whose values carry absolute physical units (ms) and get a fixed transform.
TIMING_CHANNELS = ("t1map", "t2map")
# Channels scaled per volume (relative intensities).
RELATIVE_CHANNELS = ("pdmap",) + WEIGHTED_CHANNELS

PERCENTILE = 99.5


@dataclasses.dataclass(frozen=True)
class LogScale:
    """A fixed log transform of a relaxation time in ms onto [0, 1]."""

    lo_ms: float
    hi_ms: float

    def forward(self, t_ms):
        t_ms = np.asarray(t_ms, dtype=np.float32)
        safe = np.maximum(t_ms, self.lo_ms)
        out = np.log(safe / self.lo_ms) / np.log(self.hi_ms / self.lo_ms)
        out = np.where(t_ms > 0, out, 0.0)
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def inverse(self, t_norm):
        """Back to ms; works on numpy and jax arrays alike."""
        return self.lo_ms * (self.hi_ms / self.lo_ms) ** t_norm


TIMING_SCALES = {
    "t1map": LogScale(lo_ms=100.0, hi_ms=5000.0),
    "t2map": LogScale(lo_ms=10.0, hi_ms=2500.0),
}


def check_channel_names(names, *, allowed=ALL_CHANNELS, what="channel"):
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} name(s) {unknown}; known: {list(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicated {what} name in {list(names)}")


def percentile_scale(volume, brain_mask, percentile=PERCENTILE):
    """The per-volume scale s such that the `percentile` inside the mask maps to 1."""
    inside = np.asarray(volume)[np.asarray(brain_mask) > 0]
    if inside.size == 0:
        raise ValueError("empty brain mask: cannot scale a relative-intensity volume")
    scale = float(np.percentile(inside, percentile))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"the {percentile}th percentile inside the brain is {scale}; "
                         "the volume is empty or not positive")
    return scale


def normalize_channel(name, volume, brain_mask):
    """Normalize one volume of channel `name` as docs/design.md section 3 says.

    Returns float32 in [0, 1] with the background (outside `brain_mask`) set to 0.
    """
    check_channel_names([name])
    volume = np.asarray(volume, dtype=np.float32)
    mask = np.asarray(brain_mask) > 0
    if name in TIMING_SCALES:
        out = TIMING_SCALES[name].forward(volume)
    else:
        out = np.clip(volume / percentile_scale(volume, mask), 0.0, 1.0)
    return np.where(mask, out, 0.0).astype(np.float32)
