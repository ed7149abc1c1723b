"""Phantom v2 (issue 18): sharp anatomy, k-space truncation, B1+, SWI hemorrhage, the
calibration split, the MRF subspace output, and a build independent of the number of jobs."""

import csv
import dataclasses
import json
import os

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import sici

from data_pipelines import cohort
from data_pipelines.phantom import anatomy, lesion, presets, simulate, tissues, writer
from qsnet_jax.physics import dictionary as mrf_dictionary

TINY = presets.PRESETS["tiny"]


def _manifest(root):
    with open(os.path.join(root, "manifest.csv"), newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ Gibbs ringing


def _step_image(edge_fine, fine_shape):
    """Fine-grid fraction: 1 below the plane y = edge (fine voxel units), box-integrated."""
    y = np.arange(fine_shape[1], dtype=np.float64)
    inside = np.clip(edge_fine - (y - 0.5), 0.0, 1.0)  # 1 up to the edge, partial at it
    return np.broadcast_to(inside[None, :, None], fine_shape).astype(np.float32)


def test_truncated_kspace_matches_numpy_reference_and_rings_9_percent():
    shape = (4, 64, 1)
    fine_shape = (4 * simulate.FINE, 64 * simulate.FINE, 1)
    ones = {"t": np.ones(shape, np.float32)}
    overshoots = []
    for edge in np.linspace(40.0, 42.0, 9):  # sub-voxel positions of the edge
        fine = _step_image(edge, fine_shape)
        image = simulate.form_image(ones, {"t": fine}, None, shape, fine=True)
        profile = np.real(image[0, :, 0])
        # Independent reference: the band-limited (|k| < N/2) Fourier series of the fine
        # profile, evaluated at the acquisition voxel centres (fine coordinate 2n + 0.5).
        n_fine = fine_shape[1]
        spectrum = np.fft.fft(fine[0, :, 0].astype(np.float64))
        k = np.fft.fftfreq(n_fine, 1.0 / n_fine)
        keep = (k >= -shape[1] // 2) & (k < shape[1] // 2)
        at = 2.0 * np.arange(shape[1]) + 0.5
        reference = np.real(np.exp(2j * np.pi * np.outer(at, k[keep]) / n_fine)
                            @ spectrum[keep]) / n_fine
        np.testing.assert_allclose(profile, reference, atol=1e-5)
        overshoots.append(profile.max() - 1.0)
    # Gibbs: the truncated Fourier series of a unit step peaks at Si(pi)/pi + 1/2 = 1.0895.
    gibbs = sici(np.pi)[0] / np.pi - 0.5
    assert abs(gibbs - 0.0895) < 1e-3
    assert max(overshoots) == pytest.approx(gibbs, abs=0.015)


@pytest.mark.parametrize("n, size, axis", [(128, 64, 1), (97, 33, 1), (11, 4, 0), (9, 9, 2)])
def test_centre_crop_is_fftshift_then_the_central_frequencies(n, size, axis):
    shape = [3, 4, 5]
    shape[axis] = n
    rng = np.random.default_rng(0)
    spectrum = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    start = n // 2 - size // 2
    reference = np.take(np.fft.fftshift(spectrum, axes=axis), np.arange(start, start + size),
                        axis=axis)
    np.testing.assert_array_equal(simulate._centre_crop(spectrum, size, axis), reference)


# ------------------------------------------------------------------ anatomy


def _anatomy(effects):
    spec = writer.subject_specs(TINY, 0)[0]
    rng = np.random.default_rng(spec.seed)
    tissues.draw_tissue_params(rng)
    warp = anatomy.draw_warp(rng)
    sharp = anatomy.draw_sharp(simulate._stream(spec, "anatomy"))
    return simulate.subject_anatomy(rng, warp, None, dataclasses.replace(
        TINY, effects=frozenset(effects)), sharp)


def test_sharp_anatomy_is_purer_than_population_probabilities():
    sharp = _anatomy(TINY.effects)
    v1 = _anatomy(TINY.effects - {"anatomy"})
    mask = sharp["brain"] >= 0.5
    purity_v2 = anatomy.purity(sharp["fractions"], mask)
    purity_v1 = anatomy.purity(v1["fractions"], v1["brain"] >= 0.5)
    assert purity_v2 > purity_v1 + 0.1, (purity_v2, purity_v1)
    # fractions are fractions: non-negative and summing to the brain fraction
    total = sum(sharp["fractions"].values())
    assert min(f.min() for f in sharp["fractions"].values()) >= -1e-6
    np.testing.assert_allclose(total, sharp["brain"], atol=2e-3)
    # sulci: CSF inside the cortical band (depth < 10 mm, away from the ventricles)
    assert sharp["fractions"]["csf"][mask].mean() > 0.05


def test_box_fraction_of_a_plane_is_exact_for_axis_aligned_boundaries():
    x = np.arange(20, dtype=np.float64)
    values = np.broadcast_to((7.3 - x)[:, None, None], (20, 3, 3)) * 0.5  # boundary at 7.3
    fraction = anatomy.box_fraction(values, (1.0, 1.0, 1.0))[:, 1, 1]
    # voxel i covers [i - 0.5, i + 0.5]: the part below 7.3
    expected = np.clip(7.3 - (x - 0.5), 0.0, 1.0)
    np.testing.assert_allclose(fraction, expected, atol=1e-6)



def test_box_fraction_gives_the_plain_expression_bit_for_bit():
    # box_fraction works in place to spare the 1 mm fine grid's temporaries; the cohort's
    # bytes rest on it computing exactly what its docstring's formula computes.
    rng = np.random.default_rng(3)
    values = ndimage.gaussian_filter(rng.standard_normal((24, 20, 12)), 2.0).astype(np.float32)
    spacing = (0.5, 0.5, 1.0)
    grads = np.gradient(values, *spacing)
    norm = np.sqrt(sum(g * g for g in grads)) + 1e-9
    width = np.sqrt(sum((g / norm * h) ** 2 for g, h in zip(grads, spacing, strict=True)))
    expected = np.clip(0.5 + values / (norm * np.maximum(width, 1e-6)), 0.0, 1.0)
    got = anatomy.box_fraction(values, spacing)
    assert got.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))

