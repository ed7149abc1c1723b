"""Sequence simulation (qsnet_jax.physics.sequences): the TSE echo train against the CPMG
closed form and an independent NumPy EPG / isochromat simulation, MPRAGE against its closed
form, the MT two-pool steady state against a linear solve, k-space ordering, site protocols."""

import numpy as np
import pytest

from qsnet_jax.physics import sequences, signal

T1 = np.array([820.0, 1450.0, 4163.0])  # WM, GM, CSF at 3 T (docs/design.md section 5)
T2 = np.array([68.0, 90.0, 1750.0])


def _rf(alpha, phase):
    """Weigel 2015 eq. 15: the EPG rotation matrix for flip `alpha` about the axis at `phase`."""
    c2, s2, sa = np.cos(alpha / 2) ** 2, np.sin(alpha / 2) ** 2, np.sin(alpha)
    e = np.exp(1j * phase)
    return np.array([[c2, e * e * s2, -1j * e * sa],
                     [np.conj(e * e) * s2, c2, 1j * np.conj(e) * sa],
                     [-0.5j * np.conj(e) * sa, 0.5j * e * sa, np.cos(alpha)]])


def numpy_tse(t1, t2, b1, *, esp, etl, refocus_deg, tr=None, ti=None, inversion_deg=180.0,
              trains=1, num_states=80):
    """Float64 EPG of `trains` repeated (inversion +) CPMG trains of one tissue, states as a
    3 x K matrix (F+, F-, Z). Returns the complex echoes of the last train."""
    mz = 1.0
    for _ in range(trains):
        if ti is not None:
            mz *= np.cos(np.deg2rad(inversion_deg) * b1)
            e = np.exp(-ti / t1)
            mz = mz * e + 1 - e
        state = np.zeros((3, num_states), complex)
        state[2, 0] = mz
        state = _rf(np.deg2rad(90.0) * b1, np.pi / 2) @ state
        echoes = []
        for _ in range(etl):
            for half in range(2):
                state[:2] *= np.exp(-esp / 2 / t2)
                state[2] *= np.exp(-esp / 2 / t1)
                state[2, 0] += 1 - np.exp(-esp / 2 / t1)
                state[0] = np.roll(state[0], 1)
                state[1] = np.roll(state[1], -1)
                state[1, -1] = 0
                state[0, 0] = np.conj(state[1, 0])
                if half == 0:
                    state = _rf(np.deg2rad(refocus_deg) * b1, 0.0) @ state
            echoes.append(state[0, 0])
        if tr is not None:  # spoil, recover to the next inversion / excitation
            rest = tr - etl * esp - (ti or 0.0)
            mz = state[2, 0].real * np.exp(-rest / t1) + 1 - np.exp(-rest / t1)
    return np.array(echoes)


def isochromat_tse(t1, t2, *, esp, etl, refocus_deg, count=256):
    """Bloch simulation of `count` isochromats spread over 2 pi of crusher dephasing per half
    echo spacing, excitation about y, refocusing about x; the echo is their mean."""
    phases = 2 * np.pi * np.arange(count) / count
    m = np.zeros((count, 3))
    m[:, 2] = 1.0
    a = np.deg2rad(refocus_deg)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    m = m @ np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]]).T  # 90 about y: z -> x
    echoes = []
    for _ in range(etl):
        for half in range(2):
            e1, e2 = np.exp(-esp / 2 / t1), np.exp(-esp / 2 / t2)
            m = m * [e2, e2, e1] + [0, 0, 1 - e1]
            c, s = np.cos(phases), np.sin(phases)
            m = np.stack([c * m[:, 0] - s * m[:, 1], s * m[:, 0] + c * m[:, 1], m[:, 2]], 1)
            if half == 0:
                m = m @ rot_x.T
        echoes.append(np.mean(m[:, 0] + 1j * m[:, 1]))
    return np.array(echoes)


def test_tse_at_180_is_pure_t2_decay():
    esp, etl = 10.0, 16
    echoes = np.asarray(sequences.tse_echo_train(T1, T2, esp_ms=esp, etl=etl,
                                                 refocus_deg=180.0))
    assert echoes.dtype == np.float32 and echoes.shape == (3, etl)
    n = np.arange(1, etl + 1)
    np.testing.assert_allclose(echoes, np.exp(-n * esp / T2[:, None]), rtol=2e-6, atol=1e-7)


