"""data_pipelines.cohort: reading, validation (every problem in one report), normalization."""

import csv
import gzip
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import cohort as cohort_lib

SHAPE = (8, 10, 6)
CHANNELS = ("t1map", "t2map", "pdmap", "t1w", "t2w", "t1flair", "t2flair", "swi")
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
HEADER = ["subject", "group", "site", "split", *CHANNELS, "brain_mask", "labels"]
# (subject, group, site, split, number of slices)
TINY_SUBJECTS = (
    ("h0", "healthy", "A", "healthy_train", 6),
    ("h1", "healthy", "A", "healthy_train", 7),
    ("h2", "healthy", "B", "healthy_train", 5),
    ("g0", "gbm", "A", "gbm_test", 6),
)


def subject_arrays(index, nz, shape=SHAPE[:2]):
    """Known raw volumes of one subject: quantitative maps in ms, weighted images > 0, a box
    brain mask (slice 0 of every subject has no brain), labels for GBM subjects."""
    rng = np.random.default_rng(100 + index)
    x, y = shape
    mask = np.zeros((x, y, nz), np.uint8)
    mask[1:x - 1, 1:y - 1, 1:] = 1
    vols = {
        "t1map": rng.uniform(500, 4500, (x, y, nz)),
        "t2map": rng.uniform(40, 2000, (x, y, nz)),
        "pdmap": rng.uniform(0.5, 1.0, (x, y, nz)),
    }
    for c in CHANNELS[3:]:
        vols[c] = rng.uniform(0.1, 10.0, (x, y, nz))
    # the z index is visible in the data: it makes slice-order errors obvious
    for c in vols:
        vols[c] = (vols[c] * (1 + 0.01 * np.arange(nz))).astype(np.float32)
    labels = np.zeros((x, y, nz), np.uint8)
    labels[3:5, 4:7, 2:4] = rng.integers(1, 4, (2, 3, 2))
    return vols, mask, labels


def save(path, data, affine=AFFINE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)


def write_tiny_cohort(root, subjects=TINY_SUBJECTS, shape=SHAPE[:2], labels_for_gbm=True):
    """A cohort of known values; returns {subject: (raw volumes, mask, labels)}."""
    os.makedirs(root, exist_ok=True)
    truth, rows = {}, []
    for i, (sid, group, site, split, nz) in enumerate(subjects):
        vols, mask, labels = subject_arrays(i, nz, shape)
        row = [sid, group, site, split]
        for c in CHANNELS:
            save(os.path.join(root, sid, f"{c}.nii.gz"), vols[c])
            row.append(f"{sid}/{c}.nii.gz")
        save(os.path.join(root, sid, "brain_mask.nii.gz"), mask)
        row.append(f"{sid}/brain_mask.nii.gz")
        if group == "gbm" and labels_for_gbm:
            save(os.path.join(root, sid, "labels.nii.gz"), labels)
            row.append(f"{sid}/labels.nii.gz")
        else:
            labels = np.zeros_like(labels)
            row.append("")
        rows.append(row)
        truth[sid] = (vols, mask, labels)
    with open(os.path.join(root, "manifest.csv"), "w", newline="") as f:
        csv.writer(f).writerows([HEADER, *rows])
    return truth


# docs/design.md section 3, typed here so that the expectations do not come from the code
# under test: (lo, hi) ms of the log transform; the brain percentile that maps to 1.
LOG_RANGES_MS = {"t1map": (100.0, 5000.0), "t2map": (10.0, 2500.0)}
BRAIN_PERCENTILE = 99.5


def reference_normalize(name, volume, mask):
    """The design's normalization in float64: log(T / lo) / log(hi / lo) clipped to [0, 1]
    (T <= 0 -> 0) for T1/T2; volume / its 99.5th brain percentile, clipped, otherwise;
    background 0."""
    volume = np.asarray(volume, np.float64)
    brain = np.asarray(mask) > 0
    if name in LOG_RANGES_MS:
        lo, hi = LOG_RANGES_MS[name]
        out = np.log(np.maximum(volume, lo) / lo) / np.log(hi / lo)
        out = np.where(volume > 0, np.clip(out, 0.0, 1.0), 0.0)
    else:
        out = np.clip(volume / np.percentile(volume[brain], BRAIN_PERCENTILE), 0.0, 1.0)
    return np.where(brain, out, 0.0)


