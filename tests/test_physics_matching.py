"""Dictionary matching: recovery of pure-tissue T1/T2/PD with and without noise, the API
(compressed input, complex input, chunking, background), and the partial-volume bright rim
of signal-equation FLAIR (docs/design.md section 5)."""

import numpy as np
import pytest

from qsnet_jax.physics import signal
from qsnet_jax.physics.dictionary import build_dictionary, dictionary_grid, match
from qsnet_jax.physics.epg import simulate_fisp
from qsnet_jax.physics.mrf import fisp_schedule

# docs/design.md section 5, mid-range 3 T values: T1 ms, T2 ms, PD.
TISSUES = {"wm": (820.0, 68.0, 0.70), "gm": (1450.0, 90.0, 0.80), "csf": (4163.0, 1750.0, 1.0)}
# Per-time-point noise: sigma = RMS(fingerprint) / FRAME_SNR. With N = 1000 shots and rank 10
# the noise left in the matching subspace is |f| / (FRAME_SNR * sqrt(N / k)) = |f| / 40, i.e.
# SNR 40 relative to the fingerprint norm after the SVD projection averages the frames.
FRAME_SNR = 4.0


@pytest.fixture(scope="module")
def schedule():
    return fisp_schedule(1000)  # the full default train, one build for the whole module


@pytest.fixture(scope="module")
def dictionary(schedule):
    # A 3% grid over the brain range keeps the build to seconds; the nearest entry is then at
    # most 1.5% away from any tissue.
    t1, t2, b1 = dictionary_grid((500.0, 6000.0), (30.0, 3000.0), step=0.03)
    return build_dictionary(schedule, t1, t2, b1, rank=10)


@pytest.fixture(scope="module")
def tissue_fingerprints(schedule):
    t1, t2, pd = (np.array(v) for v in zip(*TISSUES.values(), strict=True))
    return np.asarray(simulate_fisp(schedule, t1, t2)) * pd[:, None], (t1, t2, pd)


def test_svd_keeps_energy(dictionary):
    assert dictionary.atoms.shape == (dictionary.num_entries, 10)
    assert dictionary.energy_kept > 0.9999
    np.testing.assert_allclose(dictionary.basis.T @ dictionary.basis, np.eye(10), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(dictionary.atoms, axis=1), 1.0, atol=1e-5)


def test_grid_is_log_spaced_with_t2_below_t1():
    t1, t2, b1 = dictionary_grid(b1_values=(0.9, 1.0))
    assert np.all(t2 <= t1) and set(np.unique(b1)) == {np.float32(0.9), np.float32(1.0)}
    steps = np.diff(np.log(np.unique(t1)))
    np.testing.assert_allclose(steps, np.log(1.05), rtol=1e-3)
    assert t1.min() == pytest.approx(10.0) and t1.max() <= 5000.0


def test_noise_free_recovery_within_3_percent(dictionary, tissue_fingerprints):
    fingerprints, (t1, t2, pd) = tissue_fingerprints
    maps = match(dictionary, fingerprints)
    np.testing.assert_allclose(maps["t1_ms"], t1, rtol=0.03)
    np.testing.assert_allclose(maps["t2_ms"], t2, rtol=0.03)
    np.testing.assert_allclose(maps["pd"], pd, rtol=0.03)
    assert np.all(maps["score"] > 0.999)


def test_noisy_recovery_median_within_10_percent(dictionary, tissue_fingerprints):
    fingerprints, (t1, t2, pd) = tissue_fingerprints
    rng = np.random.default_rng(0)
    voxels = 1000
    rms = np.sqrt(np.mean(fingerprints ** 2, axis=1))
    noisy = fingerprints[:, None, :] + rng.normal(size=(3, voxels, fingerprints.shape[1])) * (
        rms / FRAME_SNR)[:, None, None]
    maps = match(dictionary, noisy)
    assert maps["t1_ms"].shape == (3, voxels)
    for name, truth in (("t1_ms", t1), ("t2_ms", t2), ("pd", pd)):
        median_error = np.median(np.abs(maps[name] / truth[:, None] - 1), axis=1)
        assert np.all(median_error < 0.10), (name, median_error)
    # The estimates are unbiased enough that the median map value is close to the truth.
    np.testing.assert_allclose(np.median(maps["t1_ms"], axis=1), t1, rtol=0.05)