def test_tse_at_120_matches_numpy_epg_and_isochromats():
    kwargs = dict(esp_ms=9.0, etl=12, refocus_deg=120.0)
    b1 = np.array([1.0, 0.85, 1.15])
    echoes = np.asarray(sequences.tse_echo_train(T1, T2, b1, **kwargs))
    for row, t1, t2, scale in zip(echoes, T1, T2, b1, strict=True):
        reference = numpy_tse(t1, t2, scale, esp=9.0, etl=12, refocus_deg=120.0)
        np.testing.assert_allclose(row, reference.real, atol=2e-6)
        # The dropped quadrature part is tiny (T1 recovery during the train only).
        assert np.max(np.abs(reference.imag)) < 1e-3 * abs(reference[0])
    # Stimulated echoes: the second echo is brighter than the first (the classic
    # alpha < 180 pattern), and from the second echo on the train decays slower than
    # exp(-t/T2) (the apparent T2 is longer: Lebel & Wilman 2010) for the tissues whose T2
    # is short against the train; CSF's echoes still oscillate at echo 12.
    assert np.all(echoes[:, 1] > echoes[:, 0])
    assert np.all(echoes[:2, -1] / echoes[:2, 1] > np.exp(-10 * 9.0 / T2[:2]))
    iso = isochromat_tse(T1[0], T2[0], esp=9.0, etl=12, refocus_deg=120.0)
    np.testing.assert_allclose(echoes[0], iso.real, atol=2e-6)


def test_tse_steady_state_and_flair_inversion_match_repeated_trains():
    cases = [dict(tr=2500.0), dict(tr=9000.0, ti=2432.0), dict(tr=2000.0, ti=800.0)]
    b1 = np.array([1.0, 0.8, 1.2])
    for case in cases:
        got = np.asarray(sequences.tse_echo_train(
            T1, T2, b1, esp_ms=12.0, etl=8, refocus_deg=140.0, tr_ms=case["tr"],
            ti_ms=case.get("ti")))
        for row, t1, t2, scale in zip(got, T1, T2, b1, strict=True):
            ref = numpy_tse(t1, t2, scale, esp=12.0, etl=8, refocus_deg=140.0,
                            tr=case["tr"], ti=case.get("ti"), trains=12)
            np.testing.assert_allclose(row, ref.real, atol=1e-5, err_msg=str(case))
    # An imperfect inversion (B1 0.8) leaves CSF above its null in a CSF-nulled FLAIR.
    flair = np.asarray(sequences.tse_echo_train(
        4163.0, 1750.0, np.array([1.0, 0.8]), esp_ms=12.0, etl=8, refocus_deg=140.0,
        tr_ms=9000.0, ti_ms=2432.0))
    assert np.abs(flair[0]).max() < 0.02 and np.abs(flair[1]).max() > 5 * np.abs(flair[0]).max()


def test_tse_rejects_impossible_timing():
    with pytest.raises(ValueError, match="TR"):
        sequences.tse_echo_train(T1, T2, esp_ms=10.0, etl=20, refocus_deg=150.0, tr_ms=150.0)


def _mprage_closed_form(t1, b1, flip, tr_r, n, ti, td, inv=180.0):
    """Steady-state MPRAGE (Deichmann 2000 style): geometric recovery towards the readout
    steady state inside the shot, the shot as an affine map solved for its fixed point."""
    a = np.deg2rad(flip) * b1
    c = np.cos(np.deg2rad(inv) * b1)
    e_ti, e_r, e_td = np.exp(-ti / t1), np.exp(-tr_r / t1), np.exp(-td / t1)
    beta = np.cos(a) * e_r
    m_inf = (1 - e_r) / (1 - beta)
    # m = ((c m e_ti + 1 - e_ti - m_inf) beta^n + m_inf) e_td + 1 - e_td
    slope = c * e_ti * beta ** n * e_td
    offset = ((1 - e_ti - m_inf) * beta ** n + m_inf) * e_td + 1 - e_td
    m = offset / (1 - slope)
    first = c * m * e_ti + 1 - e_ti
    k = np.arange(n)
    return np.sin(a) * (m_inf + (first - m_inf) * beta ** k)


def test_mprage_matches_closed_form_and_explicit_shots():
    b1 = np.array([1.0, 0.9, 1.1])
    kwargs = dict(flip_deg=9.0, readout_tr_ms=7.0, num_readouts=64, ti_ms=500.0, td_ms=600.0)
    got = np.asarray(sequences.mprage_readouts(T1, b1, **kwargs))
    assert got.shape == (3, 64)
    for row, t1, scale in zip(got, T1, b1, strict=True):
        np.testing.assert_allclose(row, _mprage_closed_form(t1, scale, 9.0, 7.0, 64, 500.0,
                                                            600.0), atol=2e-6)
    # One readout per shot: the textbook IR-GRE with a single pulse.
    single = np.asarray(sequences.mprage_readouts(T1, flip_deg=30.0, readout_tr_ms=5.0,
                                                  num_readouts=1, ti_ms=700.0, td_ms=1000.0))
    e_ti, e_rest = np.exp(-700.0 / T1), np.exp(-1005.0 / T1)
    cos_a = np.cos(np.deg2rad(30.0))
    mz = (1 - e_ti - e_ti * (1 - e_rest)) / (1 + e_ti * cos_a * e_rest)
    np.testing.assert_allclose(single[:, 0], 0.5 * mz, atol=2e-6)
    # The third shot from relaxed spins, simulated pulse by pulse here.
    third = np.asarray(sequences.mprage_readouts(T1, num_shots=3, **kwargs))
    for row, t1 in zip(third, T1, strict=True):
        m, out = 1.0, None
        for _ in range(3):
            m = -m * np.exp(-500.0 / t1) + 1 - np.exp(-500.0 / t1)
            out = []
            for _ in range(64):
                out.append(m * np.sin(np.deg2rad(9.0)))
                m = m * np.cos(np.deg2rad(9.0)) * np.exp(-7.0 / t1) + 1 - np.exp(-7.0 / t1)
            m = m * np.exp(-600.0 / t1) + 1 - np.exp(-600.0 / t1)
        np.testing.assert_allclose(row, out, atol=2e-6)