# ------------------------------------------------------------------ B1, SWI, lesion


@pytest.fixture(scope="module")
def hemorrhage_subject():
    """A tiny GBM subject whose tumor bleeds (first seed that draws a hemorrhage)."""
    for seed in range(50):
        spec = simulate.SubjectSpec("sub-x", "gbm", "A", "gbm_train", (seed, 4))
        rng = np.random.default_rng(spec.seed)
        tissues.draw_tissue_params(rng)
        if lesion.draw_lesion(rng, anatomy.draw_warp(rng)).hemorrhages:
            return simulate.simulate_subject(spec, TINY)
    raise AssertionError("no hemorrhage in 50 seeds")


def test_b1_map_smooth_in_range_and_brighter_centrally(hemorrhage_subject):
    out = hemorrhage_subject
    b1, mask = out["b1"], out["brain_mask"] > 0
    assert b1[mask].min() >= 0.8 - 1e-6 and b1[mask].max() <= 1.2 + 1e-6
    assert np.percentile(b1[mask], 95) - np.percentile(b1[mask], 5) > 0.2
    assert max(np.abs(np.diff(b1, axis=a)).max() for a in range(3)) < 0.06  # smooth (4 mm)


def test_hemorrhage_dark_on_swi(hemorrhage_subject):
    out = hemorrhage_subject
    f, mask = out["fractions"], out["brain_mask"] > 0
    bleed = f["hemorrhage"] > 0.5
    assert bleed.sum() >= 1
    wm = mask & (f["wm"] > 0.9)
    assert np.median(out["swi"][bleed]) < 0.5 * np.median(out["swi"][wm])