def test_compressed_complex_chunked_and_background(dictionary, tissue_fingerprints):
    fingerprints, _ = tissue_fingerprints
    reference = match(dictionary, fingerprints)
    compressed = match(dictionary, dictionary.compress(fingerprints))
    phase = np.exp(1j * np.array([0.3, -2.0, 1.2]))[:, None]
    rotated = match(dictionary, fingerprints * phase)  # arbitrary receive phase
    # The same entry must win (a neighbour is a 3% step away); the value read between
    # entries is the vertex through scores within ~1e-5 of each other, which float32 rounding
    # moves by up to ~2e-4 relative (1.9e-4 for a T1 on an AVX2-only AMD EPYC, under 1e-4 on
    # AVX-512 CPUs): 1e-3 tells rounding from a wrong entry.
    for maps in (compressed, rotated):
        for name in ("t1_ms", "t2_ms", "pd"):
            np.testing.assert_allclose(maps[name], reference[name], rtol=1e-3)
    stacked = np.concatenate([fingerprints, np.zeros_like(fingerprints[:1])] * 200)
    chunked = match(dictionary, stacked, chunk=256)
    np.testing.assert_array_equal(chunked["t1_ms"][:3], reference["t1_ms"])
    np.testing.assert_array_equal(chunked["t1_ms"][4:7], reference["t1_ms"])
    assert chunked["t1_ms"][3] == chunked["pd"][3] == chunked["score"][3] == 0.0
    with pytest.raises(ValueError):
        match(dictionary, fingerprints[:, :17])


def test_partial_volume_csf_gm_gives_bright_flair_rim(dictionary, tissue_fingerprints):
    fingerprints, (t1, t2, pd) = tissue_fingerprints
    gm, csf = 1, 2
    mixture = 0.2 * fingerprints[csf] + 0.8 * fingerprints[gm]  # PD already in the rows
    maps = match(dictionary, mixture[None])
    flair = signal.site_protocols("A")["t2flair"]
    synthetic = float(signal.synthesize(flair, maps["pd"], maps["t1_ms"], maps["t2_ms"])[0])
    pure = np.asarray(signal.synthesize(flair, pd, t1, t2))
    true_mixture = 0.2 * pure[csf] + 0.8 * pure[gm]
    print(f"20% CSF / 80% GM: matched T1 {maps['t1_ms'][0]:.0f} ms, T2 {maps['t2_ms'][0]:.0f} "
          f"ms, PD {maps['pd'][0]:.3f}; T2-FLAIR from maps {synthetic:.3f}, true mixture "
          f"{true_mixture:.3f}, pure GM {pure[gm]:.3f}")
    # The single matched (T1, T2) lies between GM and CSF, long enough in T2 to escape the
    # CSF null: the synthetic FLAIR is brighter than both the truth and pure GM.
    assert t1[gm] < maps["t1_ms"][0] < t1[csf] and maps["t2_ms"][0] > 1.5 * t2[gm]
    assert synthetic > 1.2 * true_mixture and synthetic > pure[gm]


