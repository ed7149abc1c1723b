"""Whole-volume synthesis: normalized input volumes in, normalized contrast volumes out.

A 2-D (or 2.5-D) generator sees one axial slice ``volume[:, :, z]`` at a time. The slices go
through the model in batches of one fixed size (the last batch is padded), so a single
compiled function serves a whole volume and every later volume of the same in-plane size.

2.5-D context (``context_slices = k``) follows the input pipeline's convention
(docs/interfaces.md): the channels are input-major, i.e. for each input channel the slices
z-k ... z+k, and slices beyond the volume's ends are replicated from the edge slice.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

PredictFn = Callable[[jax.Array], jax.Array]


def context_indices(slice_indices, num_slices: int, context_slices: int) -> np.ndarray:
    """``[B, 2k+1]`` slice indices z-k ... z+k of each slice z, clamped to the volume."""
    offsets = np.arange(-context_slices, context_slices + 1)
    indices = np.asarray(slice_indices)[:, None] + offsets[None, :]
    return np.clip(indices, 0, num_slices - 1)


def stack_context(volume, slice_indices, context_slices: int) -> np.ndarray:
    """Model inputs ``[B, X, Y, C*(2k+1)]`` for the axial slices ``slice_indices``.

    ``volume`` is ``[X, Y, Z, C]``. Channel ``c*(2k+1) + j`` holds input channel ``c`` at
    slice ``z - k + j`` (input-major), edges replicated.
    """
    volume = np.asarray(volume)
    if volume.ndim != 4:
        raise ValueError(f"expected a volume [X, Y, Z, C], got shape {volume.shape}")
    num_x, num_y, num_z, num_c = volume.shape
    indices = context_indices(slice_indices, num_z, context_slices)  # [B, 2k+1]
    gathered = volume[:, :, indices, :]  # [X, Y, B, 2k+1, C]
    gathered = np.transpose(gathered, (2, 0, 1, 4, 3))  # [B, X, Y, C, 2k+1]
    return np.ascontiguousarray(
        gathered.reshape(len(indices), num_x, num_y, num_c * (2 * context_slices + 1)))


def synthesize_volume(predict_fn: PredictFn, volume, *, batch_size: int,
                      context_slices: int = 0) -> np.ndarray:
    """Apply a slice-wise ``predict_fn`` to every axial slice of ``volume``.

    ``predict_fn`` maps a batch ``[batch_size, X, Y, C_in*(2k+1)]`` to ``[batch_size, X, Y,
    C_out]``; it is always called with exactly ``batch_size`` slices (the last batch is
    padded by repeating its last slice, and the padding's output is dropped). Batches are
    dispatched before any result is read back, so host-side stacking overlaps device work.

    Returns float32 ``[X, Y, Z, C_out]``.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 4:
        raise ValueError(f"expected a volume [X, Y, Z, C_in], got shape {volume.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if context_slices < 0:
        raise ValueError(f"context_slices must be >= 0, got {context_slices}")
    num_z = volume.shape[2]
    pending = []
    for start in range(0, num_z, batch_size):
        indices = np.arange(start, start + batch_size)
        valid = int(min(batch_size, num_z - start))
        indices = np.minimum(indices, num_z - 1)  # pad with the last slice
        batch = stack_context(volume, indices, context_slices)
        pending.append((predict_fn(batch), valid))
    slices = []
    for prediction, valid in pending:
        prediction = np.asarray(prediction, dtype=np.float32)
        if prediction.ndim != 4 or prediction.shape[0] != batch_size or \
                prediction.shape[1:3] != volume.shape[:2]:
            raise ValueError(f"predict_fn returned shape {prediction.shape} for a batch of "
                             f"{batch_size} slices of {volume.shape[:2]}")
        slices.append(prediction[:valid])
    return np.ascontiguousarray(np.transpose(np.concatenate(slices, axis=0), (1, 2, 0, 3)))


def make_predict_fn(module, variables) -> PredictFn:
    """A jitted ``batch [B, H, W, C_in*(2k+1)] -> prediction [B, H, W, C_out]`` of a generator.

    ``module.apply(variables, x, train=False)`` returns a ``GeneratorOutput``; only the
    full-resolution ``prediction`` is kept (the deep-supervision heads are training-only).
    The variables are placed on the device once and closed over as arguments, not constants.
    """
    variables = jax.device_put(variables)

    @jax.jit
    def _predict(variables, batch):
        output = module.apply(variables, batch, train=False)
        prediction = getattr(output, "prediction", output)
        return prediction.astype(jnp.float32)

    def predict(batch):
        return _predict(variables, batch)

    return predict
