"""Sequence-level simulation of the weighted contrasts (docs/design.md section 8).

The textbook equations in `qsnet_jax.physics.signal` give one number per voxel from (PD, T1,
T2) and the nominal TR/TE/TI. A scanner does something else: a turbo spin echo acquires each
k-space line at a different echo of a train whose refocusing pulses are below 180 degrees
(stimulated echoes) and scaled by the local transmit field B1+, an MPRAGE reads a whole
inversion-recovery curve per shot, and the off-resonant pulses of the other slices saturate
the macromolecular pool (magnetization transfer). This module simulates those:

- `tse_echo_train`: turbo spin echo (T2w, FLAIR, spin-echo T1w) by an extended phase graph
  (Weigel, JMRI 2015) kept exact for the train (2 ETL + 2 states), CPMG phase, every angle
  scaled by B1, T1 recovery between trains and an optional inversion, in exact steady state.
- `mprage_readouts`: inversion-prepared spoiled 3D gradient echo, shot by shot, steady state.
- `mt_saturation`: the free-pool signal factor of a two-pool (binary spin bath) steady state.
- `kspace_echo_index`: which echo acquires which phase-encode line (linear / centric).

Times in ms, angles in degrees, B1 a relative scale of every RF angle, M0 = 1.
Steady state: each simulated cycle is an affine map of the longitudinal magnetization at its
start (the EPG and the Bloch recovery are linear in the magnetization plus a recovery term),
so the state repeated over many TRs is the fixed point m = a m + b of that map, computed
exactly from two runs of one cycle (initial Mz = 1 and Mz = 0) instead of simulating many.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------
# Turbo spin echo by EPG


def _rotate(fp, fm, z, alpha, phase):
    """RF rotation by `alpha` (rad, per voxel [V, 1]) about the axis at `phase` (rad, a Python
    float) from x, applied to every state (Weigel 2015 eq. 15). States are complex [V, K]."""
    c2 = (jnp.cos(alpha / 2) ** 2).astype(jnp.complex64)
    s2 = (jnp.sin(alpha / 2) ** 2).astype(jnp.complex64)
    sa = jnp.sin(alpha).astype(jnp.complex64)
    ca = jnp.cos(alpha).astype(jnp.complex64)
    e1, e2 = complex(np.exp(1j * phase)), complex(np.exp(2j * phase))
    return (c2 * fp + e2 * s2 * fm - 1j * e1 * sa * z,
            e2.conjugate() * s2 * fp + c2 * fm + 1j * e1.conjugate() * sa * z,
            -0.5j * e1.conjugate() * sa * fp + 0.5j * e1 * sa * fm + ca * z)


def _relax_shift(fp, fm, z, e1, e2):
    """Relax over one half echo spacing, then dephase by one state (the crusher)."""
    fp, fm = fp * e2, fm * e2
    z = (z * e1).at[:, 0].add(1.0 - e1[:, 0])
    fp_new = jnp.concatenate([jnp.conj(fm[:, 1:2]), fp[:, :-1]], axis=1)
    fm_new = jnp.concatenate([jnp.conj(fp_new[:, 0:1]), fm[:, 2:], jnp.zeros_like(fm[:, :1])],
                             axis=1)
    return fp_new, fm_new, z


# Excitation about y puts the magnetization on +x (real, positive F+); refocusing about x
# keeps it on the refocusing axis: the CPMG condition, under which echo amplitudes are
# insensitive to the sign of the refocusing error.
_EXCITE_PHASE = np.pi / 2
_REFOCUS_PHASE = 0.0


def _train(m0, t1, t2, b1, *, esp_ms, etl, refocus_deg, excite_deg):
    """One echo train from Mz = m0 [V] at the excitation: (CPMG echoes [V, etl] complex,
    Z(0) at the last echo [V])."""
    num_states = 2 * etl + 2  # two dephasing steps per echo spacing: exact for the train
    count = m0.shape[0]
    zeros = jnp.zeros((count, num_states), jnp.complex64)
    z = zeros.at[:, 0].set(m0.astype(jnp.complex64))
    fp, fm, z = _rotate(zeros, zeros, z, jnp.deg2rad(excite_deg) * b1[:, None], _EXCITE_PHASE)
    e1 = jnp.exp(-0.5 * esp_ms / t1)[:, None]
    e2 = jnp.exp(-0.5 * esp_ms / t2)[:, None].astype(jnp.complex64)
    refocus = jnp.deg2rad(refocus_deg) * b1[:, None]

    def echo(state, _):
        fp, fm, z = _relax_shift(*state, e1, e2)
        fp, fm, z = _rotate(fp, fm, z, refocus, _REFOCUS_PHASE)
        fp, fm, z = _relax_shift(fp, fm, z, e1, e2)
        return (fp, fm, z), fp[:, 0]

    (_, _, z), echoes = jax.lax.scan(echo, (fp, fm, z), None, length=etl)
    return echoes.T, z[:, 0].real


@functools.partial(jax.jit, static_argnames=(
    "esp_ms", "etl", "refocus_deg", "excite_deg", "tr_ms", "ti_ms", "inversion_deg",
    "inversion_efficiency"))
def tse_echo_train(t1_ms, t2_ms, b1=1.0, *, esp_ms: float, etl: int, refocus_deg: float,
                   excite_deg: float = 90.0, tr_ms: float | None = None,
                   ti_ms: float | None = None, inversion_deg: float = 180.0,
                   inversion_efficiency: float = 1.0):
    """Echo amplitudes [*S, etl] of a (inversion-prepared) turbo spin echo, PD = 1.

    Echo n (0-based) is at (n + 1) esp_ms after the excitation; its value is the transverse
    magnetization along the CPMG axis (signed: negative when Mz < 0 at the excitation). The
    quadrature part, made only by T1 recovery during the train, is dropped. Every RF angle is
    scaled by b1. Steady state over repeated TRs when `tr_ms` is given (transverse and Z(k>0)
    spoiled after the last echo, Z(0) recovers); fully relaxed spins when None. `ti_ms`: a
    non-adiabatic inversion (Mz -> inversion_efficiency cos(inversion_deg b1) Mz) TI before
    the excitation (FLAIR). t1_ms, t2_ms, b1 broadcast to the leading shape S.
    """
    t1, t2, b1 = (jnp.asarray(a, jnp.float32) for a in (t1_ms, t2_ms, b1))
    shape = jnp.broadcast_shapes(t1.shape, t2.shape, b1.shape)
    t1, t2, b1 = (jnp.broadcast_to(a, shape).reshape(-1) for a in (t1, t2, b1))
    t1, t2 = jnp.maximum(t1, 1e-3), jnp.maximum(t2, 1e-3)  # background T = 0 stays finite
    train_ms = etl * esp_ms
    _check_timing(tr_ms, ti_ms, train_ms)
    run = functools.partial(_train, t1=t1, t2=t2, b1=b1, esp_ms=esp_ms, etl=etl,
                            refocus_deg=refocus_deg, excite_deg=excite_deg)
    # Affine in the initial Mz: echoes = m u + v, Mz at the end = m a + b.
    ones = jnp.ones_like(t1)
    echoes_1, end_1 = run(ones)
    echoes_0, end_0 = run(jnp.zeros_like(t1))
    u, v = echoes_1 - echoes_0, echoes_0
    a, b = end_1 - end_0, end_0
    inversion = (inversion_efficiency * jnp.cos(jnp.deg2rad(inversion_deg) * b1)
                 if ti_ms is not None else None)
    m = _excitation_mz(t1, a, b, inversion, tr_ms, ti_ms, train_ms)
    echoes = (m[:, None] * u + v).real
    return echoes.reshape(shape + (etl,)).astype(jnp.float32)


def _check_timing(tr_ms, ti_ms, train_ms):
    needed = train_ms + (ti_ms or 0.0)
    if tr_ms is not None and tr_ms <= needed:
        raise ValueError(f"TR {tr_ms} ms must exceed TI + ETL x ESP = {needed} ms")
    if ti_ms is not None and ti_ms < 0:
        raise ValueError(f"TI must be >= 0 ms, got {ti_ms}")


def _excitation_mz(t1, a, b, inversion, tr_ms, ti_ms, train_ms):
    """Mz at the excitation in steady state; a, b: the train's Mz_end = a m + b."""
    def recover(m, ms):
        e = jnp.exp(-ms / t1)
        return m * e + 1.0 - e, e

    if tr_ms is None:  # one train from fully relaxed spins
        return jnp.ones_like(t1) if inversion is None else recover(inversion, ti_ms)[0]
    if inversion is None:
        # m = (a m + b) E + 1 - E, E over TR - train.
        e = jnp.exp(-(tr_ms - train_ms) / t1)
        return (b * e + 1.0 - e) / (1.0 - a * e)
    # m = c E_ti [(a m + b) E_rest + 1 - E_rest] + 1 - E_ti.
    e_ti = jnp.exp(-ti_ms / t1)
    e_rest = jnp.exp(-(tr_ms - ti_ms - train_ms) / t1)
    gain = inversion * e_ti
    return (gain * (b * e_rest + 1.0 - e_rest) + 1.0 - e_ti) / (1.0 - gain * a * e_rest)