@pytest.mark.slow
def test_without_b1_the_map_is_one_and_maps_move(hemorrhage_subject):
    assert "b1" in TINY.effects
    spec = simulate.SubjectSpec("sub-x", "healthy", "A", "healthy_train", (0, 1))
    off = simulate.simulate_subject(spec, dataclasses.replace(TINY, effects=TINY.effects -
                                                              {"b1"}))
    assert np.all(off["b1"] == 1.0)
    on = simulate.simulate_subject(spec, TINY)
    mask = on["brain_mask"] > 0
    np.testing.assert_array_equal(on["fractions"]["wm"], off["fractions"]["wm"])
    assert np.mean(on["t2map"][mask] != off["t2map"][mask]) > 0.2


# ------------------------------------------------------------------ cohort layout


def test_gbm_calib_split_present_disjoint_and_readable(tiny_cohort):
    rows = _manifest(tiny_cohort)
    calib = {r["subject"] for r in rows if r["split"] == "gbm_calib"}
    test = {r["subject"] for r in rows if r["split"] == "gbm_test"}
    assert len(calib) == 1 and test and not calib & test
    assert all(r["group"] == "gbm" and r["site"] == "A" for r in rows
               if r["split"] == "gbm_calib")
    for name, count in (("quick", 6), ("bench", 6), ("paper", 4)):
        splits = presets.PRESETS[name].splits
        assert sum(n for s, _, _, n in splits if s == "gbm_calib") == count
    # quick's added calibration subjects come last: subject k of every other split is the
    # subject it was with two calibration subjects (training, test and external unchanged)
    assert presets.PRESETS["quick"].splits[:7] == presets._design(4, 2, 3, 3, 2, 2, 2)
    # bench: enough paired subjects that a two-sided Wilcoxon test can reach p < 0.005
    splits = presets.PRESETS["bench"].splits
    gbm_a = sum(n for s, g, site, n in splits if s == "gbm_test" and site == "A")
    gbm_b = sum(n for s, g, site, n in splits if s == "external_test" and g == "gbm")
    assert min(gbm_a, gbm_b) >= 10 and 2 / 2 ** min(gbm_a, gbm_b) < 0.005
    records = cohort.read_manifest(tiny_cohort)
    assert {r.split for r in records} >= {"gbm_calib", "gbm_test", "external_test"}


def test_mrf_subspace_file_and_basis(tiny_cohort):
    import nibabel as nib

    rows = _manifest(tiny_cohort)
    row = rows[0]
    assert row["mrf_subspace"] == f"{row['subject']}/mrf_subspace.nii.gz"
    data = np.asarray(nib.load(os.path.join(tiny_cohort, row["mrf_subspace"])).dataobj)
    t1map = np.asarray(nib.load(os.path.join(tiny_cohort, row["t1map"])).dataobj)
    k = simulate.DICTIONARY_RANK
    assert data.dtype == np.float32 and data.shape == t1map.shape + (2 * k,)
    basis = np.load(os.path.join(tiny_cohort, writer.BASIS_FILE))
    assert basis.dtype == np.complex64 and basis.shape == (TINY.num_trs, k)
    np.testing.assert_allclose(basis.conj().T @ basis, np.eye(k), atol=1e-4)  # orthonormal
    with open(os.path.join(tiny_cohort, writer.BASIS_INFO_FILE)) as f:
        info = json.load(f)
    assert info["rank"] == k and info["shape"] == [TINY.num_trs, k]
    # The stored coefficients are what the maps were matched from: matching them again
    # (complex: real parts then imaginary parts) gives the T2 map (site A: no site bias
    # on T2 beyond the +-0.5% jitter).
    mask = t1map > 0
    coefficients = data[mask][:, :k] + 1j * data[mask][:, k:]
    assert np.abs(coefficients.imag).mean() > 0.1 * np.abs(coefficients.real).mean()
    model = simulate.model_for(TINY)
    matched = mrf_dictionary.match(model.dictionary, coefficients)
    ratio = t1map[mask] / matched["t1_ms"]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02)
    assert np.mean(np.abs(ratio - np.median(ratio)) < 1e-3) > 0.99


