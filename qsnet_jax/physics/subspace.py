"""The temporal subspace of MR fingerprints: rank-k basis, projection, reconstruction.

FISP fingerprints are smooth in time, so a dictionary's fingerprints span, to within a tiny
residual, a k-dimensional subspace of C^T (McGivney et al., IEEE TMI 2014). Its basis V
[T, k] (orthonormal columns: V^H V = I) comes from the singular value decomposition of the
dictionary (fingerprints as rows); a fingerprint f [T] has the coefficients c = V^H f [k] and
the reconstruction V c. The energy captured by V is the fraction of the dictionary's energy
that survives projection, sum_i |V^H f_i|^2 / sum_i |f_i|^2, which equals the top-k singular
values' share sum_{j<k} s_j^2 / sum_j s_j^2.

Direct contrast synthesis (Wang et al., MRM 2023) feeds a network these coefficients instead
of the maps matched from them. A cohort stores them as 2k real channels
(`coefficients_to_channels`): the real parts of c_1 .. c_k, then their imaginary parts. Real
and imaginary parts, not magnitude and phase, because the projection is linear in them (a
partial-volume mixture of fingerprints is the same mixture of coefficient channels) and they
have no phase wrap; the arbitrary per-voxel receive phase is removed by the normalization
(`qsnet_jax.physics.channels.normalize_subspace`), not by the storage.
"""

from __future__ import annotations

import numpy as np


def temporal_basis(fingerprints, rank: int, *, unit_norm: bool = True):
    """(basis [T, k] complex64, energy captured) of fingerprints [M, T] (real or complex).

    The basis is the top-`rank` right singular vectors of the fingerprint matrix (rows scaled
    to unit norm first when `unit_norm`, as dictionary matching weighs every entry alike),
    each vector's sign/phase fixed so that its largest component is real and positive (a
    reproducible basis). Computed from the T x T Gram matrix in float64 (T ~ 1000 << M).
    """
    rows = np.asarray(fingerprints)
    if rows.ndim != 2:
        raise ValueError(f"fingerprints must be [M, T], got shape {rows.shape}")
    if not 0 < rank <= rows.shape[1]:
        raise ValueError(f"rank must be in 1..{rows.shape[1]}, got {rank}")
    rows = rows.astype(np.complex128)
    if unit_norm:
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = rows / np.where(norms > 0, norms, 1.0)
    gram = rows.conj().T @ rows  # F^H F [T, T]: its eigenvectors are F's right singular vectors
    eigvals, eigvecs = np.linalg.eigh(gram)
    order = np.argsort(eigvals)[::-1][:rank]
    basis = eigvecs[:, order]
    largest = basis[np.argmax(np.abs(basis), axis=0), np.arange(rank)]
    basis = basis * (np.abs(largest) / largest)
    energy = float(np.sum(np.maximum(eigvals[order], 0.0)) / np.sum(np.maximum(eigvals, 0.0)))
    return basis.astype(np.complex64), energy


def check_basis(basis, *, tolerance: float = 1e-3) -> np.ndarray:
    """The basis as complex64 [T, k]; ValueError unless it is 2-D, finite, orthonormal."""
    basis = np.asarray(basis)
    if basis.ndim != 2 or basis.shape[1] < 1 or basis.shape[0] < basis.shape[1]:
        raise ValueError(f"a temporal basis is [T, k] with T >= k >= 1, got shape "
                         f"{basis.shape}")
    if not np.all(np.isfinite(basis)):
        raise ValueError("the basis holds NaN or inf values")
    basis = basis.astype(np.complex64)
    gram = basis.conj().T.astype(np.complex128) @ basis
    error = float(np.max(np.abs(gram - np.eye(basis.shape[1]))))
    if error > tolerance:
        raise ValueError(f"the basis columns are not orthonormal (max |V^H V - I| = "
                         f"{error:.3g} > {tolerance})")
    return basis


def project(fingerprints, basis) -> np.ndarray:
    """Coefficients c = V^H f: fingerprints [..., T] -> complex64 [..., k]."""
    fingerprints = np.asarray(fingerprints)
    basis = np.asarray(basis)
    if fingerprints.shape[-1] != basis.shape[0]:
        raise ValueError(f"fingerprints have {fingerprints.shape[-1]} time points, the basis "
                         f"{basis.shape[0]}")
    return (fingerprints @ basis.conj()).astype(np.complex64)


def reconstruct(coefficients, basis) -> np.ndarray:
    """Fingerprints V c: coefficients [..., k] -> complex64 [..., T]."""
    coefficients = np.asarray(coefficients)
    basis = np.asarray(basis)
    if coefficients.shape[-1] != basis.shape[1]:
        raise ValueError(f"{coefficients.shape[-1]} coefficients for a rank-{basis.shape[1]} "
                         "basis")
    return (coefficients @ basis.T).astype(np.complex64)


def energy_captured(fingerprints, basis) -> float:
    """sum |V^H f|^2 / sum |f|^2 over fingerprints [..., T]: 1 when they lie in the span."""
    fingerprints = np.asarray(fingerprints)
    total = float(np.sum(np.abs(fingerprints.astype(np.complex128)) ** 2))
    if total == 0:
        raise ValueError("the fingerprints are all zero")
    kept = np.abs(fingerprints.astype(np.complex128) @ np.asarray(basis).conj()) ** 2
    return float(np.sum(kept) / total)


def coefficients_to_channels(coefficients) -> np.ndarray:
    """Complex [..., k] -> float32 [..., 2k]: real parts of c_1..c_k, then imaginary parts."""
    coefficients = np.asarray(coefficients)
    return np.concatenate([coefficients.real, np.imag(coefficients)], axis=-1).astype(
        np.float32)


def channels_to_coefficients(channels) -> np.ndarray:
    """Float [..., 2k] (real parts, then imaginary parts) -> complex64 [..., k]."""
    channels = np.asarray(channels)
    if channels.shape[-1] % 2:
        raise ValueError(f"subspace channels come in (real, imaginary) halves; got an odd "
                         f"count {channels.shape[-1]}")
    rank = channels.shape[-1] // 2
    return (channels[..., :rank] + 1j * channels[..., rank:]).astype(np.complex64)
