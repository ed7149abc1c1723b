"""The MRF subspace as network input: basis, projection and reconstruction against a NumPy
SVD; its normalization against hand-built numbers; the cohort checker's rank check; the
channel order through the pipeline (and its agreement with whole-volume synthesis); the
input-paradigm study end to end at tiny size."""

import csv
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from test_cohort import TINY_SUBJECTS, save, write_tiny_cohort

from configs import default
from data_pipelines import cohort as cohort_lib
from data_pipelines import input_pipeline as ip
from qsnet_jax import inference
from qsnet_jax.physics import channels as channels_lib
from qsnet_jax.physics import subspace
from qsnet_jax.physics.dictionary import build_dictionary, dictionary_grid
from qsnet_jax.physics.epg import simulate_fisp
from qsnet_jax.physics.mrf import fisp_schedule

RANK = 10
SCHEDULE = fisp_schedule(300)


@pytest.fixture(scope="module")
def fingerprints():
    """A coarse dictionary's fingerprints [M, T] and held-out tissues' fingerprints."""
    t1, t2, _ = dictionary_grid(t1_range=(100.0, 5000.0), t2_range=(10.0, 2500.0), step=0.3)
    grid = np.asarray(simulate_fisp(SCHEDULE, t1, t2, num_states=32), np.float64)
    held_t1 = np.array([830.0, 1450.0, 1200.0, 4100.0, 1700.0])
    held_t2 = np.array([68.0, 91.0, 60.0, 1800.0, 120.0])
    held = np.asarray(simulate_fisp(SCHEDULE, held_t1, held_t2, num_states=32), np.float64)
    return (t1, t2), grid, held


def numpy_reference(rows, rank):
    """Right singular vectors [T, k] and the energy share of the top k (np.linalg.svd)."""
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    _, s, vh = np.linalg.svd(unit, full_matrices=False)
    return vh[:rank].conj().T, float(np.sum(s[:rank] ** 2) / np.sum(s ** 2))


def projector(basis):
    return basis @ basis.conj().T


def test_basis_and_energy_match_numpy_svd(fingerprints):
    _, grid, _ = fingerprints
    basis, energy = subspace.temporal_basis(grid, RANK)
    ref_basis, ref_energy = numpy_reference(grid, RANK)
    assert basis.shape == (SCHEDULE.num_trs, RANK) and basis.dtype == np.complex64
    assert energy == pytest.approx(ref_energy, abs=1e-9)
    assert ref_energy > 0.999  # smooth FISP fingerprints: 10 vectors hold nearly everything
    # the same subspace (singular vectors are unique up to phase)
    np.testing.assert_allclose(projector(basis), projector(ref_basis), atol=2e-5)
    unit = grid / np.linalg.norm(grid, axis=1, keepdims=True)
    assert subspace.energy_captured(unit, basis) == pytest.approx(ref_energy, rel=1e-5)
    # the largest component of every basis vector is real and positive (reproducible)
    largest = basis[np.argmax(np.abs(basis), axis=0), np.arange(RANK)]
    np.testing.assert_allclose(largest.imag, 0, atol=1e-6)
    assert np.all(largest.real > 0)


def test_projection_then_reconstruction_recovers_to_the_basis_energy(fingerprints):
    _, grid, held = fingerprints
    basis, energy = subspace.temporal_basis(grid, RANK)
    unit = grid / np.linalg.norm(grid, axis=1, keepdims=True)
    # Complex fingerprints with an arbitrary phase per voxel: the phase changes nothing.
    rng = np.random.default_rng(0)
    phased = unit * np.exp(1j * rng.uniform(0, 2 * np.pi, (unit.shape[0], 1)))
    rebuilt = subspace.reconstruct(subspace.project(phased, basis), basis)
    lost = np.sum(np.abs(phased - rebuilt) ** 2) / np.sum(np.abs(phased) ** 2)
    assert lost == pytest.approx(1.0 - energy, rel=2e-2, abs=1e-7)
    # and the basis of the phased (complex) dictionary is the same subspace
    complex_basis, complex_energy = subspace.temporal_basis(phased, RANK)
    assert complex_energy == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(projector(complex_basis), projector(basis), atol=2e-5)
    # held-out tissues (between the grid points): the residual of the NumPy SVD basis
    ref_basis, _ = numpy_reference(grid, RANK)
    ref_rebuilt = held @ ref_basis.conj() @ ref_basis.T
    rebuilt = subspace.reconstruct(subspace.project(held, basis), basis)
    np.testing.assert_allclose(rebuilt.real, ref_rebuilt.real, atol=2e-4 * np.abs(held).max())
    relative = np.linalg.norm(held - rebuilt, axis=1) / np.linalg.norm(held, axis=1)
    assert np.all(relative < 0.03), relative
    # linear: a partial-volume mixture of fingerprints has the mixture of coefficients
    mixed = 0.2 * held[3] + 0.8 * held[1]
    np.testing.assert_allclose(subspace.project(mixed, basis),
                               0.2 * subspace.project(held[3], basis)
                               + 0.8 * subspace.project(held[1], basis), atol=1e-4)