# ---------------------------------------------------------------------------------------------
# MPRAGE


def _mprage_shot(m, t1, b1, *, flip_deg, readout_tr_ms, num_readouts, ti_ms, td_ms,
                 inversion):
    """One shot from Mz = m [V] before the inversion: (readouts [V, N], Mz after the shot)."""
    alpha = jnp.deg2rad(flip_deg) * b1
    sin_a, cos_a = jnp.sin(alpha), jnp.cos(alpha)
    e_ti, e_r, e_td = (jnp.exp(-ms / t1) for ms in (ti_ms, readout_tr_ms, td_ms))
    m = inversion * m * e_ti + 1.0 - e_ti

    def readout(m, _):
        signal = m * sin_a  # perfect spoiling: only Mz carries over
        return m * cos_a * e_r + 1.0 - e_r, signal

    m, signals = jax.lax.scan(readout, m, None, length=num_readouts)
    return signals.T, m * e_td + 1.0 - e_td


@functools.partial(jax.jit, static_argnames=(
    "flip_deg", "readout_tr_ms", "num_readouts", "ti_ms", "td_ms", "inversion_deg",
    "inversion_efficiency", "num_shots"))
def mprage_readouts(t1_ms, b1=1.0, *, flip_deg: float, readout_tr_ms: float,
                    num_readouts: int, ti_ms: float, td_ms: float,
                    inversion_deg: float = 180.0, inversion_efficiency: float = 1.0,
                    num_shots: int | None = None):
    """Per-readout transverse signals [*S, num_readouts] of an MPRAGE-like sequence, PD = 1.

    Each shot: inversion (Mz -> inversion_efficiency cos(inversion_deg b1) Mz), `ti_ms` to the
    first readout pulse, `num_readouts` spoiled pulses of flip_deg b1 every readout_tr_ms
    (signal = Mz sin(flip b1) right after each pulse, no T2*), then `td_ms` of recovery
    after the last readout interval. num_shots None: steady state over repeated shots;
    an int: the num_shots-th shot from fully relaxed spins.
    """
    t1, b1 = (jnp.asarray(x, jnp.float32) for x in (t1_ms, b1))
    shape = jnp.broadcast_shapes(t1.shape, b1.shape)
    t1, b1 = (jnp.broadcast_to(x, shape).reshape(-1) for x in (t1, b1))
    t1 = jnp.maximum(t1, 1e-3)
    if min(ti_ms, td_ms, readout_tr_ms) < 0 or num_readouts < 1:
        raise ValueError("MPRAGE timings must be >= 0 ms and num_readouts >= 1")
    inversion = inversion_efficiency * jnp.cos(jnp.deg2rad(inversion_deg) * b1)
    shot = functools.partial(_mprage_shot, t1=t1, b1=b1, flip_deg=flip_deg,
                             readout_tr_ms=readout_tr_ms, num_readouts=num_readouts,
                             ti_ms=ti_ms, td_ms=td_ms, inversion=inversion)
    signals_1, end_1 = shot(jnp.ones_like(t1))
    signals_0, end_0 = shot(jnp.zeros_like(t1))
    a, b = end_1 - end_0, end_0  # Mz before the next inversion = a m + b
    if num_shots is None:
        m = b / (1.0 - a)
    else:
        if num_shots < 1:
            raise ValueError(f"num_shots must be >= 1, got {num_shots}")
        # m_1 = 1, m_k = a m_{k-1} + b.
        m = jax.lax.fori_loop(0, num_shots - 1, lambda _, m: a * m + b, jnp.ones_like(t1))
    signals = m[:, None] * (signals_1 - signals_0) + signals_0
    return signals.reshape(shape + (num_readouts,)).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Magnetization transfer

