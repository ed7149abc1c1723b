"""The signal equations of qsnet_jax.physics.signal at values computed by hand.

Every expected number here comes from the formulas of docs/design.md section 5 written out
with `math` in this file (and the protocol table typed from it), never from the module.
"""

import math

import numpy as np
import pytest

from qsnet_jax.physics import signal

# docs/design.md section 5: (kind, TR, TE, TI, flip) per site and contrast.
DESIGN_PROTOCOLS = {
    "A": {"t1w": ("spin_echo", 500.0, 10.0, 0.0, 90.0),
          "t2w": ("spin_echo", 5000.0, 100.0, 0.0, 90.0),
          "t1flair": ("inversion_recovery", 2000.0, 10.0, 800.0, 90.0),
          "t2flair": ("inversion_recovery", 9000.0, 120.0, 2432.0, 90.0),
          "swi": ("gre", 30.0, 20.0, 0.0, 15.0)},
    "B": {"t1w": ("spin_echo", 650.0, 12.0, 0.0, 90.0),
          "t2w": ("spin_echo", 4000.0, 85.0, 0.0, 90.0),
          "t1flair": ("inversion_recovery", 2500.0, 12.0, 1000.0, 90.0),
          # the design rounds the CSF-null TI to 2600; the protocol uses the exact 2599 ms
          "t2flair": ("inversion_recovery", 11000.0, 100.0, 2599.0, 90.0),
          "swi": ("gre", 35.0, 25.0, 0.0, 15.0)},
}
# (PD, T1 ms, T2 ms): design section 5 tissue table, mid-range.
TISSUES = {"white_matter": (0.70, 820.0, 68.0), "gray_matter": (0.80, 1450.0, 90.0),
           "csf": (1.00, 4163.0, 1800.0), "necrosis": (0.92, 3000.0, 300.0)}
R2_PRIME_PER_MS = 0.006  # design: T2* from T2 with R2' about 6 /s


def hand_signal(kind, tr, te, ti, flip_deg, pd, t1, t2):
    if kind == "spin_echo":
        return pd * (1 - math.exp(-tr / t1)) * math.exp(-te / t2)
    if kind == "inversion_recovery":
        mz = 1 - 2 * math.exp(-ti / t1) + math.exp(-tr / t1)
        return pd * abs(mz) * math.exp(-te / t2)
    t2star = 1 / (1 / t2 + R2_PRIME_PER_MS)
    alpha, e1 = math.radians(flip_deg), math.exp(-tr / t1)
    return (pd * math.sin(alpha) * (1 - e1) / (1 - math.cos(alpha) * e1)
            * math.exp(-te / t2star))


@pytest.mark.parametrize("site", ["A", "B"])
def test_site_protocols_are_the_design_table(site):
    protocols = signal.site_protocols(site)
    assert sorted(protocols) == sorted(DESIGN_PROTOCOLS[site])
    for name, (kind, tr, te, ti, flip) in DESIGN_PROTOCOLS[site].items():
        p = protocols[name]
        assert (p.contrast, p.kind, p.tr_ms, p.te_ms) == (name, kind, tr, te), name
        if kind == "inversion_recovery":
            assert p.ti_ms == ti, name
        if kind == "gre":
            assert p.flip_deg == flip, name


@pytest.mark.parametrize("site", ["A", "B"])
@pytest.mark.parametrize("contrast", ["t1w", "t2w", "t1flair", "t2flair", "swi"])
def test_every_contrast_and_site_at_hand_computed_values(site, contrast):
    kind, tr, te, ti, flip = DESIGN_PROTOCOLS[site][contrast]
    protocol = signal.site_protocols(site)[contrast]
    for tissue, (pd, t1, t2) in TISSUES.items():
        expected = hand_signal(kind, tr, te, ti, flip, pd, t1, t2)
        got = float(signal.synthesize(protocol, pd, t1, t2))
        assert got == pytest.approx(expected, rel=2e-5, abs=1e-6), (tissue, got, expected)


