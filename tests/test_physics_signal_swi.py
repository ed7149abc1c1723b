"""Signal equations (T2-FLAIR CSF null) and the susceptibility / SWI chain."""

import numpy as np
import pytest
import scipy.optimize

from qsnet_jax.physics import signal
from qsnet_jax.physics import swi as swi_lib

N = 48  # 48^3 volumes at 1 mm
CENTER = (N - 1) / 2
X, Y, Z = np.meshgrid(*[np.arange(N) - CENTER] * 3, indexing="ij")
VEIN_CHI_PPM = 0.45  # deoxygenated venous blood relative to tissue
TE_MS = signal.site_protocols("A")["swi"].te_ms


# --- T2-FLAIR ---------------------------------------------------------------------------

@pytest.mark.parametrize("site", ["A", "B"])
def test_t2flair_nulls_csf(site):
    flair = signal.site_protocols(site)["t2flair"]
    csf = float(signal.synthesize(flair, 1.0, 4163.0, 1750.0))
    wm = float(signal.synthesize(flair, 0.70, 820.0, 68.0))
    assert csf < 0.02 * wm


@pytest.mark.parametrize("t1_ms, tr_ms", [(4163.0, 9000.0), (4163.0, 11000.0), (900.0, 5000.0)])
def test_csf_null_ti_is_the_root_of_the_ir_equation(t1_ms, tr_ms):
    def longitudinal(ti):
        return 1 - 2 * np.exp(-ti / t1_ms) + np.exp(-tr_ms / t1_ms)

    root = scipy.optimize.brentq(longitudinal, 1.0, tr_ms, xtol=1e-9)
    assert signal.csf_null_ti(t1_ms, tr_ms) == pytest.approx(root, rel=1e-9)
    assert root == pytest.approx(t1_ms * np.log(2 / (1 + np.exp(-tr_ms / t1_ms))), rel=1e-9)


# --- dipole field -------------------------------------------------------------------------

def test_dipole_kernel_values():
    kernel = swi_lib.dipole_kernel((8, 8, 8), 1.0)
    assert kernel[0, 0, 0] == 0.0
    assert kernel[0, 0, 1] == pytest.approx(1 / 3 - 1)  # k along B0
    assert kernel[1, 0, 0] == pytest.approx(1 / 3)  # k perpendicular to B0
    half = swi_lib.dipole_kernel((8, 8, 8), (1.0, 1.0, 2.0), real_fft=True)
    np.testing.assert_allclose(half, swi_lib.dipole_kernel((8, 8, 8), (1, 1, 2))[..., :5])
    tilted = swi_lib.dipole_kernel((8, 8, 8), 1.0, b0_direction=(1, 0, 0))
    assert tilted[1, 0, 0] == pytest.approx(-2 / 3)


def test_uniform_sphere_field_constant_inside_dipole_outside():
    radius = 8
    chi = np.where(X ** 2 + Y ** 2 + Z ** 2 <= radius ** 2, VEIN_CHI_PPM, 0.0)
    field = swi_lib.field_from_susceptibility(chi, 1.0)
    inside = X ** 2 + Y ** 2 + Z ** 2 <= (radius - 2) ** 2
    # Lorentz: a uniformly magnetized sphere shifts nothing inside (up to voxelization).
    assert np.abs(field[inside]).max() < 0.02 * VEIN_CHI_PPM
    # Outside: (chi/3) (a/r)^3 (3 cos^2 - 1), at r = 2a on and across the B0 axis.
    i = int(CENTER)
    r = 2 * radius
    along = (VEIN_CHI_PPM / 3) * (radius / (i + r - CENTER)) ** 3 * 2
    across = -(VEIN_CHI_PPM / 3) * (radius / (i + r - CENTER)) ** 3
    assert field[i, i, i + r] == pytest.approx(along, rel=0.05)
    assert field[i + r, i, i] == pytest.approx(across, rel=0.05)
    # A uniform object (the sphere as the object mask) has no local phase contrast beyond
    # voxelization ripple (< 0.15 rad, against -2.4 rad in a vein), and the SWI mask is ~1.
    phase = swi_lib.wrap_phase(swi_lib.phase_from_field(field, TE_MS))
    local = swi_lib.highpass_phase(phase, chi > 0)
    assert np.abs(local[inside]).max() < 0.15
    assert swi_lib.phase_mask(local[inside]).min() > 0.95