@pytest.mark.parametrize("kind", ["complex", "real"])
def test_best_entry_is_the_brute_force_argmax(dictionary, kind):
    # Independent reference: every score in float64 with NumPy (the complex magnitude, or
    # the signed product for real fingerprints), argmax. The search scans 128-atom
    # sub-blocks, so the best must be carried across many scan steps; the dictionary's size
    # is not a multiple of 128 (padding) and 500 fingerprints make a padded second chunk.
    assert dictionary.num_entries % 128
    rng = np.random.default_rng(3)
    rows = rng.integers(0, dictionary.num_entries, 500)
    clean = dictionary.atoms[rows] * rng.uniform(0.5, 2.0, (500, 1))
    noisy = clean + rng.normal(0, 0.03, clean.shape)
    if kind == "complex":
        noisy = (noisy + 1j * rng.normal(0, 0.03, clean.shape)).astype(np.complex64)
    else:
        noisy = (noisy * rng.choice([-1.0, 1.0], (500, 1))).astype(np.float32)
    maps = match(dictionary, noisy, chunk=256, refine=False)
    atoms = dictionary.atoms.astype(np.float64)
    scores = noisy.astype(np.complex128 if kind == "complex" else np.float64) @ atoms.T
    scores = np.abs(scores) if kind == "complex" else scores
    top2 = np.sort(scores, axis=1)[:, -2:]
    # Neighbouring atoms of a 3% grid score alike: compare where float32 rounding (~1e-7
    # relative) cannot swap the two best.
    clear = top2[:, 1] - top2[:, 0] > 5e-6 * top2[:, 1]
    print(f"{clear.mean():.0%} of the fingerprints have a clear best atom")
    assert clear.mean() > 0.5
    best = np.argmax(scores, axis=1)
    np.testing.assert_array_equal(maps["t1_ms"][clear], dictionary.t1_ms[best][clear])
    np.testing.assert_array_equal(maps["t2_ms"][clear], dictionary.t2_ms[best][clear])
    np.testing.assert_allclose(maps["score"], top2[:, 1] / np.linalg.norm(
        np.concatenate([noisy.real, noisy.imag], axis=1), axis=1), rtol=1e-5)


@pytest.fixture(scope="module")
def five_percent_dictionary(schedule):
    # The presets' 5% grid (over the brain's range, to keep the build short): on the grid
    # alone a pure tissue can land up to half a step, ~2.5%, from its true T1 and T2.
    t1, t2, b1 = dictionary_grid((300.0, 6000.0), (20.0, 3000.0), step=0.05)
    return build_dictionary(schedule, t1, t2, b1, rank=10)


def test_refined_matching_within_1_percent_of_pure_tissue_t1_t2_pd(schedule,
                                                                  five_percent_dictionary):
    # Independent truth: the simulated parameters themselves, drawn off the grid.
    rng = np.random.default_rng(7)
    t1 = np.concatenate([[820.0, 1450.0, 4163.0], rng.uniform(400.0, 4500.0, 60)])
    t2 = np.concatenate([[68.0, 90.0, 1750.0], np.exp(rng.uniform(np.log(25), np.log(2000), 60))])
    keep = t2 < 0.8 * t1
    t1, t2 = t1[keep], t2[keep]
    pd = rng.uniform(0.5, 1.0, t1.size)
    phase = np.exp(1j * rng.uniform(0, 2 * np.pi, (t1.size, 1)))
    fingerprints = (np.asarray(simulate_fisp(schedule, t1, t2)) * pd[:, None] * phase)
    refined = match(five_percent_dictionary, fingerprints.astype(np.complex64))
    on_grid = match(five_percent_dictionary, fingerprints.astype(np.complex64), refine=False)
    for name, truth in (("t1_ms", t1), ("t2_ms", t2), ("pd", pd)):
        np.testing.assert_allclose(refined[name], truth, rtol=0.01, err_msg=name)
    # The grid alone misses by more than 1% somewhere (so the test above is not vacuous).
    assert np.max(np.abs(on_grid["t2_ms"] / t2 - 1)) > 0.02
    assert np.all(refined["score"] > 0.9999)


def test_b1_error_moves_matched_t2_against_b1(schedule, five_percent_dictionary):
    # MRF without B1 correction (the dictionary is B1-free): a flip too small reads as a
    # longer T2, too large as a shorter one (T1 moves the same way as B1, by a few percent).
    t1 = np.array([820.0, 1450.0, 4163.0])
    t2 = np.array([68.0, 90.0, 1750.0])
    matched = {b1: match(five_percent_dictionary, simulate_fisp(schedule, t1, t2, b1))
               for b1 in (0.9, 1.0, 1.1)}
    np.testing.assert_allclose(matched[1.0]["t2_ms"], t2, rtol=0.01)
    assert np.all(matched[0.9]["t2_ms"] > 1.05 * t2)
    assert np.all(matched[1.1]["t2_ms"] < 0.95 * t2)
    assert np.all(matched[0.9]["t1_ms"] < matched[1.0]["t1_ms"])
    assert np.all(matched[1.1]["t1_ms"] > matched[1.0]["t1_ms"])
    np.testing.assert_allclose(matched[1.1]["t1_ms"], t1, rtol=0.05)