# Binary spin bath constants (Henkelman 1993 model; values of Sled & Pike, MRM 2001, and
# Gloor, MRM 2008): exchange rate R such that k_f = R M0b/M0f (WM: k_f ~ 4.4 /s at
# M0b/M0f ~ 0.157, so R ~ 28 /s), bound-pool R1 = 1 /s.
EXCHANGE_RATE_PER_S = 28.0
BOUND_R1_PER_S = 1.0
# Bound-pool fractions f = M0b / (M0f + M0b), literature reference values (Sled & Pike 2001;
# Gloor 2008; Underhill 2011 for pathology): oedema dilutes the macromolecules, necrosis and
# blood have few.
TYPICAL_BOUND_POOL_FRACTION = {
    "wm": 0.136, "cgm": 0.057, "dgm": 0.085, "csf": 0.0, "vein": 0.01, "necrosis": 0.02,
    "enhancing": 0.05, "edema": 0.05, "hemorrhage": 0.03,
}


def mt_saturation(bound_pool_fraction, w_per_s, t1_ms=None, *,
                  exchange_rate_per_s: float = EXCHANGE_RATE_PER_S,
                  r1_bound_per_s: float = BOUND_R1_PER_S):
    """Free-pool signal factor (0, 1] under magnetization transfer saturation.

    Steady state of the binary spin bath (free pool f, bound pool b, M0f = 1,
    F = M0b/M0f = f / (1 - f), k_f = R F, k_r = R) when the bound pool is saturated at the
    time-averaged rate W = `w_per_s` (1/s) by the other slices' off-resonant pulses of a
    multi-slice 2D acquisition:
        Mf = (R1f + k_r R1b F / D) / (R1f + k_f - k_r k_f / D),   D = R1b + k_r + W.
    W = 0 or f = 0 give 1. R1f = 1000 / t1_ms (1 /s when t1_ms is None): an approximation,
    since the observed T1 already mixes the pools. The factor multiplies the signal (an
    empirical use of the steady state; the sequence's own pulses are not modelled).
    """
    f = jnp.clip(jnp.asarray(bound_pool_fraction, jnp.float32), 0.0, 0.5)
    w = jnp.asarray(w_per_s, jnp.float32)
    r1f = 1.0 if t1_ms is None else 1000.0 / jnp.maximum(jnp.asarray(t1_ms, jnp.float32),
                                                            1.0)
    ratio = f / (1.0 - f)
    k_r = exchange_rate_per_s
    k_f = k_r * ratio
    d = r1_bound_per_s + k_r + w
    free = (r1f + k_r * r1_bound_per_s * ratio / d) / (r1f + k_f - k_r * k_f / d)
    return jnp.asarray(free, jnp.float32)