def test_dictionary_basis_spans_the_same_subspace(fingerprints):
    (t1, t2), grid, _ = fingerprints
    dictionary = build_dictionary(SCHEDULE, t1, t2, rank=RANK, num_states=32)
    basis, energy = subspace.temporal_basis(grid, RANK)
    np.testing.assert_allclose(projector(dictionary.basis.astype(np.float64)),
                               projector(basis), atol=5e-5)
    assert dictionary.energy_kept == pytest.approx(energy, abs=1e-6)


def test_channel_layout_real_parts_then_imaginary_parts():
    c = np.array([[1 + 2j, 3 - 4j, -5 + 0.5j]], np.complex64)
    channels = subspace.coefficients_to_channels(c)
    np.testing.assert_array_equal(channels, [[1, 3, -5, 2, -4, 0.5]])
    np.testing.assert_array_equal(subspace.channels_to_coefficients(channels), c)
    with pytest.raises(ValueError, match="odd count 5"):
        subspace.channels_to_coefficients(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="not orthonormal"):
        subspace.check_basis(np.ones((6, 2)))


def test_normalization_removes_phase_and_one_global_scale_only():
    rng = np.random.default_rng(1)
    shape = (6, 7, 5)
    mask = np.zeros(shape, np.uint8)
    mask[1:5, 1:6, :] = 1
    amplitude = rng.uniform(0.5, 3.0, shape)
    phase = rng.uniform(-np.pi, np.pi, shape)
    # tissue-like relative coefficients c_j / c_1, varying per voxel
    relative = np.stack([np.ones(shape), rng.uniform(-0.6, 0.6, shape)
                         + 1j * rng.uniform(-0.3, 0.3, shape), rng.uniform(-2, 2, shape)
                         + 1j * rng.uniform(-1, 1, shape)], axis=-1)
    coefficients = amplitude[..., None] * np.exp(1j * phase)[..., None] * relative
    volume = np.concatenate([coefficients.real, coefficients.imag], -1).astype(np.float32)
    out = channels_lib.normalize_channel("mrf_subspace", volume, mask)
    scale = np.percentile(amplitude[mask > 0], 99.5)
    expected = amplitude[..., None] / scale * relative  # phase gone, c_1 real >= 0
    expected = np.concatenate([expected.real, expected.imag], -1)
    expected[mask == 0] = 0
    np.testing.assert_allclose(out, expected, atol=2e-5)
    assert out.shape == shape + (6,) and out.dtype == np.float32
    assert out.max() > 1.5 and out.min() < -1.5  # not clipped: coefficients are signed
    # a global gain is the one thing the scale removes
    np.testing.assert_allclose(channels_lib.normalize_channel("mrf_subspace", 7 * volume, mask),
                               out, atol=2e-5)


# ------------------------------------------------------------------ cohorts with a subspace

SUBSPACE_RANK = 3
NUM_TRS = 20


def known_basis():
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(NUM_TRS, SUBSPACE_RANK)) + 1j * rng.normal(size=(NUM_TRS,
                                                                              SUBSPACE_RANK))
    return np.linalg.qr(raw)[0].astype(np.complex64)


