"""Fast, exact stand-ins for `scipy.ndimage.map_coordinates` in the two shapes the phantom
build uses it most.

Profiling one quick subject put about a third of its build time in `map_coordinates`
(issue 18's build-time target): a dozen template volumes interpolated at the same millions of
warped points, each call recomputing the same corners and weights, and smooth random fields
evaluated point by point on grids that are axis-aligned. Both are computed here with the
same arithmetic scipy does, in float64 before the final float32 cast, and tested against
scipy itself (tests/test_phantom_resample.py):

- `trilinear`: several volumes of one grid at the same scattered points, order 1,
  mode "constant" (points outside the grid get 0), corners and weights found once.
- `on_grid`: one volume at an axis-aligned grid of points given per axis (any spline order
  without prefilter, any mode). Interpolation is linear in the data and separable, so it is
  three small matrix products with 1-D weight matrices, and those weights are taken from
  scipy's own 1-D interpolation of unit vectors: boundary modes behave as scipy's.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Points per block in `trilinear`: keeps the float64 temporaries in cache (measured fastest
# among 2^14..2^20 on the quick preset's grids).
_BLOCK = 1 << 16


def stack(volumes) -> np.ndarray:
    """Volumes of one grid as the [X, Y, Z, C] float32 table `trilinear` reads (build it
    once when the same volumes are sampled again)."""
    shapes = {np.shape(v) for v in volumes}
    if len(shapes) != 1 or min(next(iter(shapes))) < 2 or len(next(iter(shapes))) != 3:
        raise ValueError(f"trilinear needs 3-D volumes of one shape, >= 2 per axis: "
                         f"{[np.shape(v) for v in volumes]}")
    # np.stack keeps its inputs' memory order, and NIfTI volumes load in Fortran order:
    # without the C copy here, every `trilinear` call copies the whole table to flatten it.
    return np.ascontiguousarray(np.stack([np.asarray(v, np.float32) for v in volumes],
                                         axis=-1))


def trilinear(table, coords) -> list:
    """Each volume of `table` (a `stack`) interpolated at voxel coordinates `coords`
    [3, ...], as `ndimage.map_coordinates(v, coords, order=1, mode="constant", cval=0)`
    would: float32 arrays of the points' shape, one per volume."""
    shape = table.shape[:3]
    table = table.reshape(-1, table.shape[3])
    points = [np.asarray(c).ravel() for c in coords]
    out = np.empty((table.shape[1], points[0].size), np.float32)
    for start in range(0, points[0].size, _BLOCK):
        block = [p[start:start + _BLOCK].astype(np.float64) for p in points]
        out[:, start:start + _BLOCK] = _trilinear_block(table, shape, block).T
    return [channel.reshape(np.shape(coords[0])) for channel in out]


def _trilinear_block(table, shape, points):
    """[points, C] float64: the 8-corner weighted sum, 0 outside the grid."""
    inside = np.ones(points[0].size, bool)
    base, upper = [], []
    for p, size in zip(points, shape, strict=True):
        inside &= (p >= 0.0) & (p <= size - 1)
        # The last cell also serves p == size - 1 exactly (weight 1 on its upper corner).
        i = np.clip(np.floor(p), 0, size - 2).astype(np.int64)
        base.append(i)
        upper.append(p - i)
    strides = (shape[1] * shape[2], shape[2], 1)
    first = base[0] * strides[0] + base[1] * strides[1] + base[2]
    lower = [1.0 - u for u in upper]
    # The sum runs in scipy's order, corner by corner; np.take into reused buffers (rather
    # than fancy indexing and fresh temporaries) halves the time, with the same arithmetic.
    total = np.empty((first.size, table.shape[1]), np.float64)
    term, index = np.empty_like(total), np.empty_like(first)
    corner = np.empty(total.shape, table.dtype)
    for dx in (0, 1):
        wx = upper[0] if dx else lower[0]
        for dy in (0, 1):
            wxy = wx * (upper[1] if dy else lower[1])
            for dz in (0, 1):
                weight = wxy * (upper[2] if dz else lower[2])
                np.add(first, dx * strides[0] + dy * strides[1] + dz, out=index)
                np.take(table, index, axis=0, out=corner, mode="clip")  # in range
                if dx or dy or dz:
                    np.multiply(weight[:, None], corner, out=term)
                    total += term
                else:  # 0 + term, as a zero-initialized sum would (turns -0 into +0)
                    np.multiply(weight[:, None], corner, out=total)
                    total += 0.0
    total[~inside] = 0.0
    return total


def axis_weights(size: int, positions, *, order: int, mode: str) -> np.ndarray:
    """[len(positions), size]: row i holds the weights by which 1-D spline interpolation
    (no prefilter) of a length-`size` signal at positions[i] combines its samples, read off
    scipy's response to each unit vector."""
    positions = np.asarray(positions, np.float64)
    unit = np.eye(size)
    return np.stack([ndimage.map_coordinates(unit[j], [positions], order=order,
                                             prefilter=False, mode=mode)
                     for j in range(size)], axis=1)


def on_grid(volume, positions, *, order: int, mode: str) -> np.ndarray:
    """`ndimage.map_coordinates(volume, meshgrid(*positions, indexing="ij"), order=order,
    prefilter=False, mode=mode)` as float32, for one coordinate vector per axis."""
    out = np.asarray(volume, np.float64)
    for axis, axis_positions in enumerate(positions):
        weights = axis_weights(volume.shape[axis], axis_positions, order=order, mode=mode)
        if weights.shape[0] == weights.shape[1] and np.array_equal(weights, np.eye(len(weights))):
            continue  # the positions are the samples (the fine grid's slices): a no-op
        out = np.moveaxis(np.tensordot(weights, out, axes=([1], [axis])), 0, axis)
    # C order: the moved axes leave Z outermost in memory, and every array computed from a
    # non-contiguous grid inherits that layout (each later `ravel` is then a full copy).
    return np.ascontiguousarray(out, dtype=np.float32)