# ---------------------------------------------------------------------------------------------
# k-space ordering


def kspace_echo_index(num_lines: int, num_echoes: int, centre_echo: int,
                      ordering: str = "linear") -> np.ndarray:
    """Echo (or readout) index [num_lines] int32 acquiring each phase-encode line.

    The k-space centre is line c = num_lines // 2 and always gets `centre_echo`.
    linear: (centre_echo + floor((j - c) num_echoes / num_lines)) mod num_echoes, i.e.
        consecutive segments of num_lines / num_echoes lines per echo, shifted so that the
        centre falls on centre_echo (the outer segments wrap around, as vendors do it).
    centric: lines ranked by |j - c| (ties: lower j first) get
        (centre_echo + floor(rank num_echoes / num_lines)) mod num_echoes.
    """
    if not 0 <= centre_echo < num_echoes:
        raise ValueError(f"centre_echo {centre_echo} must be in 0..{num_echoes - 1}")
    j = np.arange(num_lines)
    centre = num_lines // 2
    if ordering == "linear":
        step = np.floor((j - centre) * num_echoes / num_lines).astype(int)
    elif ordering == "centric":
        rank = np.empty(num_lines, int)
        rank[np.lexsort((j, np.abs(j - centre)))] = j
        step = rank * num_echoes // num_lines
    else:
        raise ValueError(f"unknown ordering {ordering!r}; known: linear, centric")
    return ((centre_echo + step) % num_echoes).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Protocol parameters and dispatch