def normalized_truth(vols, mask):
    return {c: reference_normalize(c, v, mask) for c, v in vols.items()}


def test_reference_normalize_at_hand_values():
    # the reference itself, at numbers worked out by hand: T1 100 -> 0, 5000 -> 1, their
    # geometric mean -> 0.5; 1..201 in the brain: the 99.5th percentile is 200
    mask = np.ones(3)
    np.testing.assert_allclose(reference_normalize("t1map", [100, 5000, 500000**0.5], mask),
                               [0, 1, 0.5], atol=1e-12)
    values = np.arange(1, 202, dtype=np.float64)
    out = reference_normalize("t1w", values, np.ones(201))
    np.testing.assert_allclose(out[[0, 99, 199, 200]], [1 / 200, 0.5, 1.0, 1.0], rtol=1e-12)


def test_clean_cohort_loads_normalized_in_ras(tmp_path):
    truth = write_tiny_cohort(tmp_path)
    assert cohort_lib.check_cohort(tmp_path) == []
    records = cohort_lib.read_manifest(tmp_path)
    assert [r.subject for r in records] == ["h0", "h1", "h2", "g0"]
    assert records[3].split == "gbm_test" and records[3].files["labels"] == "g0/labels.nii.gz"
    assert "labels" not in records[0].files
    sub = cohort_lib.load_subject(tmp_path, records[3])
    vols, mask, labels = truth["g0"]
    for c in CHANNELS:
        np.testing.assert_allclose(sub.volumes[c], reference_normalize(c, vols[c], mask),
                                   rtol=0, atol=1e-6)
        assert sub.volumes[c].dtype == np.float32
    np.testing.assert_array_equal(sub.brain_mask, mask)
    np.testing.assert_array_equal(sub.labels, labels)
    np.testing.assert_allclose(sub.affine, AFFINE)
    # healthy subject without labels: zeros
    assert not cohort_lib.load_subject(tmp_path, records[0], ["t1map"]).labels.any()


def test_las_file_is_flipped_to_ras(tmp_path):
    write_tiny_cohort(tmp_path, subjects=TINY_SUBJECTS[:1])
    vols, mask, _ = subject_arrays(0, 6)
    las = AFFINE.copy()
    las[0, 0] = -2.0
    las[0, 3] = 2.0 * (SHAPE[0] - 1)  # same world box, x stored right-to-left
    for c in CHANNELS:
        save(tmp_path / "h0" / f"{c}.nii.gz", vols[c][::-1], las)
    save(tmp_path / "h0" / "brain_mask.nii.gz", mask[::-1], las)
    record = cohort_lib.read_manifest(tmp_path)[0]
    sub = cohort_lib.load_subject(tmp_path, record, ["t1map", "t1w"])
    np.testing.assert_allclose(sub.volumes["t1map"],
                               reference_normalize("t1map", vols["t1map"], mask), atol=1e-6)
    np.testing.assert_allclose(sub.affine, AFFINE, atol=1e-6)


