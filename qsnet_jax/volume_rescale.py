"""Volume-level rescaling of a synthesized contrast: the target's normalization, applied to
the synthesis.

Every weighted target is normalized per volume: divided by its 99.5th percentile inside the
brain (docs/design.md section 3). That percentile is a statistic of the whole volume. In
T2-FLAIR it is set by the lesion, whose size a network that reads one slice cannot see, so
each subject's normalized T2-FLAIR is darker or brighter as a whole by an amount no slice
tells. A slice network therefore synthesizes every subject at the training cohort's average
scale and misses each subject's own by a per-subject offset.

Once a whole volume is synthesized, the same volume statistic is available for the
synthesis, so the convention can be applied to it too: each contrast is scaled so that its
own 99.5th brain percentile equals a fixed ``level``, then clipped to [0, 1]. The level is
not 1 because a synthesis is smoother than the noisy truth, whose top 0.5% are the
brightest noise peaks; it is fitted once per contrast and model, on training subjects, as
the level of least brain MAE (``fit_level``). Nothing here looks at the subject's truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import optimize

from qsnet_jax.physics.channels import percentile_scale

LEVEL_BOUNDS = (0.3, 1.5)  # where fit_level searches; a level outside means a broken model
GRID_STEP = 0.01
MAX_FIT_VOXELS = 200_000  # per subject and contrast: enough for a 1e-3 level, bounded memory

CONVENTION = (
    "Volume rescaling: each synthesized contrast is scaled so that its 99.5th percentile "
    "inside the brain equals a level fitted per contrast on training subjects (least brain "
    "MAE), then clipped to [0, 1] - the targets' own per-volume normalization, applied to "
    "the synthesized volume.")


def volume_scale(volume, brain_mask) -> float | None:
    """The brain 99.5th percentile of ``volume``, the statistic the targets are divided by
    (``channels.percentile_scale``); None when it is not positive (an all-zero synthesis, an
    empty mask): such a volume has no scale to correct and is never rescaled."""
    try:
        return percentile_scale(volume, brain_mask)
    except ValueError:
        return None


def rescale_volume(volume, brain_mask, level: float) -> np.ndarray:
    """``volume`` scaled so its brain 99.5th percentile is ``level``, clipped to [0, 1]; as it
    is when it has no ``volume_scale``."""
    volume = np.asarray(volume, dtype=np.float32)
    top = volume_scale(volume, brain_mask)
    if top is None:
        return volume
    return np.clip(volume * np.float32(level / top), 0.0, 1.0).astype(np.float32)


def rescale_contrasts(prediction, brain_mask, levels: Sequence[float] | None) -> np.ndarray:
    """``prediction [X, Y, Z, C]`` with contrast ``c`` rescaled to ``levels[c]``; unchanged
    when ``levels`` is None."""
    prediction = np.asarray(prediction, dtype=np.float32)
    if levels is None:
        return prediction
    if len(levels) != prediction.shape[-1]:
        raise ValueError(f"{len(levels)} rescaling levels for {prediction.shape[-1]} contrasts")
    return np.stack([rescale_volume(prediction[..., c], brain_mask, level)
                     for c, level in enumerate(levels)], axis=-1)


def fit_samples(prediction, target, brain_mask, *, max_voxels: int = MAX_FIT_VOXELS):
    """What ``fit_level`` needs of one subject and contrast: the brain voxels of the
    prediction divided by its ``volume_scale``, and of the target, every k-th voxel so that
    at most ``max_voxels`` remain. None for a prediction without one (it is never
    rescaled)."""
    mask = np.asarray(brain_mask) > 0
    top = volume_scale(prediction, mask)
    if top is None:
        return None
    stride = max(1, -(-int(mask.sum()) // max_voxels))
    relative = (np.asarray(prediction, np.float32)[mask] / np.float32(top))[::stride]
    return relative, np.asarray(target, np.float32)[mask][::stride]


def fit_level(samples: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """The level of least mean brain MAE over subjects, each subject weighted equally.

    ``samples``: one ``fit_samples`` pair per subject. The MAE of ``clip(level * r, 0, 1)``
    against the target is convex in ``level`` while no voxel clips, not beyond; a grid over
    ``LEVEL_BOUNDS`` finds the basin and a bounded scalar search refines it.
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        raise ValueError("no subject to fit a rescaling level on")

    def mean_mae(level):
        return float(np.mean([np.mean(np.abs(np.clip(level * relative, 0.0, 1.0) - target))
                              for relative, target in samples]))

    grid = np.arange(LEVEL_BOUNDS[0], LEVEL_BOUNDS[1] + GRID_STEP / 2, GRID_STEP)
    best = float(grid[np.argmin([mean_mae(level) for level in grid])])
    bracket = (max(LEVEL_BOUNDS[0], best - GRID_STEP), min(LEVEL_BOUNDS[1], best + GRID_STEP))
    result = optimize.minimize_scalar(mean_mae, bounds=bracket, method="bounded",
                                      options={"xatol": 1e-4})
    return float(result.x) if result.fun <= mean_mae(best) else best