@dataclasses.dataclass(frozen=True)
class TSEParams:
    """A (inversion-prepared) turbo spin echo; TR, TE and TI come from the Protocol.

    centre_echo: 0-based echo at the k-space centre, TE_eff = (centre_echo + 1) esp_ms.
    mt_w_per_s: bound-pool saturation rate (1/s) from the other slices (MT strength).
    """

    esp_ms: float
    etl: int
    refocus_deg: float
    centre_echo: int
    ordering: str = "linear"
    excite_deg: float = 90.0
    mt_w_per_s: float = 0.0
    inversion_deg: float = 180.0
    inversion_efficiency: float = 1.0

    @property
    def effective_te_ms(self) -> float:
        return (self.centre_echo + 1) * self.esp_ms


@dataclasses.dataclass(frozen=True)
class MPRAGEParams:
    """An MPRAGE-like T1w. ti_ms: inversion to the k-space-centre readout (vendor
    convention); shot_tr_ms: inversion to inversion; te_ms: echo time of each readout."""

    flip_deg: float
    readout_tr_ms: float
    num_readouts: int
    ti_ms: float
    shot_tr_ms: float
    centre_readout: int
    te_ms: float
    ordering: str = "linear"
    inversion_deg: float = 180.0
    inversion_efficiency: float = 1.0

    @property
    def ti_first_ms(self) -> float:
        """Inversion to the first readout pulse."""
        return self.ti_ms - self.centre_readout * self.readout_tr_ms

    @property
    def td_ms(self) -> float:
        """Recovery after the last readout interval until the next inversion."""
        return self.shot_tr_ms - self.ti_first_ms - self.num_readouts * self.readout_tr_ms


def simulate_protocol(protocol, pd, t1_ms, t2_ms, b1=1.0, bound_pool_fraction=0.0):
    """Echoes (TSE) or readouts (MPRAGE) [*S, n] of `protocol.sequence`, times PD and the MT
    factor (TSE only). MPRAGE readouts carry exp(-TE/T2) with T2 standing in for T2*."""
    seq = getattr(protocol, "sequence", None)
    pd = jnp.asarray(pd, jnp.float32)[..., None]
    if isinstance(seq, TSEParams):
        echoes = tse_echo_train(
            t1_ms, t2_ms, b1, esp_ms=seq.esp_ms, etl=seq.etl, refocus_deg=seq.refocus_deg,
            excite_deg=seq.excite_deg, tr_ms=protocol.tr_ms,
            ti_ms=protocol.ti_ms if protocol.kind == "inversion_recovery" else None,
            inversion_deg=seq.inversion_deg, inversion_efficiency=seq.inversion_efficiency)
        mt = mt_saturation(bound_pool_fraction, seq.mt_w_per_s, t1_ms)
        return pd * jnp.asarray(mt)[..., None] * echoes
    if isinstance(seq, MPRAGEParams):
        readouts = mprage_readouts(
            t1_ms, b1, flip_deg=seq.flip_deg, readout_tr_ms=seq.readout_tr_ms,
            num_readouts=seq.num_readouts, ti_ms=seq.ti_first_ms, td_ms=seq.td_ms,
            inversion_deg=seq.inversion_deg, inversion_efficiency=seq.inversion_efficiency)
        decay = jnp.exp(-seq.te_ms / jnp.maximum(jnp.asarray(t2_ms, jnp.float32), 1e-3))
        return pd * decay[..., None] * readouts
    raise ValueError(f"protocol {getattr(protocol, 'contrast', protocol)!r} has no simulated "
                     "sequence (use signal.synthesize)")


def centre_index(protocol) -> int:
    """The echo/readout at the k-space centre of `protocol.sequence`."""
    seq = protocol.sequence
    return seq.centre_echo if isinstance(seq, TSEParams) else seq.centre_readout


def centre_signal(protocol, pd, t1_ms, t2_ms, b1=1.0, bound_pool_fraction=0.0):
    """The k-space-centre echo [*S]: the image without the echo-train blur (signed)."""
    echoes = simulate_protocol(protocol, pd, t1_ms, t2_ms, b1, bound_pool_fraction)
    return echoes[..., centre_index(protocol)]