@pytest.mark.slow
def test_same_seed_same_bytes_whatever_the_jobs(tmp_path):
    subjects = ["sub-001", "sub-004"]
    paths = {}
    for jobs in (1, 2):
        paths[jobs] = writer.build_cohort(str(tmp_path / f"jobs{jobs}"), "tiny", 0, jobs=jobs,
                                          subjects=subjects, log=lambda line: None)
    files = sorted(os.path.relpath(os.path.join(d, f), paths[1])
                   for d, _, names in os.walk(paths[1]) for f in names)
    assert len(files) >= 2 * 10 + 3
    for relative in files:
        with open(os.path.join(paths[1], relative), "rb") as a, \
                open(os.path.join(paths[2], relative), "rb") as b:
            assert a.read() == b.read(), relative
    assert [r["subject"] for r in _manifest(paths[1])] == subjects


def test_cli_unknown_effect_and_subject_exit_2(tmp_path, capsys):
    from data_pipelines.phantom import __main__ as cli

    for argv, needle in ((["--without", "gibs"], "unknown effect 'gibs'"),
                         (["--subjects", "sub-099"], "'sub-099' is not in preset tiny"),
                         (["--jobs", "0"], "--jobs must be >= 1")):
        code = cli.main(["--out", str(tmp_path / "c"), "--preset", "tiny"] + argv) \
            if argv[0] != "--jobs" else _exit_code(cli, tmp_path, argv)
        err = capsys.readouterr().err
        assert code == 2 and needle in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "c").exists()


def _exit_code(cli, tmp_path, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(["--out", str(tmp_path / "c"), "--preset", "tiny"] + argv)
    return info.value.code


def test_build_workers_start_with_one_blas_thread_each_and_the_users_settings_win(
        monkeypatch):
    # Two workers on this machine's cores share them out; a variable the user set is kept;
    # the parent's own environment is left as it was.
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "12345")
    names = ["OPENBLAS_NUM_THREADS", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_"]
    seen = writer.run_parallel(os.getenv, names, TINY, simulate.model_for(TINY), jobs=2)
    cores = writer.available_cores()
    assert seen == [str(max(1, cores // 2)), "0", "12345"]
    assert "OPENBLAS_NUM_THREADS" not in os.environ
    assert "MALLOC_MMAP_MAX_" not in os.environ


def test_default_jobs_fit_the_available_memory(monkeypatch):
    # The per-worker budget covers the peaks measured (max RSS: 2.7 GiB quick, 6.7 GiB at
    # 1 mm); a 32-core, 64 GiB workstation builds the paper preset with 8 workers, not 32;
    # without /proc/meminfo every core is used.
    gib = 2**30
    paper, quick = presets.PRESETS["paper"], presets.PRESETS["quick"]
    assert 6.7 * gib <= writer.worker_memory_bytes(paper) <= 9 * gib
    assert 2.7 * gib <= writer.worker_memory_bytes(quick) <= 4 * gib
    monkeypatch.setattr(writer, "available_cores", lambda: 32)
    monkeypatch.setattr(writer, "available_memory_bytes", lambda: 64 * gib)
    assert writer.default_jobs(paper) == 8
    assert writer.default_jobs(quick) == 23
    assert writer.default_jobs() == 32
    monkeypatch.setattr(writer, "available_memory_bytes", lambda: 3 * gib)
    assert writer.default_jobs(paper) == 1
    monkeypatch.setattr(writer, "available_memory_bytes", lambda: None)
    assert writer.default_jobs(paper) == 32