def known_subspace(index, nz, shape, planes=2 * SUBSPACE_RANK):
    """Channel p holds (p + 1) (-1)^p (1 + 0.01 z) times a voxel pattern; the imaginary part
    of c_1 (channel k) is 0 and c_1 > 0, so normalization only divides by one scale."""
    rng = np.random.default_rng(200 + index)
    pattern = rng.uniform(0.8, 1.2, shape + (nz,))
    zs = 1 + 0.01 * np.arange(nz)
    out = np.stack([(p + 1) * (-1) ** p * pattern * zs for p in range(planes)], -1)
    out[..., planes // 2] = 0
    return out.astype(np.float32)


def expected_subspace(raw, mask):
    scale = np.percentile(raw[..., 0][mask > 0], 99.5)
    return np.where(mask[..., None] > 0, raw / scale, 0).astype(np.float32)


def add_subspace_column(root, volumes, basis=None):
    """Add an mrf_subspace column (files from `volumes` {subject: [X, Y, Z, 2k]}) and the
    basis to a cohort's manifest."""
    with open(os.path.join(root, "manifest.csv"), newline="") as f:
        rows = list(csv.reader(f))
    rows[0].append("mrf_subspace")
    for row in rows[1:]:
        path = f"{row[0]}/mrf_subspace.nii.gz"
        save(os.path.join(root, path), volumes[row[0]])
        row.append(path)
    with open(os.path.join(root, "manifest.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)
    np.save(os.path.join(root, "mrf_basis.npy"), known_basis() if basis is None else basis)


def write_subspace_cohort(root):
    truth = write_tiny_cohort(root)
    volumes = {sid: known_subspace(i, nz, (8, 10))
               for i, (sid, *_, nz) in enumerate(TINY_SUBJECTS)}
    add_subspace_column(root, volumes)
    return truth, volumes


def test_cohort_loads_subspace_and_checks_its_rank(tmp_path):
    truth, volumes = write_subspace_cohort(tmp_path)
    assert cohort_lib.check_cohort(tmp_path) == []
    record = cohort_lib.read_manifest(tmp_path)[1]
    loaded = cohort_lib.load_subject(tmp_path, record, ("t1map", "mrf_subspace"))
    np.testing.assert_allclose(loaded.volumes["mrf_subspace"],
                               expected_subspace(volumes["h1"], truth["h1"][1]), atol=1e-6)
    # one subject's file has 2 channels too many: one line naming that file
    save(os.path.join(tmp_path, "h2", "mrf_subspace.nii.gz"),
         known_subspace(2, 5, (8, 10), planes=8))
    problems = [str(p) for p in cohort_lib.check_cohort(tmp_path)]
    path = os.path.join(str(tmp_path), "h2/mrf_subspace.nii.gz")
    assert problems == [f"h2: {path}: mrf_subspace has 8 channels but the cohort's "
                        "mrf_basis.npy has rank 3 (6 channels expected: real and imaginary "
                        "parts of each coefficient)"]
    with pytest.raises(cohort_lib.CohortError, match="has 8 channels"):
        cohort_lib.load_subject(tmp_path, cohort_lib.read_manifest(tmp_path)[2])
    # a 3D file where a 4D subspace belongs
    save(os.path.join(tmp_path, "h2", "mrf_subspace.nii.gz"), np.ones((8, 10, 5), np.float32))
    assert [str(p) for p in cohort_lib.check_cohort(tmp_path)] == [
        f"h2: {path}: a 3D volume of shape (8, 10, 5); mrf_subspace is a 4D volume "
        "[X, Y, Z, 2k]"]


def test_checker_missing_or_broken_basis_one_line_exit_2(tmp_path, capsys):
    write_subspace_cohort(tmp_path)
    basis_path = os.path.join(str(tmp_path), "mrf_basis.npy")
    np.save(basis_path, np.ones((NUM_TRS, SUBSPACE_RANK), np.complex64))
    problems = [str(p) for p in cohort_lib.check_cohort(tmp_path)]
    assert len(problems) == 1 and problems[0].startswith(f"-: {basis_path}: not a usable "
                                                         "temporal basis: the basis columns "
                                                         "are not orthonormal")
    os.remove(basis_path)
    assert cohort_lib.main(["check", str(tmp_path)]) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if "mrf_basis" in line]
    assert lines == [f"-: {basis_path}: missing file (a cohort with an mrf_subspace column "
                     "needs the temporal basis [T, k] of its subspace)"]


# ------------------------------------------------------------------ pipeline channel order


@pytest.fixture(scope="module")
def subspace_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("subspace_cohort")
    truth, volumes = write_subspace_cohort(root)
    normalized = {}
    for sid, (vols, mask, _) in truth.items():
        normalized[sid] = {c: channels_lib.normalize_channel(c, v, mask) for c, v in vols.items()}
        normalized[sid]["mrf_subspace"] = expected_subspace(volumes[sid], mask)
        normalized[sid]["mask"] = mask
    return str(root), normalized


def data_config(inputs, **overrides):
    cfg = default.get_config().data
    cfg.input_channels = inputs
    cfg.target_channels = ("t2flair", "swi")
    cfg.flip_lr = False
    cfg.intensity_jitter = 0.0
    cfg.min_brain_fraction = 0.05
    cfg.update(overrides)
    return cfg


def expected_inputs(volumes, z, context, inputs):
    """Input-major planes written out by hand: per channel, per plane, slices z-k .. z+k."""
    nz = volumes["mask"].shape[2]
    planes = []
    for name in inputs:
        volume = volumes[name]
        count = volume.shape[3] if volume.ndim == 4 else 1
        for p in range(count):
            for d in range(-context, context + 1):
                zz = min(max(z + d, 0), nz - 1)
                planes.append(volume[:, :, zz, p] if volume.ndim == 4 else volume[:, :, zz])
    return np.stack(planes, -1)


@pytest.mark.parametrize("inputs, context", [(("mrf_subspace",), 0),
                                             (("t1map", "mrf_subspace", "pdmap"), 1)])
def test_channels_keep_their_order_through_the_pipeline(subspace_cohort, inputs, context):
    root, normalized = subspace_cohort
    config = data_config(inputs, context_slices=context)
    batches = list(ip.make_eval_iterator(root, "healthy_train", config, batch_size=5,
                                         process_index=0, process_count=1))
    planes = sum(6 if c == "mrf_subspace" else 1 for c in inputs) * (2 * context + 1)
    seen = 0
    for batch in batches:
        assert batch["inputs"].shape == (5, 8, 10, planes)
        for b in np.flatnonzero(batch["valid"]):
            subject, z = str(batch["subject_id"][b]), int(batch["slice_index"][b])
            want = expected_inputs(normalized[subject], z, context, inputs)
            np.testing.assert_allclose(batch["inputs"][b], want, atol=1e-6)
            seen += 1
    assert seen == 6 + 7 + 5
    # whole-volume synthesis stacks the same planes in the same order
    record = cohort_lib.read_manifest(root)[0]
    loaded = cohort_lib.load_subject(root, record, inputs)
    stacked = inference.stack_context(channels_lib.stack_planes(loaded.volumes, inputs),
                                      np.arange(5), context)
    first = batches[0]
    np.testing.assert_allclose(stacked, first["inputs"][:5], atol=1e-6)


def test_jitter_reaches_every_plane_of_a_weighted_input_only(subspace_cohort):
    root, normalized = subspace_cohort
    config = data_config(("t1w", "mrf_subspace"), context_slices=1, intensity_jitter=0.2)
    batches = ip.make_train_iterator(root, "healthy_train", config, batch_size=4, seed=3,
                                     process_index=0, process_count=1)
    for _ in range(3):
        batch = next(batches)
        for b in range(4):
            subject, z = str(batch["subject_id"][b]), int(batch["slice_index"][b])
            want = expected_inputs(normalized[subject], z, 1, ("t1w", "mrf_subspace"))
            got = batch["inputs"][b]
            np.testing.assert_allclose(got[..., 3:], want[..., 3:], atol=1e-6)
            inside = want[..., :3] > 0
            gains = got[..., :3][inside] / want[..., :3][inside]
            assert np.ptp(gains) < 1e-5 and 0.8 <= gains[0] <= 1.2


# ------------------------------------------------------------------ phantom cohort + study


def phantom_with_subspace(source_root, out_root, *, rank=6, num_trs=200):
    """A copy of a phantom cohort with an mrf_subspace column when it has none: each voxel's
    fingerprint simulated from its (matched) T1 and T2, times PD, projected on the basis of
    a coarse dictionary of the same (shortened) schedule."""
    shutil.copytree(source_root, out_root, ignore=shutil.ignore_patterns("tfds"))
    records = cohort_lib.read_manifest(out_root)
    if all(r.files.get("mrf_subspace") for r in records):
        return out_root
    schedule = fisp_schedule(num_trs)
    t1, t2, _ = dictionary_grid(t1_range=(100.0, 5000.0), t2_range=(10.0, 2500.0), step=0.2)
    basis, _ = subspace.temporal_basis(np.asarray(simulate_fisp(schedule, t1, t2,
                                                                num_states=32)), rank)
    volumes = {}
    for record in records:
        maps = {c: np.asarray(nib.load(record.path(out_root, c)).dataobj, np.float32)
                for c in ("t1map", "t2map", "pdmap")}
        inside = maps["pdmap"] > 0
        pairs, where = np.unique(np.stack([maps["t1map"][inside], maps["t2map"][inside]], 1),
                                 axis=0, return_inverse=True)
        curves = np.asarray(simulate_fisp(schedule, pairs[:, 0], np.minimum(pairs[:, 1],
                                                                              pairs[:, 0]),
                                          num_states=32))
        coefficients = np.zeros(maps["pdmap"].shape + (rank,), np.complex64)
        coefficients[inside] = subspace.project(curves, basis)[where.ravel()] * \
            maps["pdmap"][inside][:, None]
        volumes[record.subject] = subspace.coefficients_to_channels(coefficients)
    with open(os.path.join(out_root, "manifest.csv"), newline="") as f:
        rows = list(csv.reader(f))
    affines = {r.subject: nib.load(r.path(out_root, "t1map")).affine for r in records}
    rows[0].append("mrf_subspace")
    for row in rows[1:]:
        path = f"{row[0]}/mrf_subspace.nii.gz"
        nib.save(nib.Nifti1Image(volumes[row[0]], affines[row[0]]),
                 os.path.join(out_root, path))
        row.append(path)
    with open(os.path.join(out_root, "manifest.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)
    np.save(os.path.join(out_root, "mrf_basis.npy"), basis)
    return out_root


@pytest.mark.slow
def test_input_paradigm_study_runs_at_tiny_size(tmp_path, tiny_cohort):
    from configs import input_paradigms
    from experiments import synthesize
    from workflow import studies as study

    root = phantom_with_subspace(tiny_cohort, str(tmp_path / "cohort"))
    assert cohort_lib.check_cohort(root) == []
    config = input_paradigms.get_config("tiny")
    config.data.cohort_dir = root
    result = study.run_study(config, str(tmp_path / "study"))
    names = list(config.study.variants)
    assert result["variants"] == names and len(names) == 6
    with open(tmp_path / "study" / "comparison" / "metrics.json") as f:
        combined = json.load(f)
    assert {(t["a"], t["b"]) for t in combined["wilcoxon"]} == \
        {tuple(p) for p in config.study.pairs}
    for name in names:
        with open(combined["models"][name]["eval"]) as f:
            evaluated = json.load(f)
        assert evaluated["split"] == "gbm_test"
        with open(tmp_path / "study" / name / "config.json") as f:
            inputs = tuple(json.load(f)["data"]["input_channels"])
        assert inputs == input_paradigms.PARADIGMS[name.split("_", 1)[1]]
    # synthesize from the subspace alone, with the trained model
    record = next(r for r in cohort_lib.read_manifest(root) if r.split == "gbm_test")
    written = synthesize.main(["--workdir", str(tmp_path / "study" / "qsnet_subspace"),
                               "--manifest", os.path.join(root, "manifest.csv"),
                               "--subjects", record.subject, "--out", str(tmp_path / "synth")])
    image = nib.load(written[record.subject]["t2flair"])
    assert image.shape == nib.load(record.path(root, "t1map")).shape
    assert np.isfinite(np.asarray(image.dataobj)).all()
