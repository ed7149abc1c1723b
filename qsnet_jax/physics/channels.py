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
- The MRF subspace (`mrf_subspace`, [X, Y, Z, 2k]: the fingerprint's k complex coefficients
  in the cohort's temporal basis, real parts then imaginary parts): see
  `normalize_subspace`. It is an input only, and the one channel with more than one plane.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qsnet_jax.physics import subspace as subspace_lib

QUANTITATIVE_CHANNELS = ("t1map", "t2map", "pdmap")
WEIGHTED_CHANNELS = ("t1w", "t2w", "t1flair", "t2flair", "swi")
# The single-plane (3D) channels: quantitative maps and weighted contrasts.
ALL_CHANNELS = QUANTITATIVE_CHANNELS + WEIGHTED_CHANNELS
SUBSPACE_CHANNEL = "mrf_subspace"
# Channels stored as 4D volumes [X, Y, Z, planes]; each plane is one network input channel.
MULTI_PLANE_CHANNELS = (SUBSPACE_CHANNEL,)
# What `data.input_channels` may name. Targets are single-plane channels (ALL_CHANNELS).
INPUT_CHANNELS = ALL_CHANNELS + MULTI_PLANE_CHANNELS
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


def check_channel_names(names, *, allowed=INPUT_CHANNELS, what="channel"):
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

    Returns float32 in [0, 1] with the background (outside `brain_mask`) set to 0; for
    `mrf_subspace`, the signed [X, Y, Z, 2k] of `normalize_subspace`.
    """
    check_channel_names([name])
    if name == SUBSPACE_CHANNEL:
        return normalize_subspace(volume, brain_mask)
    volume = np.asarray(volume, dtype=np.float32)
    mask = np.asarray(brain_mask) > 0
    if name in TIMING_SCALES:
        out = TIMING_SCALES[name].forward(volume)
    else:
        out = np.clip(volume / percentile_scale(volume, mask), 0.0, 1.0)
    return np.where(mask, out, 0.0).astype(np.float32)


# Bump when normalize_subspace changes: prepared data keyed by it must be prepared again.
SUBSPACE_NORMALIZATION = "phase-to-c1, 99.5th percentile of |c1|, v1"


def normalize_subspace(volume, brain_mask):
    """Normalize MRF subspace coefficients [X, Y, Z, 2k] (real parts, then imaginary parts).

    A fixed transform plus one global scale per subject, the counterpart of PD's:
    1. Phase: every voxel's k coefficients are multiplied by conj(c_1) / |c_1|, so that the
       first coefficient becomes real and >= 0. A voxel's absolute phase (receive coil and
       B0 phase) is the same at every time point and says nothing about the tissue;
       dictionary matching discards it too (it scores |<f, d>|). The relative phases of
       c_2 .. c_k, which do carry tissue information, are kept. The imaginary part of c_1 is
       then 0; the channel stays, so that the layout is the file's.
    2. Scale: all 2k channels are divided by the 99.5th percentile of |c_1| inside the brain
       mask. c_1 is the projection on the dominant singular vector, so |c_1| is the
       fingerprint's overall amplitude (proton density times receive gain): one scale for
       the whole subject keeps every ratio between coefficients, which is where T1 and T2
       live, and removes the arbitrary global intensity, exactly as PD's scale does.
    3. No clipping: coefficients are signed, and the tails (CSF, lesions) are information.
    The background (outside `brain_mask`) is set to 0. Returns float32 [X, Y, Z, 2k].
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 4:
        raise ValueError(f"an mrf_subspace volume is [X, Y, Z, 2k], got shape {volume.shape}")
    coefficients = subspace_lib.channels_to_coefficients(volume)
    first = coefficients[..., 0]
    magnitude = np.abs(first)
    # A voxel whose first coefficient is 0 has no phase to remove: keep it as it is.
    rotation = np.where(magnitude > 0, np.conj(first) / np.where(magnitude > 0, magnitude, 1),
                        1.0)
    coefficients = coefficients * rotation[..., None]
    scale = percentile_scale(magnitude, brain_mask)
    out = subspace_lib.coefficients_to_channels(coefficients / scale)
    return np.where((np.asarray(brain_mask) > 0)[..., None], out, 0.0).astype(np.float32)


def num_planes(name, subspace_planes):
    """Network input channels of one named channel: `subspace_planes` (2k) for the MRF
    subspace, 1 for every other channel."""
    return int(subspace_planes) if name in MULTI_PLANE_CHANNELS else 1


def stack_planes(volumes, names):
    """Volumes {name: [X, Y, Z] or [X, Y, Z, P]} -> [X, Y, Z, sum of planes], in `names`
    order and, within a multi-plane channel, in its plane order."""
    return np.concatenate([np.asarray(volumes[n])[..., None] if np.ndim(volumes[n]) == 3
                           else np.asarray(volumes[n]) for n in names], axis=-1)


def display_planes(volumes, names):
    """One plane per named channel, [X, Y, Z, len(names)], for figures: a multi-plane
    channel shows its first plane (for the normalized subspace, |c_1|: a PD-like image)."""
    return np.stack([np.asarray(volumes[n])[..., 0] if np.ndim(volumes[n]) == 4
                     else np.asarray(volumes[n]) for n in names], axis=-1)
