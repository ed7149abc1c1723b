"""Benchmark of the MRF physics: dictionary build, SVD energy, matching throughput.

Run: .venv/bin/python -m experiments.bench_physics [--num_trs 1000] [--voxels 262144]
Prints one JSON object. Times are wall-clock seconds on whatever device JAX uses.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from qsnet_jax.physics.dictionary import build_dictionary, dictionary_grid, match
from qsnet_jax.physics.epg import simulate_fisp
from qsnet_jax.physics.mrf import fisp_schedule


def numpy_epg(schedule, t1_ms, t2_ms):
    """Reference float64 complex EPG (RF about x), vectorized over entries: [M, N]."""
    num_states = 64
    fp = np.zeros((t1_ms.size, num_states), complex)
    fm, z = fp.copy(), np.zeros_like(fp)
    e1 = np.exp(-schedule.inversion_delay_ms / t1_ms)
    z[:, 0] = -schedule.inversion_efficiency * e1 + 1 - e1
    out = []
    for flip, tr in zip(np.deg2rad(schedule.flip_deg.astype(float)), schedule.tr_ms,
                        strict=True):
        c2, s2, s = np.cos(flip / 2) ** 2, np.sin(flip / 2) ** 2, np.sin(flip)
        fp, fm, z = (c2 * fp + s2 * fm - 1j * s * z, s2 * fp + c2 * fm + 1j * s * z,
                     -0.5j * s * fp + 0.5j * s * fm + np.cos(flip) * z)
        out.append((1j * fp[:, 0] * np.exp(-schedule.te_ms / t2_ms)).real)
        e1, e2 = np.exp(-tr / t1_ms)[:, None], np.exp(-tr / t2_ms)[:, None]
        fp, fm, z = fp * e2, fm * e2, z * e1
        z[:, 0] += 1 - e1[:, 0]
        fp = np.concatenate([np.conj(fm[:, 1:2]), fp[:, :-1]], axis=1)
        fm = np.concatenate([fm[:, 1:], np.zeros_like(fm[:, :1])], axis=1)
        fm[:, 0] = np.conj(fp[:, 0])
    return np.stack(out, axis=1)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_trs", type=int, default=1000)
    parser.add_argument("--voxels", type=int, default=262144)
    args = parser.parse_args()
    schedule = fisp_schedule(args.num_trs)
    t1, t2, b1 = dictionary_grid()
    _, first = timed(build_dictionary, schedule, t1, t2, b1)  # includes compilation
    dictionary, build = timed(build_dictionary, schedule, t1, t2, b1, rank=12)
    # Energy per rank from the rank-12 basis: cumulative share of the unit dictionary.
    fingerprints = np.asarray(simulate_fisp(schedule, t1, t2, b1))
    unit = fingerprints / np.linalg.norm(fingerprints, axis=1, keepdims=True)
    projected = unit @ dictionary.basis
    total = float(np.sum(unit.astype(np.float64) ** 2))
    energy = {}
    for rank in (6, 8, 10, 12):
        energy[rank] = float(np.sum(projected[:, :rank].astype(np.float64) ** 2) / total)

    rng = np.random.default_rng(0)
    pick = rng.choice(len(t1), size=256, replace=False)
    reference = numpy_epg(schedule, t1[pick].astype(float), t2[pick].astype(float))
    epg_error = float(np.abs(reference - fingerprints[pick]).max())

    # Matching: noisy compressed fingerprints of random entries (PD 0.5-1, frame SNR 4).
    rows = rng.integers(0, len(t1), size=4096)
    clean = fingerprints[rows] * rng.uniform(0.5, 1.0, size=(4096, 1))
    sigma = np.sqrt(np.mean(clean ** 2, axis=1, keepdims=True)) / 4.0
    noisy = clean + rng.normal(size=clean.shape) * sigma
    _, raw_seconds = timed(match, dictionary, noisy)  # uncompressed input, incl. compile
    _, raw_seconds = timed(match, dictionary, noisy)
    compressed = np.tile(dictionary.compress(noisy), (args.voxels // 4096, 1))
    match(dictionary, compressed[:65536])  # compile
    maps, seconds = timed(match, dictionary, compressed)
    t1_error = np.median(np.abs(maps["t1_ms"][:4096] / t1[rows] - 1))
    print(json.dumps({
        "device": str(jax.devices()[0]), "num_trs": schedule.num_trs,
        "dictionary_entries": int(len(t1)), "epg_states": 64,
        "build_seconds_first_call": round(first, 2), "build_seconds": round(build, 2),
        "svd_energy_kept_by_rank": {str(k): round(v, 7) for k, v in energy.items()},
        "jax_vs_numpy_epg_max_abs_diff": epg_error,
        "match_voxels_per_second_compressed": round(len(compressed) / seconds),
        "match_voxels_per_second_uncompressed": round(len(noisy) / raw_seconds),
        "match_median_t1_error_frame_snr4": round(float(t1_error), 4),
    }, indent=1))


if __name__ == "__main__":
    main()