def test_long_cylinders_perpendicular_and_parallel_to_b0():
    perpendicular = np.where(Y ** 2 + Z ** 2 <= 4, VEIN_CHI_PPM, 0.0)  # along x
    parallel = np.where(X ** 2 + Y ** 2 <= 4, VEIN_CHI_PPM, 0.0)  # along z = B0
    i = int(CENTER)
    perp_field = swi_lib.field_from_susceptibility(perpendicular, 1.0)[i, i, i]
    par_field = swi_lib.field_from_susceptibility(parallel, 1.0)[i, i, i]
    assert perp_field == pytest.approx(-VEIN_CHI_PPM / 6, rel=0.05)
    assert par_field == pytest.approx(VEIN_CHI_PPM / 3, rel=0.05)
    # Right-handed phase: the parallel vein is negative, about -gamma B0 chi/3 TE = -2.4 rad.
    phase = swi_lib.phase_from_field(par_field, TE_MS)
    expected = -swi_lib.GYROMAGNETIC_RAD_PER_S_PER_T * 3.0 * par_field * 1e-6 * TE_MS * 1e-3
    assert float(phase) == pytest.approx(expected, rel=1e-5) and -2.6 < float(phase) < -2.2


def test_phase_mask_and_swi_values():
    phase = np.array([-np.pi, -np.pi / 2, 0.0, 1.0, np.pi])
    np.testing.assert_allclose(swi_lib.phase_mask(phase), [0, 0.5, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(swi_lib.phase_mask(-phase, negative=False), [0, 0.5, 1, 1, 1],
                               atol=1e-6)
    np.testing.assert_allclose(swi_lib.swi(np.full(5, 2.0), phase), 2 * np.array(
        [0, 0.5, 1, 1, 1]) ** 4, atol=1e-6)


# --- SWI of a vein in white matter --------------------------------------------------------

def _white_matter_block_with_vein(vein_mask):
    """GRE magnitude (site A SWI protocol) of a WM block holding a vein; susceptibility."""
    block = (np.abs(X) < 20) & (np.abs(Y) < 20) & (np.abs(Z) < 20)
    protocol = signal.site_protocols("A")["swi"]
    wm = float(signal.synthesize(protocol, 0.70, 820.0, 68.0))
    blood = float(signal.synthesize(protocol, 0.90, 1650.0, 60.0))
    magnitude = np.where(block, np.where(vein_mask, blood, wm), 0.0).astype(np.float32)
    chi = np.where(vein_mask & block, VEIN_CHI_PPM, 0.0)
    return magnitude, chi, block, wm


@pytest.mark.parametrize("orientation", ["perpendicular", "parallel"])
def test_vein_is_darker_than_white_matter_in_swi(orientation):
    radial = (Y ** 2 + Z ** 2) if orientation == "perpendicular" else (X ** 2 + Y ** 2)
    vein = radial <= 1.5 ** 2
    magnitude, chi, block, wm = _white_matter_block_with_vein(vein)
    image, local = swi_lib.swi_from_susceptibility(magnitude, chi, 1.0, TE_MS, mask=block)
    inner = (np.abs(X) < 12) & (np.abs(Y) < 12) & (np.abs(Z) < 12)  # away from block edges
    far_wm = inner & (radial >= 8 ** 2)
    # Far from the vein the phase is flat and the SWI equals the WM magnitude.
    assert np.median(image[far_wm]) == pytest.approx(wm, rel=0.02)
    if orientation == "parallel":
        # Inside a vein along B0 the local phase is strongly negative (-2.4 rad): the vein
        # is suppressed far below its GRE magnitude.
        assert np.median(local[inner & vein]) < -1.5
        assert image[inner & vein].mean() < 0.1 * magnitude[inner & vein].mean() < 0.1 * wm
    else:
        # Perpendicular: positive inside (-chi/6 field), negative dipole lobes along B0 that
        # the mask darkens, so the vein with its 1 mm rim is dark.
        assert np.median(local[inner & vein]) > 0.5
        near_vein = inner & (radial <= 2.5 ** 2)
        lobes = near_vein & (np.abs(Z) > np.abs(Y)) & ~vein
        assert np.median(local[lobes]) < -0.5
        assert image[near_vein].mean() < 0.8 * wm
        assert image[near_vein].mean() < magnitude[near_vein].mean() - 0.1 * wm  # phase adds


def test_highpass_removes_background_field_of_uniform_block():
    block = (np.abs(X) < 16) & (np.abs(Y) < 16) & (np.abs(Z) < 16)
    field = swi_lib.field_from_susceptibility(np.where(block, -0.3, 0.0), 1.0)
    phase = swi_lib.phase_from_field(field, TE_MS)
    local = swi_lib.highpass_phase(swi_lib.wrap_phase(phase), block)
    core = (np.abs(X) < 9) & (np.abs(Y) < 9) & (np.abs(Z) < 9)
    raw_spread = np.ptp(phase[core])
    assert raw_spread > 0.5  # a uniform block is not a sphere: its field varies inside
    assert np.abs(local[core]).max() < 0.1 * raw_spread
    assert np.all(local[~block] == 0.0)
