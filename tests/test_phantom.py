"""The digital phantom cohort: determinism, layout, physics values, lesion, CLI, atomicity."""

import csv
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from data_pipelines.phantom import __main__ as cli
from data_pipelines.phantom import presets, simulate, writer
from qsnet_jax.physics import epg, signal

TINY = presets.PRESETS["tiny"]


def _manifest(root):
    with open(os.path.join(root, "manifest.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _load(root, relative):
    return np.asarray(nib.load(os.path.join(root, relative)).dataobj)


@pytest.fixture(scope="module")
def gbm_subject():
    """sub-004 of the tiny seed-0 cohort (the first gbm_train subject), in memory."""
    spec = writer.subject_specs(TINY, 0)[3]
    assert spec.subject == "sub-004" and spec.group == "gbm"
    return spec, simulate.simulate_subject(spec, TINY)


def test_manifest_layout_and_counts(tiny_cohort):
    rows = _manifest(tiny_cohort)
    with open(os.path.join(tiny_cohort, "manifest.csv")) as f:
        assert f.readline().strip() == ",".join(writer.MANIFEST_COLUMNS)
    counts = {}
    for row in rows:
        key = (row["split"], row["group"], row["site"])
        counts[key] = counts.get(key, 0) + 1
        assert (row["labels"] != "") == (row["group"] == "gbm")
        for column in writer.MANIFEST_COLUMNS[4:]:
            if row[column]:
                assert row[column] == f"{row['subject']}/{column}.nii.gz"
                assert os.path.isfile(os.path.join(tiny_cohort, row[column]))
    assert counts == {(s, g, site): n for s, g, site, n in TINY.splits}
    assert counts[("external_test", "healthy", "B")] == 1
    assert len(rows) == 9


def test_files_affine_dtype_units(tiny_cohort):
    row = _manifest(tiny_cohort)[3]
    images = {c: nib.load(os.path.join(tiny_cohort, row[c]))
              for c in writer.MANIFEST_COLUMNS[4:] if c != "mrf_subspace"}
    reference = images["t1map"].affine
    for name, image in images.items():
        np.testing.assert_array_equal(image.affine, reference)
        assert image.shape[:2] == TINY.in_plane and image.shape == images["t1map"].shape
        np.testing.assert_allclose(image.header.get_zooms(), (4.0, 4.0, 4.0))
        expected = np.uint8 if name in ("brain_mask", "labels") else np.float32
        assert image.get_data_dtype() == expected
    assert nib.aff2axcodes(reference) == ("R", "A", "S")
    descrip = {n: im.header["descrip"].item().decode() for n, im in images.items()}
    assert descrip["t1map"] == "T1 ms" and descrip["t2map"] == "T2 ms"
    assert descrip["pdmap"] == "PD relative" and descrip["t2w"] == "a.u."


def test_same_seed_same_bytes_other_seed_differs(tiny_cohort, gbm_subject, tmp_path):
    spec, volumes = gbm_subject
    writer.write_subject(str(tmp_path), spec, volumes)
    for name in ("t1map", "t2flair", "swi", "labels"):
        relative = f"{spec.subject}/{name}.nii.gz"
        with open(tmp_path / relative, "rb") as a, open(os.path.join(tiny_cohort, relative),
                                                       "rb") as b:
            assert a.read() == b.read(), name
    other = simulate.simulate_subject(simulate.SubjectSpec("sub-004", "gbm", "A", "gbm_train",
                                                           (1, 4)), TINY)
    assert other["t1map"].shape != volumes["t1map"].shape or not np.array_equal(
        other["t1map"], volumes["t1map"])
    assert not np.array_equal(other["t2w"][:, :, :10], volumes["t2w"][:, :, :10])


def test_tissue_values_in_pure_voxels(gbm_subject):
    _, out = gbm_subject
    f, brain = out["fractions"], out["brain_mask"] > 0
    # the B1-free dictionary biases the maps where B1 is off: judge where it is near 1
    near_nominal = np.abs(out["b1"] - 1.0) < 0.08

    def median(name, tissue, threshold=0.9):
        sel = brain & (f[tissue] > threshold) & (out["labels"] == 0) & near_nominal
        assert sel.sum() >= 5, (tissue, sel.sum())
        return float(np.median(out[name][sel]))

    # WM 780-860 ms, 60-75 ms (docs/design.md); tiny matches on a 10% grid: allow for it
    assert 740.0 < median("t1map", "wm") < 960.0
    assert 55.0 < median("t2map", "wm") < 83.0
    assert 1250.0 < median("t1map", "cgm") < 1800.0
    assert 3500.0 < median("t1map", "csf", 0.8) < 5000.0
    assert 0.6 < median("pdmap", "wm") / median("pdmap", "csf", 0.8) < 0.85
    assert median("t2flair", "csf", 0.8) < 0.3 * median("t2flair", "wm")  # CSF nulled
    assert median("t2w", "csf", 0.8) > 2.0 * median("t2w", "wm")
    assert median("t1w", "csf", 0.8) < 0.7 * median("t1w", "wm")
    assert median("t1flair", "csf", 0.8) < 0.5 * median("t1flair", "wm")


def test_lesion_labels_edema_in_white_matter_rim_around_core(gbm_subject):
    _, out = gbm_subject
    labels, f, healthy = out["labels"], out["fractions"], out["healthy_fractions"]
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    edema = labels == 2
    assert healthy["wm"][edema].mean() > 2.0 * (healthy["cgm"] + healthy["csf"])[edema].mean()
    # lesion lies in brain; tumor ordered core -> rim -> edema from its centre
    assert not np.any((labels > 0) & (out["brain_mask"] == 0))
    centre = np.argwhere(labels > 0).mean(axis=0)
    dist = {k: np.linalg.norm(np.argwhere(labels == k) - centre, axis=1).mean()
            for k in (1, 2, 3)}
    assert dist[1] < dist[3] < dist[2]
    core = (f["necrosis"] + f["hemorrhage"]) > 0.5
    shell = ndimage.binary_dilation(core) & ~core & (out["brain_mask"] > 0)
    assert np.mean(f["enhancing"][shell] > 0.0) > 0.9  # the rim encloses the core


def test_partial_volume_bright_rim_on_synthetic_flair(gbm_subject):
    """Signal-equation T2-FLAIR from the matched maps over-shoots at GM/CSF borders."""
    _, out = gbm_subject
    f, brain = out["fractions"], out["brain_mask"] > 0
    protocol = signal.site_protocols("A")["t2flair"]
    pd = out["pdmap"] / out["receive_field"]
    synthetic = np.asarray(signal.synthesize(protocol, pd, out["t1map"], out["t2map"]))
    ratio = synthetic / np.maximum(out["truth"]["t2flair"], 1e-6)
    healthy = brain & (out["labels"] == 0)
    pure_gm = healthy & (f["cgm"] > 0.85)
    # voxels that are GM with 15-40% CSF and nothing else
    border = healthy & (f["csf"] > 0.15) & (f["csf"] < 0.4) & (f["cgm"] + f["csf"] > 0.95)
    assert border.sum() > 50
    assert ratio[border].mean() > 1.15 * np.median(ratio[pure_gm])


def test_fingerprint_tables_interpolate_accurately():
    model = simulate.model_for(TINY)
    rng = np.random.default_rng(0)
    for name in ("wm", "csf", "necrosis"):
        table = model.tables[name]
        n1, n2, _, _ = table.values.shape
        t1 = table.t1_lo * (1 + table.step) ** rng.uniform(0, n1 - 1, 20)
        t2 = table.t2_lo * (1 + table.step) ** rng.uniform(0, n2 - 1, 20)
        b1 = rng.uniform(0.8, 1.2, 20)
        direct = model.dictionary.compress(np.asarray(epg.simulate_fisp(
            model.schedule, t1, t2, b1)))
        error = np.linalg.norm(table.interpolate(t1, t2, b1) - direct, axis=1)
        assert np.max(error / np.linalg.norm(direct, axis=1)) < 5e-3, name


@pytest.mark.parametrize("argv, needle", [
    (["--preset", "huge"], "unknown preset"),
    (["--preset", "tiny", "--healthy", "-1"], "--healthy must be >= 0"),
    (["--preset", "tiny", "--site", "C"], "unknown site"),
])
def test_cli_bad_input_one_line_exit_2(argv, needle, tmp_path, capsys):
    code = cli.main(["--out", str(tmp_path / "cohort")] + argv)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "cohort").exists()


def test_cli_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(tmp_path), "--preset", "tiny", "--bogus"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert cli.main(["--out", str(tmp_path), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def explode(spec, preset, **kwargs):
        calls.append(spec.subject)
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate, "simulate_subject", explode)
    with pytest.raises(KeyboardInterrupt):
        writer.build_cohort(str(tmp_path / "cohort"), "tiny", 0, jobs=1)
    assert calls == ["sub-001"] and os.listdir(tmp_path) == []


def _design_rows(preset_name, subject_prefix="sub"):
    """Manifest rows with the subjects per split of a preset's design (no images)."""
    rows = []
    for split, group, site, count in presets.resolve_preset(preset_name).splits:
        rows += [{"subject": f"{subject_prefix}-{len(rows) + 1:03d}", "group": group,
                  "site": site, "split": split} for _ in range(count)]
    return rows


def test_ensure_cohort_race_loser_uses_winner(tmp_path, monkeypatch):
    target = writer.cohort_path("tiny", 7, str(tmp_path))

    def build_while_another_wins(root, preset, seed, **kwargs):
        writer.write_manifest(root, [])
        os.makedirs(target)  # the other process renames its cohort first
        writer.write_manifest(target, _design_rows("tiny", "winner"))

    monkeypatch.setattr(writer, "build_into", build_while_another_wins)
    assert writer.ensure_cohort("tiny", 7, str(tmp_path)) == target
    assert _manifest(target)[0]["subject"] == "winner-001"
    # the loser's temporary folder is gone
    assert os.listdir(tmp_path) == [f"tiny-{writer.COHORT_FORMAT}-seed7"]
    assert writer.ensure_cohort("tiny", 7, str(tmp_path)) == target  # cached: no build


def test_ensure_cohort_rebuilds_a_cache_made_by_an_earlier_design(tmp_path, monkeypatch):
    # the quick preset once had 2 gbm_calib subjects; a cache from then must not be used
    # as if it were today's preset
    target = writer.cohort_path("tiny", 0, str(tmp_path))
    os.makedirs(target)
    stale = _design_rows("tiny", "old")
    writer.write_manifest(target, [r for r in stale if r["split"] != "gbm_calib"])
    builds, lines = [], []

    def build(root, preset, seed, **kwargs):
        builds.append(seed)
        writer.write_manifest(root, _design_rows("tiny", "new"))

    monkeypatch.setattr(writer, "build_into", build)
    assert writer.ensure_cohort("tiny", 0, str(tmp_path), log=lines.append) == target
    assert builds == [0] and _manifest(target)[0]["subject"] == "new-001"
    assert any("earlier version of preset 'tiny'" in line for line in lines)
    # the stale one swapped out, no leftovers
    assert os.listdir(tmp_path) == [f"tiny-{writer.COHORT_FORMAT}-seed0"]
    assert writer.ensure_cohort("tiny", 0, str(tmp_path)) == target and builds == [0]
