"""Susceptibility-weighted imaging: dipole field, phase, homodyne high-pass, SWI mask.

Forward model (Salomir 2003, Marques & Bowtell 2005): the relative field shift of a
susceptibility distribution chi (ppm) is a convolution with the unit dipole, in k-space

    field(k) = D(k) chi(k),   D(k) = 1/3 - (k . b0)^2 / |k|^2,   D(0) = 0,

which includes the Lorentz-sphere correction: inside a uniformly magnetized sphere the shift
is 0, inside a long cylinder it is -chi/6 perpendicular to B0 and +chi/3 parallel to it.

Sign convention (stated once, used everywhere here): right-handed precession, so the phase
is phi = -gamma B0 field TE (Haacke et al., MRM 2004). A paramagnetic vein running along B0
(field +chi/3) then has negative phase, and so do the two dipole lobes along B0 of a vein
perpendicular to B0 (whose inside is positive, by the -chi/6 above). The SWI mask therefore
suppresses negative phase: f = 1 for phi >= 0, (pi + phi)/pi for -pi < phi < 0.
Fields in ppm, times in ms, B0 in tesla, phases in radians, voxel sizes in mm.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.ndimage

GYROMAGNETIC_RAD_PER_S_PER_T = 2 * np.pi * 42.577478e6  # proton
# Gaussian width of the homodyne low-pass: keeps vein-sized (< 4 mm) phase, removes the
# smooth background field (about a 1/8 k-space Hanning filter at 1 mm, 256 matrix).
DEFAULT_HIGHPASS_SIGMA_MM = 4.0


def dipole_kernel(shape, voxel_size_mm, b0_direction=(0, 0, 1), *, real_fft=False):
    """The k-space unit dipole D = 1/3 - (k . b0)^2 / |k|^2 (D(0) = 0), float32.

    FFT order (no shift). With real_fft the last axis is the half spectrum of rfftn.
    """
    voxel = np.broadcast_to(np.asarray(voxel_size_mm, float), (len(shape),))
    b0 = np.asarray(b0_direction, float)
    b0 = b0 / np.linalg.norm(b0)
    freqs = [np.fft.fftfreq(n, d) for n, d in zip(shape[:-1], voxel[:-1], strict=True)]
    last = np.fft.rfftfreq if real_fft else np.fft.fftfreq
    freqs.append(last(shape[-1], voxel[-1]))
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    k_dot_b0 = sum(g * c for g, c in zip(grids, b0, strict=True))
    k_squared = sum(g * g for g in grids)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = 1.0 / 3.0 - k_dot_b0 ** 2 / k_squared
    return np.nan_to_num(kernel, nan=0.0).astype(np.float32)  # the k = 0 term is 0


def field_from_susceptibility(chi_ppm, voxel_size_mm, b0_direction=(0, 0, 1), *,
                              pad_factor=2.0):
    """Relative field shift (ppm) of a 3-D susceptibility map (ppm), float32.

    The volume is zero-padded to `pad_factor` times its size on every axis before the FFT
    convolution, so that the periodic images of the object barely reach back into it.
    """
    chi = np.asarray(chi_ppm, np.float32)
    if chi.ndim != 3:
        raise ValueError(f"susceptibility map must be 3-D, got shape {chi.shape}")
    padded = tuple(int(np.ceil(n * pad_factor)) for n in chi.shape)
    kernel = dipole_kernel(padded, voxel_size_mm, b0_direction, real_fft=True)
    spectrum = scipy.fft.rfftn(chi, s=padded) * kernel
    field = scipy.fft.irfftn(spectrum, s=padded)
    return field[tuple(slice(0, n) for n in chi.shape)].astype(np.float32)


def phase_from_field(field_ppm, te_ms, b0_tesla=3.0):
    """Phase (rad, unwrapped) at echo time TE: -gamma B0 field TE (right-handed, see top)."""
    return (-GYROMAGNETIC_RAD_PER_S_PER_T * b0_tesla * 1e-6 * 1e-3 * te_ms
            * np.asarray(field_ppm, np.float32)).astype(np.float32)


def wrap_phase(phase_rad):
    """Wrap to (-pi, pi], as a scanner reports it."""
    return np.angle(np.exp(1j * np.asarray(phase_rad))).astype(np.float32)


def highpass_phase(phase_rad, mask=None, *, sigma_mm=DEFAULT_HIGHPASS_SIGMA_MM,
                   voxel_size_mm=1.0, magnitude=None):
    """Homodyne high-pass: the phase of z / lowpass(z), z = magnitude exp(i phase) mask.

    Works on wrapped phase (the complex division removes the wraps of the smooth background).
    The low-pass is a Gaussian of `sigma_mm`. Returns the local phase (rad, float32), 0
    outside the mask.
    """
    phase = np.asarray(phase_rad, np.float32)
    weight = np.ones_like(phase) if magnitude is None else np.asarray(magnitude, np.float32)
    if mask is not None:
        weight = weight * (np.asarray(mask) > 0)
    z = weight * np.exp(1j * phase)
    sigma_vox = sigma_mm / np.broadcast_to(np.asarray(voxel_size_mm, float), (phase.ndim,))
    low = (scipy.ndimage.gaussian_filter(z.real, sigma_vox, mode="nearest")
           + 1j * scipy.ndimage.gaussian_filter(z.imag, sigma_vox, mode="nearest"))
    local = np.angle(z * np.conj(low))
    return np.where(weight > 0, local, 0.0).astype(np.float32)


def phase_mask(local_phase, *, negative=True):
    """SWI phase mask f in [0, 1] (Haacke 2004).

    negative=True (right-handed convention, paramagnetic veins negative): f = 1 for
    phase >= 0 and (pi + phase) / pi below. negative=False mirrors it for left-handed data.
    """
    phase = np.asarray(local_phase, np.float32)
    if not negative:
        phase = -phase
    return np.clip((np.pi + np.minimum(phase, 0.0)) / np.pi, 0.0, 1.0).astype(np.float32)


def swi(magnitude, local_phase, *, power=4, negative=True):
    """SWI image: magnitude * f**power (power 4 is Haacke's usual choice)."""
    return (np.asarray(magnitude, np.float32)
            * phase_mask(local_phase, negative=negative) ** power).astype(np.float32)


def swi_from_susceptibility(magnitude, chi_ppm, voxel_size_mm, te_ms, *, mask=None,
                            b0_tesla=3.0, b0_direction=(0, 0, 1),
                            sigma_mm=DEFAULT_HIGHPASS_SIGMA_MM, power=4):
    """The whole chain: chi -> field -> wrapped phase -> local phase -> SWI.

    Returns (swi image, local phase), float32, the shape of `magnitude`.
    """
    field = field_from_susceptibility(chi_ppm, voxel_size_mm, b0_direction)
    phase = wrap_phase(phase_from_field(field, te_ms, b0_tesla))
    local = highpass_phase(phase, mask, sigma_mm=sigma_mm, voxel_size_mm=voxel_size_mm,
                           magnitude=magnitude)
    return swi(magnitude, local, power=power), local