def test_seconds_converted_when_told_and_resample_when_told(tmp_path):
    write_tiny_cohort(tmp_path, subjects=TINY_SUBJECTS[:1])
    vols, mask, _ = subject_arrays(0, 6)
    save(tmp_path / "h0" / "t1map.nii.gz", vols["t1map"] / 1000.0)
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0  # one voxel to the right: the same data resampled moves by a voxel
    save(tmp_path / "h0" / "t2w.nii.gz", vols["t2w"], shifted)
    record = cohort_lib.read_manifest(tmp_path)[0]
    with pytest.raises(cohort_lib.CohortError) as err:
        cohort_lib.load_subject(tmp_path, record)
    assert "seconds" in str(err.value) and "affine mismatch" in str(err.value)
    sub = cohort_lib.load_subject(tmp_path, record, convert_seconds=True, resample=True)
    np.testing.assert_allclose(sub.volumes["t1map"],
                               reference_normalize("t1map", vols["t1map"], mask), atol=2e-6)
    expected = np.zeros_like(vols["t2w"])
    expected[1:] = vols["t2w"][:-1]
    np.testing.assert_allclose(sub.volumes["t2w"], reference_normalize("t2w", expected, mask),
                               atol=1e-6)


def test_mask_computed_when_absent(tmp_path):
    rng = np.random.default_rng(0)
    shape = (20, 22, 12)
    grid = np.indices(shape).astype(np.float32)
    center = np.array(shape, np.float32)[:, None, None, None] / 2
    brain = (((grid - center) / np.array([7, 8, 4])[:, None, None, None]) ** 2).sum(0) < 1
    pd = np.where(brain, 0.8, 0.02) + rng.uniform(0, 0.02, shape)
    t1 = np.where(brain, 1000.0, 0.0) + rng.uniform(0, 5, shape)
    os.makedirs(tmp_path / "s", exist_ok=True)
    save(tmp_path / "s" / "pd.nii.gz", pd.astype(np.float32))
    save(tmp_path / "s" / "t1.nii.gz", t1.astype(np.float32))
    (tmp_path / "manifest.csv").write_text(
        "subject,group,site,split,t1map,pdmap,brain_mask\ns,healthy,A,healthy_test,"
        "s/t1.nii.gz,s/pd.nii.gz,\n")
    sub = cohort_lib.load_subject(tmp_path, cohort_lib.read_manifest(tmp_path)[0])
    assert sub.mask_computed
    agreement = (sub.brain_mask.astype(bool) == brain).mean()
    assert agreement > 0.97, agreement
    assert set(sub.volumes) == {"t1map", "pdmap"}


