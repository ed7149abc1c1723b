"""Volume rescaling of the synthesis (qsnet_jax.volume_rescale), against NumPy references."""

import numpy as np
import pytest

from qsnet_jax import volume_rescale as vr


def _brain(shape=(24, 28, 10)):
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    return np.linalg.norm(grid / [0.8, 0.8, 1.2], axis=-1) < 1


def test_rescaled_volume_has_the_level_at_its_brain_percentile_and_keeps_ratios():
    rng = np.random.default_rng(0)
    brain = _brain()
    volume = np.where(brain, rng.gamma(4.0, 0.1, brain.shape), 0.0).astype(np.float32)
    volume[~brain] = 5.0  # outside the brain: must not set the scale
    out = vr.rescale_volume(volume, brain, 0.85)
    assert np.percentile(out[brain], 99.5) == pytest.approx(0.85, rel=1e-5)
    # one factor for every voxel (below the clip), the 99.5th brain percentile's
    factor = 0.85 / np.percentile(volume[brain], 99.5)
    unclipped = volume * factor < 1.0
    np.testing.assert_allclose(out[unclipped], volume[unclipped] * factor, rtol=1e-5)
    assert np.all(out[~unclipped] == 1.0) and out.dtype == np.float32
    # a level above 1 clips the top, and an all-zero synthesis has no scale to correct
    assert np.max(vr.rescale_volume(volume, brain, 1.3)) == 1.0
    zeros = np.zeros_like(volume)
    np.testing.assert_array_equal(vr.rescale_volume(zeros, brain, 0.9), zeros)


def test_rescale_contrasts_applies_each_level_to_its_own_contrast():
    rng = np.random.default_rng(1)
    brain = _brain((12, 14, 4))
    prediction = rng.uniform(0, 0.7, brain.shape + (3,)).astype(np.float32)
    out = vr.rescale_contrasts(prediction, brain, (0.9, 0.5, 0.7))
    for c, level in enumerate((0.9, 0.5, 0.7)):
        assert np.percentile(out[..., c][brain], 99.5) == pytest.approx(level, rel=1e-5)
    np.testing.assert_array_equal(vr.rescale_contrasts(prediction, brain, None), prediction)
    with pytest.raises(ValueError, match="2 rescaling levels for 3 contrasts"):
        vr.rescale_contrasts(prediction, brain, (0.9, 0.5))


def _subject_samples(rng, level, offset, size=40_000):
    """A smooth synthesis whose truth is the synthesis at the per-volume scale ``level`` plus
    skewed noise of median 0 (mean > 0: a least-squares fit lands elsewhere), each subject at
    its own overall brightness ``offset``."""
    relative = rng.beta(2.0, 3.0, size) * offset
    truth = np.clip(level * relative / np.percentile(relative, 99.5)
                    + rng.exponential(0.06, size) - 0.06 * np.log(2.0), 0.0, 1.0)
    return relative.astype(np.float32), truth.astype(np.float32)


def test_fit_level_recovers_the_planted_level_and_beats_a_brute_force_grid():
    rng = np.random.default_rng(2)
    brains = [np.ones(40_000, bool)] * 3
    subjects = [_subject_samples(rng, 0.83, offset) for offset in (0.6, 1.0, 1.7)]
    samples = [vr.fit_samples(pred, truth, brain)
               for (pred, truth), brain in zip(subjects, brains, strict=True)]
    level = vr.fit_level(samples)
    assert level == pytest.approx(0.83, abs=0.01)

    # the independent reference: mean brain MAE of each subject's rescaled synthesis on a
    # fine grid, with the rescale written out in NumPy
    def mean_mae(candidate):
        return np.mean([np.mean(np.abs(np.clip(
            pred * candidate / np.percentile(pred, 99.5), 0, 1) - truth))
            for pred, truth in subjects])

    grid = np.arange(0.5, 1.2, 1e-3)
    best = grid[np.argmin([mean_mae(g) for g in grid])]
    assert level == pytest.approx(best, abs=2e-3)
    assert mean_mae(level) <= mean_mae(best) + 1e-6


def test_fit_samples_strides_to_the_voxel_cap_and_skips_an_empty_synthesis():
    rng = np.random.default_rng(3)
    brain = _brain()
    prediction = rng.uniform(0.1, 0.9, brain.shape).astype(np.float32)
    target = rng.uniform(0, 1, brain.shape).astype(np.float32)
    relative, truth = vr.fit_samples(prediction, target, brain, max_voxels=1000)
    count = int(brain.sum())
    stride = -(-count // 1000)
    assert relative.size == truth.size == len(range(0, count, stride)) <= 1000
    top = np.percentile(prediction[brain], 99.5)
    np.testing.assert_allclose(relative, prediction[brain][::stride] / top, rtol=1e-6)
    np.testing.assert_array_equal(truth, target[brain][::stride])
    assert vr.fit_samples(np.zeros_like(prediction), target, brain) is None
    with pytest.raises(ValueError, match="no subject"):
        vr.fit_level([None])