def test_mt_saturation_matches_two_pool_linear_solve():
    f = np.array([0.0, 0.057, 0.136, 0.136])
    w = np.array([2.0, 2.0, 2.0, 0.0])
    t1 = np.array([4163.0, 1450.0, 820.0, 820.0])
    got = np.asarray(sequences.mt_saturation(f, w, t1))
    for value, frac, rate, t1_ms in zip(got, f, w, t1, strict=True):
        # d/dt [Mf, Mb] = A [Mf, Mb] + b (Bloch-McConnell without RF on the free pool).
        m0b = frac / (1 - frac)
        k = sequences.EXCHANGE_RATE_PER_S
        r1f, r1b = 1000.0 / t1_ms, sequences.BOUND_R1_PER_S
        a = np.array([[-r1f - k * m0b, k], [k * m0b, -r1b - k - rate]])
        steady = np.linalg.solve(a, -np.array([r1f, r1b * m0b]))
        np.testing.assert_allclose(value, steady[0], rtol=1e-5)
    assert got[0] == pytest.approx(1.0) and got[3] == pytest.approx(1.0)
    assert 0.7 < got[2] < got[1] < 0.95  # WM saturates more than GM (docs/design.md 8)


def test_kspace_echo_index_orderings():
    linear = sequences.kspace_echo_index(64, 16, 9)
    assert linear[32] == 9 and np.all(np.bincount(linear, minlength=16) == 4)
    assert np.all(np.diff(linear[linear != 0]) >= 0)  # monotone apart from the wrap
    centric = sequences.kspace_echo_index(64, 4, 0, "centric")
    distance = np.abs(np.arange(64) - 32)
    assert centric[32] == 0 and np.all(np.bincount(centric) == 16)
    assert distance[centric == 0].max() < distance[centric == 3].min()
    with pytest.raises(ValueError):
        sequences.kspace_echo_index(64, 4, 5)


def test_site_protocols_sequences_are_consistent():
    for site in ("A", "B"):
        for name, protocol in signal.site_protocols(site).items():
            seq = protocol.sequence
            if isinstance(seq, sequences.TSEParams):
                assert seq.effective_te_ms == pytest.approx(protocol.te_ms), (site, name)
                assert seq.etl * seq.esp_ms + protocol.ti_ms < protocol.tr_ms
            elif isinstance(seq, sequences.MPRAGEParams):
                assert seq.ti_first_ms > 0 and seq.td_ms > 0
    kinds = {site: type(signal.site_protocols(site)["t1w"].sequence) for site in "AB"}
    assert kinds == {"A": sequences.MPRAGEParams, "B": sequences.TSEParams}
    refocus = {site: signal.site_protocols(site)["t2w"].sequence.refocus_deg for site in "AB"}
    assert refocus["A"] != refocus["B"] and max(refocus.values()) < 180.0
    # simulate_protocol: PD and MT scale the echoes; the centre echo is the TE_eff echo.
    t2w = signal.site_protocols("A")["t2w"]
    echoes = np.asarray(sequences.simulate_protocol(t2w, 0.7, 820.0, 68.0, 1.0, 0.136))
    bare = np.asarray(sequences.tse_echo_train(820.0, 68.0, esp_ms=10.0, etl=16,
                                               refocus_deg=150.0, tr_ms=5000.0))
    mt = float(sequences.mt_saturation(0.136, 2.5, 820.0))
    np.testing.assert_allclose(echoes, 0.7 * mt * bare, rtol=1e-6)
    centre = float(sequences.centre_signal(t2w, 0.7, 820.0, 68.0, 1.0, 0.136))
    assert centre == pytest.approx(float(echoes[9]))
    with pytest.raises(ValueError, match="swi"):
        sequences.simulate_protocol(signal.site_protocols("A")["swi"], 1.0, 800.0, 60.0)