def break_cohort(root):
    """The tiny cohort with one deliberate problem per subject file; returns the expected
    (subject, file suffix, message fragment) triples."""
    subjects = TINY_SUBJECTS + (("h3", "healthy", "B", "Healthy-Train", 6),
                                ("h1", "healthy", "A", "healthy_test", 7))
    write_tiny_cohort(root, subjects=subjects)
    vols, mask, _ = subject_arrays(0, 6)
    os.remove(root / "h0" / "t2w.nii.gz")  # missing file
    with open(root / "h0" / "swi.nii.gz", "rb") as f:
        data = f.read()
    with open(root / "h0" / "swi.nii.gz", "wb") as f:  # truncated gzip
        f.write(data[: len(data) // 2])
    with gzip.open(root / "h2" / "t1w.nii.gz", "wb") as f:  # not NIfTI at all
        f.write(b"this is not a NIfTI file" * 40)
    save(root / "h1" / "t2map.nii.gz", np.zeros((8, 10, 5), np.float32) + 50)  # shape
    moved = AFFINE.copy()
    moved[1, 3] = 0.5
    save(root / "h1" / "t1flair.nii.gz", subject_arrays(1, 7)[0]["t1flair"], moved)  # affine
    with_nan = vols["t2flair"].copy()
    with_nan[2, 3, 1] = np.nan
    save(root / "g0" / "t2flair.nii.gz", with_nan)  # NaN
    save(root / "g0" / "t1map.nii.gz", vols["t1map"] / 1000.0)  # seconds
    save(root / "h2" / "pdmap.nii.gz", np.zeros((8, 10, 5, 2), np.float32))  # 4D
    return [
        ("h0", "h0/t2w.nii.gz", "missing file"),
        ("h0", "h0/swi.nii.gz", "cannot read NIfTI"),
        ("h2", "h2/t1w.nii.gz", "cannot read NIfTI"),
        ("h1", "h1/t2map.nii.gz", "shape mismatch"),
        ("h1", "h1/t1flair.nii.gz", "affine mismatch"),
        ("g0", "g0/t2flair.nii.gz", "1 NaN"),
        ("g0", "g0/t1map.nii.gz", "seconds"),
        ("h2", "h2/pdmap.nii.gz", "4D volume"),
        ("h3", "manifest.csv", "unknown split name 'Healthy-Train'"),
        ("h1", "manifest.csv", "duplicated subject id 'h1'"),
    ]


def test_broken_cohort_every_problem_in_one_report(tmp_path):
    expected = break_cohort(tmp_path)
    problems = cohort_lib.check_cohort(tmp_path)
    for subject, suffix, fragment in expected:
        hits = [p for p in problems
                if p.subject == subject and p.file.endswith(suffix) and fragment in p.message]
        assert hits, (subject, suffix, fragment, [str(p) for p in problems])
    # nothing reported on the untouched files
    assert not [p for p in problems if p.file.endswith(("h0/t1map.nii.gz", "g0/t2w.nii.gz"))]
    with pytest.raises(cohort_lib.CohortError) as err:
        cohort_lib.read_manifest(tmp_path)
    assert "duplicated subject id 'h1'" in str(err.value)


def test_load_subject_error_names_subject_file_and_problem(tmp_path):
    write_tiny_cohort(tmp_path, subjects=TINY_SUBJECTS[:1])
    vals = np.full((8, 10, 6), -3.0, np.float32)
    save(tmp_path / "h0" / "t2map.nii.gz", vals)
    save(tmp_path / "h0" / "brain_mask.nii.gz", np.zeros((8, 10, 6), np.uint8))
    record = cohort_lib.read_manifest(tmp_path)[0]
    with pytest.raises(cohort_lib.CohortError) as err:
        cohort_lib.load_subject(tmp_path, record)
    text = str(err.value)
    assert "h0: " in text and "t2map.nii.gz: 480 negative values" in text
    assert "brain_mask.nii.gz: empty brain mask" in text


def test_manifest_level_problems(tmp_path):
    assert "missing manifest.csv" in str(cohort_lib.check_cohort(tmp_path)[0])
    (tmp_path / "manifest.csv").write_text("subject,group,t1map\na,healthy,a.nii.gz\n")
    problems = cohort_lib.check_cohort(tmp_path)
    assert len(problems) == 1 and "missing required column(s) ['site', 'split']" in \
        problems[0].message
    (tmp_path / "manifest.csv").write_text(
        "subject,group,site,split,t1map\na,patient,,gbm_tset,a.nii.gz\n")
    messages = [p.message for p in cohort_lib.check_cohort(tmp_path)]
    assert any("group 'patient'" in m for m in messages)
    assert any("site ''" in m for m in messages)
    assert any("did you mean 'gbm_test'" in m for m in messages)
    assert any("missing file" in m for m in messages)


def run_cli(root):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "data_pipelines.cohort", "check", str(root)],
                          capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cli_clean_and_broken(tmp_path):
    write_tiny_cohort(tmp_path / "clean")
    result = run_cli(tmp_path / "clean")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["split", "group", "site", "subjects"]
    assert ["gbm_test", "gbm", "A", "1"] in [line.split() for line in lines]
    assert ["healthy_train", "healthy", "A", "2"] in [line.split() for line in lines]
    assert ["total", "4"] in [line.split() for line in lines]

    expected = break_cohort(tmp_path / "broken")
    result = run_cli(tmp_path / "broken")
    assert result.returncode == 2
    problem_lines = [line for line in result.stdout.splitlines()
                     if line.count(": ") >= 2 and not line.startswith("split")]
    expected_problems = cohort_lib.check_cohort(tmp_path / "broken")
    assert len(problem_lines) == len(expected_problems) >= len(expected)
    for subject, suffix, fragment in expected:
        assert any(line.startswith(f"{subject}: ") and suffix in line and fragment in line
                   for line in problem_lines), (subject, suffix, fragment)
