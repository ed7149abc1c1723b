"""Normalization (docs/design.md section 3) against numbers worked out by hand.

T1: log(T / 100) / log(5000 / 100); T2: log(T / 10) / log(2500 / 10); relative channels: the
99.5th percentile inside the brain maps to 1, clipped to [0, 1]; background 0.
"""

import math

import numpy as np
import pytest

from qsnet_jax.physics.channels import TIMING_SCALES, normalize_channel

# (channel, lo ms, hi ms) of the design
LOG_RANGES = (("t1map", 100.0, 5000.0), ("t2map", 10.0, 2500.0))


@pytest.mark.parametrize("name, lo, hi", LOG_RANGES)
def test_relaxation_maps_log_scale_end_points_and_geometric_mean(name, lo, hi):
    mask = np.ones((6,), np.uint8)
    values = np.array([lo, hi, math.sqrt(lo * hi), lo / 2, hi * 3, 0.0], np.float32)
    got = normalize_channel(name, values, mask)
    np.testing.assert_allclose(got, [0.0, 1.0, 0.5, 0.0, 1.0, 0.0], atol=1e-6)
    # a quarter of the way in log: lo * (hi/lo)**0.25
    quarter = lo * (hi / lo) ** 0.25
    assert float(normalize_channel(name, np.float32([quarter]), [1])[0]) == pytest.approx(
        0.25, abs=1e-6)
    # and the inverse the physics baseline uses gives the ms back
    assert TIMING_SCALES[name].inverse(0.5) == pytest.approx(math.sqrt(lo * hi), rel=1e-6)


def test_t1_of_white_matter_by_hand():
    # 820 ms: ln(8.2) / ln(50) = 2.104134 / 3.912023 = 0.537864
    got = float(normalize_channel("t1map", np.float32([820.0]), [1])[0])
    assert got == pytest.approx(0.537864, abs=2e-6)


@pytest.mark.parametrize("name", ["pdmap", "t1w", "t2w", "t1flair", "t2flair", "swi"])
def test_relative_channels_scale_by_the_99_5th_brain_percentile(name):
    # 201 brain voxels holding 1 .. 201 in shuffled order: the 99.5th percentile (linear
    # interpolation) sits at rank 0.995 * 200 = 199, i.e. the value 200. Background voxels
    # are brighter than anything in the brain: they must neither count nor survive.
    rng = np.random.default_rng(0)
    brain_values = rng.permutation(np.arange(1, 202)).astype(np.float32)
    volume = np.full((15, 15), 5000.0, np.float32)
    mask = np.zeros((15, 15), np.uint8)
    where = rng.permutation(15 * 15)[:201]
    volume.flat[where] = brain_values
    mask.flat[where] = 1
    got = normalize_channel(name, volume, mask)
    inside = got.flat[where]
    expected = np.minimum(brain_values / 200.0, 1.0)
    np.testing.assert_allclose(inside, expected, rtol=1e-6)
    assert got.flat[where[brain_values == 100.0][0]] == pytest.approx(0.5)
    assert got.flat[where[brain_values == 201.0][0]] == 1.0  # clipped, not 1.005
    assert np.all(got[mask == 0] == 0.0)
    assert got.dtype == np.float32


def test_relative_channel_with_empty_brain_is_an_error():
    with pytest.raises(ValueError, match="empty brain mask"):
        normalize_channel("t1w", np.ones((3, 3), np.float32), np.zeros((3, 3)))
