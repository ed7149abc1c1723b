"""Extended phase graph (EPG) simulation of FISP-MRF fingerprints in JAX.

The EPG (Weigel, JMRI 2015) describes magnetization as configuration states: transverse
F+(k), F-(k) and longitudinal Z(k), k = 0 .. num_states-1, where k counts the dephasing
(multiples of the unbalanced gradient's twist). Each FISP shot is

    RF rotation (flip * B1, about +y)  ->  read F+(0) at TE  ->  relax over TR
    ->  shift every state by one (the unbalanced gradient dephases 8*pi per TR, far more
        than a voxel's width, so the echo is built from the k = 0 state only).

Pulsing about +y (RF phase pi/2) keeps every state real, so the whole graph runs in real
float32 arithmetic, and the k = 0 signal comes out real and signed: positive for positive
Mz, negative early in the train while Mz is still inverted. Times in ms, angles in degrees,
T1/T2 in ms, B1 a relative scale of the flip angle (1 = nominal). M0 = 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from qsnet_jax.physics.mrf import MRFSchedule

# None: every tissue keeps the states its T2 needs (states_needed). An int keeps that many.
DEFAULT_NUM_STATES = None
# A state of order k reaches the readout only if it is rephased within the train, after k
# shifts out and k back: states above N // 2 never contribute, so N // 2 + 1 states are exact.
# Below that, higher states matter only for long T2 (they decay by E2 on every shift). Each
# row: the largest T2 (ms) that this many states simulate to within 1e-4 of the fingerprint's
# peak against the exact count, measured on the default 1000-shot FISP schedule at the worst
# case T1 = 5000 ms and B1 0.8-1.2 (worst 5e-5; tests/test_physics_epg.py checks it against an
# all-states NumPy EPG): the former fixed 64 states left CSF (T2 ~1750 ms) off by ~8e-3.
_STATES_FOR_T2 = ((300.0, 64), (600.0, 128), (1100.0, 256))
# Batches are padded up to a power of two at least this large (and cut into `chunk`-sized
# pieces above), so only a handful of shapes are ever compiled.
_MIN_BUCKET = 256


# Shots per loop iteration of the compiled scan (fewer loop overheads; measured 1.3x).
_UNROLL = 4


def _rotate(fp, fm, z, c2, s2, sa, ca):
    """RF rotation about +y, applied to every state k (Weigel eq. 15), given the flip's
    cos^2(a/2), sin^2(a/2), sin a and cos a (one column per tissue)."""
    return (c2 * fp - s2 * fm + sa * z,
            -s2 * fp + c2 * fm + sa * z,
            -0.5 * sa * (fp + fm) + ca * z)


def _relax(fp, fm, z, e1, e2):
    """T1/T2 relaxation over one interval; only Z(0) recovers towards M0 = 1."""
    z = z * e1
    z = z.at[:, 0].add(1.0 - e1[:, 0])
    return fp * e2, fm * e2, z


def _shift(fp, fm):
    """Dephase by one state: F+(k) <- F+(k-1), F-(k) <- F-(k+1), F+(0) = conj F-(1)."""
    fp_new = jnp.concatenate([fm[:, 1:2], fp[:, :-1]], axis=1)
    fm_new = jnp.concatenate([fp_new[:, 0:1], fm[:, 2:], jnp.zeros_like(fm[:, :1])], axis=1)
    return fp_new, fm_new


@functools.partial(jax.jit, static_argnames=("num_states",))
def _fingerprints_batch(t1_ms, t2_ms, b1, flip_rad, tr_ms, te_ms, initial_mz,
                        inversion_delay_ms, *, num_states):
    """FISP-MRF signals [B, N] of B tissues; states are [B, num_states] arrays.

    Every shot's rotation and relaxation factors ([N, B]: four trigonometric terms of the
    B1-scaled flip, E1 and E2) are computed before the loop, in one vectorized pass: inside
    the loop they cost 2.5x the state updates themselves (measured)."""
    flip = flip_rad[:, None] * b1[None, :]
    rotation = (jnp.cos(flip / 2) ** 2, jnp.sin(flip / 2) ** 2, jnp.sin(flip), jnp.cos(flip))
    e1 = jnp.exp(-tr_ms[:, None] / t1_ms[None, :])
    e2 = jnp.exp(-tr_ms[:, None] / t2_ms[None, :])
    # Adiabatic inversion (spoiled: no transverse magnetization left), then free recovery
    # until the first shot.
    e1_inv = jnp.exp(-inversion_delay_ms / t1_ms)
    mz = initial_mz * e1_inv + (1.0 - e1_inv)
    zeros = jnp.zeros((t1_ms.shape[0], num_states), jnp.float32)

    def shot(state, factors):
        c2, s2, sa, ca, e1, e2 = (f[:, None] for f in factors)
        fp, fm, z = _rotate(*state, c2, s2, sa, ca)
        signal = fp[:, 0]
        fp, fm, z = _relax(fp, fm, z, e1, e2)
        fp, fm = _shift(fp, fm)
        return (fp, fm, z), signal

    _, signals = jax.lax.scan(shot, (zeros, zeros, zeros.at[:, 0].set(mz)),
                              (*rotation, e1, e2), unroll=_UNROLL)
    # T1 recovery during TE does not touch F(0); T2 decay does.
    return (signals * jnp.exp(-te_ms / t2_ms)[None, :]).T


def _bucket(n, chunk):
    return min(chunk, max(_MIN_BUCKET, 1 << max(n - 1, 0).bit_length()))


def _schedule_constants(schedule):
    """(flip rad, TR, TE, Mz after the inversion, delay) as device arrays."""
    if schedule.inversion:
        initial_mz, delay = -schedule.inversion_efficiency, schedule.inversion_delay_ms
    else:
        initial_mz, delay = 1.0, 0.0
    return (jnp.asarray(np.deg2rad(schedule.flip_deg), jnp.float32),
            jnp.asarray(schedule.tr_ms, jnp.float32), jnp.float32(schedule.te_ms),
            jnp.float32(initial_mz), jnp.float32(delay))


def exact_num_states(num_trs: int) -> int:
    """The states that can reach the readout of an `num_trs`-shot train: N // 2 + 1 (at
    least 2, which the state shift needs)."""
    return max(num_trs // 2 + 1, 2)


def states_needed(t2_ms, num_trs: int) -> np.ndarray:
    """EPG states each tissue needs for 1e-4 of peak (int array, the shape of t2_ms)."""
    t2 = np.asarray(t2_ms, np.float32)
    exact = exact_num_states(num_trs)
    needed = np.full(t2.shape, exact, np.int64)
    for limit, states in reversed(_STATES_FOR_T2):
        needed[t2 <= limit] = min(states, exact)
    return needed


def simulate_fisp(schedule: MRFSchedule, t1_ms, t2_ms, b1=1.0, *,
                  num_states: int | str | None = DEFAULT_NUM_STATES,
                  chunk: int = 2048) -> jnp.ndarray:
    """FISP-MRF fingerprints of tissues with the given T1, T2 (ms) and B1 (relative).

    t1_ms, t2_ms, b1 broadcast against each other to a shape S; the result is float32
    [*S, N] (N = schedule.num_trs): the real transverse signal F+(0) at TE of each shot for
    M0 = 1, signed (negative while the inverted magnetization has not recovered).
    `num_states` EPG states are kept; higher ones are dropped. None (the default): each
    tissue keeps the states its T2 needs for 1e-4 of its peak against every state
    (`states_needed`; tissues are simulated in groups of equal count). "all": the exact
    N // 2 + 1 for every tissue.
    Tissues are simulated `chunk` at a time.

    Without B1 correction (a B1-free dictionary) a flip scaled by B1 < 1 matches as a longer
    T2 and B1 > 1 as a shorter one (about +20% / -15% at B1 0.9 / 1.1 for brain tissue), T1
    moves with B1 by 1-2% and PD with it by 5-8% (tests/test_physics_matching.py).
    """
    t1, t2, b1 = (np.asarray(a, np.float32) for a in np.broadcast_arrays(t1_ms, t2_ms, b1))
    shape = t1.shape
    t1, t2, b1 = t1.reshape(-1), t2.reshape(-1), b1.reshape(-1)
    if t1.size and (np.any(t1 <= 0) or np.any(t2 <= 0)):
        raise ValueError("T1 and T2 must be positive (ms)")
    if num_states == "all":
        num_states = exact_num_states(schedule.num_trs)
    if num_states is None:
        counts = states_needed(t2, schedule.num_trs)
        out = np.empty((t1.size, schedule.num_trs), np.float32)
        for count in np.unique(counts):
            rows = np.nonzero(counts == count)[0]
            out[rows] = np.asarray(_simulate_flat(schedule, t1[rows], t2[rows], b1[rows],
                                                  int(count), chunk))
        return jnp.asarray(out.reshape(shape + (schedule.num_trs,)))
    return _simulate_flat(schedule, t1, t2, b1, int(num_states), chunk).reshape(
        shape + (schedule.num_trs,))


def _simulate_flat(schedule, t1, t2, b1, num_states, chunk):
    """Fingerprints [B, N] of flat tissue arrays with a fixed state count."""
    constants = _schedule_constants(schedule)
    pieces = []
    for start in range(0, t1.size, chunk):
        stop = min(start + chunk, t1.size)
        size = _bucket(stop - start, chunk)
        # Pad with a harmless tissue so the compiled shape stays fixed.
        padded = [np.pad(a[start:stop], (0, size - (stop - start)), constant_values=1.0)
                  for a in (t1, t2, b1)]
        out = _fingerprints_batch(*padded, *constants, num_states=num_states)
        pieces.append(out[: stop - start])
    if not pieces:
        return jnp.zeros((0, schedule.num_trs), jnp.float32)
    return jnp.concatenate(pieces)