def test_spin_echo_and_gre_one_number_each_by_hand():
    # white matter, site A T1w: 0.7 (1 - e^-0.609756) e^-0.147059
    assert float(signal.spin_echo(0.7, 820.0, 68.0, 500.0, 10.0)) == pytest.approx(
        0.7 * (1 - math.exp(-500 / 820)) * math.exp(-10 / 68), rel=1e-6)
    assert float(signal.spin_echo(0.7, 820.0, 68.0, 500.0, 10.0)) == pytest.approx(
        0.7 * 0.456514 * 0.863243, rel=1e-5)
    # GRE with T2* given explicitly: 1.0 sin(15) (1 - E1) / (1 - cos(15) E1) e^(-20/40)
    e1 = math.exp(-30 / 820)
    expected = math.sin(math.radians(15)) * (1 - e1) / (1 - math.cos(math.radians(15)) * e1)
    assert float(signal.gre_magnitude(1.0, 820.0, 40.0, 30.0, 20.0, 15.0)) == pytest.approx(
        expected * math.exp(-0.5), rel=1e-6)


def test_flair_is_the_magnitude_where_mz_is_negative_at_ti():
    # CSF in site A's T1-FLAIR (TI 800, TR 2000): Mz = 1 - 2 e^(-800/4163) + e^(-2000/4163)
    mz = 1 - 2 * math.exp(-800 / 4163) + math.exp(-2000 / 4163)
    assert mz == pytest.approx(-0.0319, abs=5e-4) and mz < 0
    expected = 1.0 * abs(mz) * math.exp(-10 / 1800)
    got = float(signal.inversion_recovery(1.0, 4163.0, 1800.0, 2000.0, 800.0, 10.0))
    assert got == pytest.approx(expected, rel=1e-4)
    assert got > 0.03
    # a T1 longer than the CSF null: negative at site A's T2-FLAIR TI, magnitude taken
    mz_long = 1 - 2 * math.exp(-2432 / 5000) + math.exp(-9000 / 5000)
    assert mz_long < -0.05
    got_long = float(signal.inversion_recovery(1.0, 5000.0, 2000.0, 9000.0, 2432.0, 120.0))
    assert got_long == pytest.approx(abs(mz_long) * math.exp(-120 / 2000), rel=1e-5)


@pytest.mark.parametrize("site", ["A", "B"])
def test_t2flair_ti_nulls_csf_by_hand(site):
    _, tr, _, ti, _ = DESIGN_PROTOCOLS[site]["t2flair"]
    assert round(4163 * math.log(2 / (1 + math.exp(-tr / 4163)))) == ti
    assert 1 - 2 * math.exp(-ti / 4163) + math.exp(-tr / 4163) == pytest.approx(0, abs=5e-4)


@pytest.mark.parametrize("site", ["A", "B"])
def test_every_contrast_is_non_negative_over_a_grid_of_tissues(site):
    t1, t2, pd = np.meshgrid(np.geomspace(100, 5000, 41), np.geomspace(10, 2500, 37),
                             np.array([0.0, 0.3, 1.0]), indexing="ij")
    for name, protocol in signal.site_protocols(site).items():
        values = np.asarray(signal.synthesize(protocol, pd, t1, t2))
        assert values.shape == t1.shape
        assert np.all(np.isfinite(values)), name
        assert values.min() >= 0.0, (name, values.min())
        assert np.all(values[..., 0] == 0.0), name  # PD 0 gives no signal
        assert values[..., 2].max() > 0.01, name
    # background voxels carry T = 0: finite, and 0 with PD 0
    for protocol in signal.site_protocols(site).values():
        assert float(signal.synthesize(protocol, 0.0, 0.0, 0.0)) == 0.0


@pytest.mark.parametrize("t1_ms, tr_ms", [(820.0, 30.0), (1450.0, 35.0), (300.0, 10.0)])
def test_gradient_echo_peaks_at_the_ernst_angle(t1_ms, tr_ms):
    e1 = math.exp(-tr_ms / t1_ms)
    ernst_deg = math.degrees(math.acos(e1))
    # 0.05 degree steps: coarse enough that float32 rounding cannot move the maximum
    flips = np.linspace(0.5, 90.0, 1791)
    values = np.asarray(signal.gre_magnitude(1.0, t1_ms, 50.0, tr_ms, 0.0, flips))
    assert flips[np.argmax(values)] == pytest.approx(ernst_deg, abs=0.05)
    # the maximum itself: sin(a)(1 - E1)/(1 - cos(a) E1) at cos(a) = E1 is sqrt((1-E1)/(1+E1))
    peak = float(signal.gre_magnitude(1.0, t1_ms, 50.0, tr_ms, 0.0, ernst_deg))
    assert peak == pytest.approx(math.sqrt((1 - e1) / (1 + e1)), rel=1e-5)
    assert values.max() <= peak * (1 + 1e-6)
