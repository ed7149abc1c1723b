"""The phantom's fast interpolation against scipy.ndimage.map_coordinates, the routine it
replaces: scattered trilinear sampling of several volumes (points inside, on the last
sample, just outside and far outside the grid), and separable evaluation on axis-aligned
grids for the spline orders and boundary modes the build uses."""

import numpy as np
import pytest
from scipy import ndimage

from data_pipelines.phantom import resample


def test_trilinear_equals_map_coordinates_for_every_volume():
    rng = np.random.default_rng(0)
    volumes = [rng.standard_normal((9, 11, 7)).astype(np.float32) for _ in range(3)]
    points = np.stack([rng.uniform(-1.5, n + 0.5, (13, 17, 5)) for n in (9, 11, 7)])
    # the exact edges: the last sample on each axis belongs to the grid, just past it not
    points[:, 0, 0, 0] = (8.0, 10.0, 6.0)
    points[:, 0, 0, 1] = (0.0, 0.0, 0.0)
    points[:, 0, 0, 2] = (8.0 + 1e-6, 5.0, 3.0)
    points[:, 0, 0, 3] = (4.0, -1e-6, 3.0)
    got = resample.trilinear(resample.stack(volumes), points)
    for volume, values in zip(volumes, got, strict=True):
        expected = ndimage.map_coordinates(volume, points, order=1, mode="constant", cval=0.0)
        assert values.shape == points.shape[1:] and values.dtype == np.float32
        np.testing.assert_allclose(values, expected, atol=1e-6, rtol=0)
    assert got[0][0, 0, 0] == volumes[0][8, 10, 6] and got[0][0, 0, 2] == 0.0


def test_trilinear_in_blocks_gives_the_same_values(monkeypatch):
    rng = np.random.default_rng(1)
    volumes = [rng.random((6, 5, 4)).astype(np.float32) for _ in range(2)]
    points = np.stack([rng.uniform(0, n - 1, 1000) for n in (6, 5, 4)])
    whole = resample.trilinear(resample.stack(volumes), points)
    monkeypatch.setattr(resample, "_BLOCK", 7)  # many blocks, the last one short
    blocked = resample.trilinear(resample.stack(volumes), points)
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_array_equal(a, b)


def test_trilinear_sums_from_zero_as_scipy_does():
    # A sample exactly on a grid point holding -0.0, among negative neighbours: scipy's sum
    # starts at +0, and 0 + (-0) is +0; a sum that started from the first corner's product
    # would keep the sign bit, and the written NIfTI bytes would change.
    volume = -np.ones((4, 4, 4), np.float32)
    volume[1, 1, 1] = -0.0
    point = np.array([[1.0], [1.0], [1.0]])
    expected = ndimage.map_coordinates(volume, point, order=1, mode="constant", cval=0.0)
    got = resample.trilinear(resample.stack([volume]), point)[0]
    assert got[0] == 0.0 and np.signbit(got[0]) == np.signbit(expected[0]) == False  # noqa: E712


def test_stack_rejects_volumes_of_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        resample.stack([np.zeros((4, 4, 4)), np.zeros((4, 4, 5))])


@pytest.mark.parametrize("order,mode", [(1, "nearest"), (3, "nearest"), (1, "constant"),
                                        (3, "mirror")])
def test_on_grid_equals_map_coordinates_on_the_mesh(order, mode):
    rng = np.random.default_rng(2)
    lattice = rng.standard_normal((8, 10, 6))
    axes = [np.linspace(-1.3, 8.6, 23), np.linspace(0.2, 9.0, 31), np.arange(6) + 0.25]
    mesh = np.meshgrid(*axes, indexing="ij")
    expected = ndimage.map_coordinates(lattice, mesh, order=order, prefilter=False, mode=mode)
    got = resample.on_grid(lattice, axes, order=order, mode=mode)
    assert got.shape == (23, 31, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_on_grid_skips_only_an_axis_sampled_at_its_own_points_and_returns_c_order():
    # The fine grid keeps the acquisition's slices: that axis is an identity and is skipped;
    # an axis of as many points that are not the samples must still be interpolated.
    rng = np.random.default_rng(3)
    lattice = rng.standard_normal((8, 10, 6))
    for last_axis in (np.arange(6.0), np.arange(6.0) + 0.5):
        axes = [np.linspace(0.0, 7.0, 15), np.linspace(0.5, 9.0, 19), last_axis]
        mesh = np.meshgrid(*axes, indexing="ij")
        expected = ndimage.map_coordinates(lattice, mesh, order=1, prefilter=False,
                                           mode="nearest")
        got = resample.on_grid(lattice, axes, order=1, mode="nearest")
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
        assert got.flags.c_contiguous  # a later ravel is a view, not a transposing copy


def test_stack_of_fortran_order_volumes_is_c_order():
    # NIfTI volumes load in Fortran order; the table is flattened on every trilinear call.
    volumes = [np.asfortranarray(np.arange(60, dtype=np.float32).reshape(3, 4, 5) * k)
               for k in (1, 2)]
    table = resample.stack(volumes)
    assert table.flags.c_contiguous
    np.testing.assert_array_equal(table[..., 1], volumes[1])
