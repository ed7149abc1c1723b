"""EPG FISP-MRF simulation: single pulse, closed-form FISP steady state, an independent
NumPy EPG, broadcasting, and the default schedule."""

import numpy as np
import pytest

from qsnet_jax.physics.epg import simulate_fisp
from qsnet_jax.physics.mrf import MRFSchedule, fisp_schedule


def _constant_schedule(flip_deg, tr_ms, num_trs, te_ms=0.0):
    return MRFSchedule(flip_deg=np.full(num_trs, flip_deg), tr_ms=np.full(num_trs, tr_ms),
                       te_ms=te_ms, inversion=False)


def numpy_epg(schedule, t1_ms, t2_ms, b1=1.0, num_states=64):
    """A plain complex float64 EPG (Weigel 2015, RF about x, Hargreaves' F+/F-/Z layout),
    one tissue, written independently of the JAX code. Returns the signal i*F+(0) at TE
    (the RF-about-x signal turned by 90 degrees onto the real axis)."""
    state = np.zeros((3, num_states), complex)  # rows F+, F-, Z
    if schedule.inversion:
        e1 = np.exp(-schedule.inversion_delay_ms / t1_ms)
        state[2, 0] = -schedule.inversion_efficiency * e1 + 1 - e1
    else:
        state[2, 0] = 1.0
    signal = []
    for flip, tr in zip(np.deg2rad(schedule.flip_deg.astype(float)) * b1, schedule.tr_ms,
                        strict=True):
        c, s = np.cos(flip / 2), np.sin(flip / 2)
        rot = np.array([[c * c, s * s, -1j * np.sin(flip)],
                        [s * s, c * c, 1j * np.sin(flip)],
                        [-0.5j * np.sin(flip), 0.5j * np.sin(flip), np.cos(flip)]])
        state = rot @ state
        signal.append((1j * state[0, 0] * np.exp(-schedule.te_ms / t2_ms)).real)
        e1, e2 = np.exp(-tr / t1_ms), np.exp(-tr / t2_ms)
        state[:2] *= e2
        state[2] *= e1
        state[2, 0] += 1 - e1
        state[0] = np.concatenate([[0], state[0, :-1]])  # gradient: F+ up, F- down
        state[1] = np.concatenate([state[1, 1:], [0]])
        state[0, 0] = np.conj(state[1, 0])
    return np.array(signal)


def fisp_steady_state(flip_deg, tr_ms, t1_ms, t2_ms):
    """Closed-form FID steady state of unbalanced SSFP (FISP), averaged over the dephasing
    (Hänicke & Vogel, MRM 2003), right after the pulse, M0 = 1."""
    a = np.deg2rad(flip_deg)
    e1, e2 = np.exp(-tr_ms / t1_ms), np.exp(-tr_ms / t2_ms)
    p = 1 - e1 * np.cos(a) - e2 ** 2 * (e1 - np.cos(a))
    q = e2 * (1 - e1) * (1 + np.cos(a))
    r = (1 - e2 ** 2) / np.sqrt(p ** 2 - q ** 2)
    return np.tan(a / 2) * (1 - (e1 - np.cos(a)) * r)


def isochromat_steady_state(flip_deg, tr_ms, t1_ms, t2_ms, count=720):
    """Bloch steady state of `count` isochromats spread over 2 pi of dephasing, averaged."""
    a = np.deg2rad(flip_deg)
    e1, e2 = np.exp(-tr_ms / t1_ms), np.exp(-tr_ms / t2_ms)
    rot_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    total = np.zeros(3)
    for beta in np.arange(count) * 2 * np.pi / count:
        rot_z = np.array([[np.cos(beta), -np.sin(beta), 0], [np.sin(beta), np.cos(beta), 0],
                          [0, 0, 1]])
        step = rot_z @ np.diag([e2, e2, e1]) @ rot_y
        before = np.linalg.solve(np.eye(3) - step, rot_z @ np.array([0, 0, 1 - e1]))
        total += rot_y @ before
    return total[0] / count


@pytest.mark.parametrize("flip_deg", [10.0, 30.0, 90.0])
def test_single_pulse_on_relaxed_spins_gives_sin_alpha(flip_deg):
    schedule = _constant_schedule(flip_deg, 10.0, 1)
    signal = simulate_fisp(schedule, np.array([1000.0, 300.0]), 80.0, b1=[1.0, 0.8])
    expected = np.sin(np.deg2rad(flip_deg) * np.array([1.0, 0.8]))
    np.testing.assert_allclose(np.asarray(signal)[:, 0], expected, atol=1e-6)


def test_steady_state_matches_closed_form_fisp():
    cases = [(40.0, 10.0, 300.0, 50.0), (20.0, 12.0, 250.0, 30.0), (60.0, 8.0, 200.0, 20.0)]
    for flip, tr, t1, t2 in cases:
        schedule = _constant_schedule(flip, tr, 1200, te_ms=2.0)  # > 30 T1: steady
        last = float(np.asarray(simulate_fisp(schedule, t1, t2, num_states=96))[-1])
        closed = fisp_steady_state(flip, tr, t1, t2) * np.exp(-2.0 / t2)
        np.testing.assert_allclose(last, closed, rtol=2e-4)
    # The closed form itself against a brute-force isochromat average.
    np.testing.assert_allclose(fisp_steady_state(40.0, 10.0, 300.0, 50.0),
                               isochromat_steady_state(40.0, 10.0, 300.0, 50.0), rtol=1e-6)


def test_jax_epg_equals_numpy_epg_on_mrf_schedule():
    schedule = fisp_schedule(200)
    tissues = [(820.0, 68.0, 1.0), (1450.0, 90.0, 0.85), (4163.0, 1750.0, 1.1),
               (300.0, 20.0, 1.0)]
    t1, t2, b1 = (np.array(v) for v in zip(*tissues, strict=True))
    fingerprints = np.asarray(simulate_fisp(schedule, t1, t2, b1))
    assert fingerprints.dtype == np.float32 and fingerprints.shape == (4, 200)
    for row, (t1_ms, t2_ms, b1_scale) in zip(fingerprints, tissues, strict=True):
        every_state = numpy_epg(schedule, t1_ms, t2_ms, b1_scale, num_states=201)
        np.testing.assert_allclose(row, every_state, atol=1e-5)
    # Inverted train: the first echoes are negative, long T1 stays negative longer.
    assert np.all(fingerprints[:, 0] < 0)


def test_broadcasting_and_chunking():
    schedule = fisp_schedule(50)
    t1 = np.array([[800.0, 1400.0, 4000.0], [600.0, 900.0, 2000.0]])
    out = np.asarray(simulate_fisp(schedule, t1, 70.0, b1=np.array([1.0, 0.9, 1.1])))
    assert out.shape == (2, 3, 50)
    small_chunks = np.asarray(simulate_fisp(schedule, t1, 70.0, b1=np.array([1.0, 0.9, 1.1]),
                                            chunk=4))
    np.testing.assert_allclose(out, small_chunks, atol=1e-7)
    single = np.asarray(simulate_fisp(schedule, 900.0, 70.0, b1=0.9))
    np.testing.assert_allclose(out[1, 1], single, atol=1e-7)
    with pytest.raises(ValueError):
        simulate_fisp(schedule, 0.0, 70.0)


def test_default_schedule_shape_and_ranges():
    schedule = fisp_schedule()
    assert schedule.num_trs == 1000 and schedule.te_ms == 2.0
    assert schedule.inversion_efficiency == pytest.approx(0.95)
    lobes = np.split(schedule.flip_deg, 5)
    np.testing.assert_allclose([lobe.max() for lobe in lobes], [35, 43, 70, 45, 27], atol=0.1)
    assert 5.0 <= schedule.flip_deg.min() < 5.2  # floor, sampled at lobe mid-steps
    assert schedule.tr_ms.min() == pytest.approx(11.5) and schedule.tr_ms.max() == 14.5
    assert np.max(np.abs(np.diff(schedule.tr_ms))) < 0.2  # smooth
    np.testing.assert_array_equal(schedule.tr_ms, fisp_schedule().tr_ms)  # deterministic


# Long-T2 tissues at the worst case of each state-count band (T1 = 5000 ms, T2 at the band's
# upper edge), CSF, and B1 at both ends of the phantom's range.
LONG_T2 = [(5000.0, 300.0, 1.2), (5000.0, 600.0, 0.8), (5000.0, 1100.0, 1.2),
           (4163.0, 1750.0, 1.0), (5000.0, 2500.0, 0.8)]


def test_long_t2_fingerprints_within_1e4_of_an_all_states_numpy_epg():
    schedule = fisp_schedule(1000)
    t1, t2, b1 = (np.array(v) for v in zip(*LONG_T2, strict=True))
    adaptive = np.asarray(simulate_fisp(schedule, t1, t2, b1))
    truncated = np.asarray(simulate_fisp(schedule, t1, t2, b1, num_states=64))
    for row, cut, (t1_ms, t2_ms, b1_scale) in zip(adaptive, truncated, LONG_T2, strict=True):
        # Every state of the train: 1001 > N / 2, so nothing that reaches the readout is cut.
        exact = numpy_epg(schedule, t1_ms, t2_ms, b1_scale, num_states=schedule.num_trs + 1)
        peak = np.abs(exact).max()
        assert np.abs(row - exact).max() <= 1e-4 * peak, (t1_ms, t2_ms)
        if t2_ms > 1000:  # the old fixed 64 states were visibly off here
            assert np.abs(cut - exact).max() > 1e-3 * peak
