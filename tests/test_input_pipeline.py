"""data_pipelines.tfds_builder + input_pipeline on a tiny NIfTI cohort of known values."""

import functools
import itertools
import os

import numpy as np
import pytest
import test_cohort
from test_cohort import TINY_SUBJECTS, normalized_truth, reference_normalize, write_tiny_cohort

from configs import default
from data_pipelines import input_pipeline as ip
from data_pipelines import tfds_builder

INPUTS = ("t1map", "t2map", "pdmap")
TARGETS = ("t1w", "t2w", "t1flair", "t2flair", "swi")
# The expected values are the design's normalization computed independently in float64
# (test_cohort.reference_normalize); the pipeline's float32 agrees to rounding.
assert_close = functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    raw = write_tiny_cohort(root)
    truth = {}
    for sid, (vols, mask, labels) in raw.items():
        truth[sid] = dict(normalized_truth(vols, mask), brain_mask=mask, labels=labels)
    return str(root), truth


def data_config(**overrides):
    cfg = default.get_config().data
    cfg.input_channels = INPUTS
    cfg.target_channels = TARGETS
    cfg.flip_lr = False
    cfg.intensity_jitter = 0.0
    cfg.min_brain_fraction = 0.05
    cfg.update(overrides)
    return cfg


def expected_slice(truth, sid, z, context=0, inputs=INPUTS):
    t = truth[sid]
    nz = t["brain_mask"].shape[2]
    planes = [t[c][:, :, min(max(z + d, 0), nz - 1)]
              for c in inputs for d in range(-context, context + 1)]
    return (np.stack(planes, -1), np.stack([t[c][:, :, z] for c in TARGETS], -1),
            t["brain_mask"][:, :, z, None].astype(np.float32),
            t["labels"][:, :, z, None].astype(np.int32))


def test_prepare_layout_and_metadata(cohort):
    root, _ = cohort
    builder = tfds_builder.prepare_cohort(root)
    assert builder.data_dir.startswith(os.path.join(root, "tfds", "qsnet_cohort", "c"))
    assert builder.builder_config.slice_shape == (8, 10)
    assert builder.info.splits["healthy_train"].num_examples == 6 + 7 + 5
    index = tfds_builder.subject_index(builder, "healthy_train")
    assert [(s["subject"], s["offset"], s["num_slices"]) for s in index] == \
        [("h0", 0, 6), ("h1", 6, 7), ("h2", 13, 5)]
    np.testing.assert_allclose(index[1]["brain_fraction"], [0] + [48 / 80] * 6, atol=1e-6)
    example = builder.as_data_source("gbm_test")[3]
    assert example["subject_id"] == b"g0" and example["slice_index"] == 3
    with pytest.raises(KeyError, match="split 'nope'"):
        tfds_builder.subject_index(builder, "nope")


def test_eval_round_trip_values_masks_labels(cohort):
    root, truth = cohort
    batches = list(ip.make_eval_iterator(root, "gbm_test", data_config(), batch_size=4,
                                         process_index=0, process_count=1))
    assert len(batches) == 2  # 6 slices -> 4 + 2 real + 2 padding
    np.testing.assert_array_equal(batches[1]["valid"], [1, 1, 0, 0])
    assert list(batches[1]["subject_id"]) == ["g0", "g0", "", ""]
    for batch in batches:
        assert batch["inputs"].dtype == np.float32 and batch["labels"].dtype == np.int32
        for b in np.flatnonzero(batch["valid"]):
            z = int(batch["slice_index"][b])
            inputs, targets, mask, labels = expected_slice(truth, "g0", z)
            assert_close(batch["inputs"][b], inputs)
            assert_close(batch["targets"][b], targets)
            np.testing.assert_array_equal(batch["brain_mask"][b], mask)
            np.testing.assert_array_equal(batch["labels"][b], labels)
        assert not batch["inputs"][batch["valid"] == 0].any()
    assert batches[0]["labels"].max() > 0  # the tumor labels of g0 made it through
    volumes = ip.assemble_volumes(batches)
    assert list(volumes) == ["g0"]
    t = truth["g0"]
    assert_close(volumes["g0"]["inputs"], np.stack([t[c] for c in INPUTS], -1))
    assert_close(volumes["g0"]["targets"], np.stack([t[c] for c in TARGETS], -1))
    np.testing.assert_array_equal(volumes["g0"]["labels"][..., 0], t["labels"])


def test_eval_context_and_extra_arrays_rebuild_every_volume(cohort):
    root, truth = cohort
    cfg = data_config(context_slices=2)
    batches = []
    for batch in ip.make_eval_iterator(root, "healthy_train", cfg, batch_size=5,
                                       process_index=0, process_count=1):
        batch["prediction"] = batch["targets"][..., :2] * 2  # a caller's per-slice array
        batches.append(batch)
    assert batches[0]["inputs"].shape == (5, 8, 10, 3 * 5)
    for batch in batches:
        for b in np.flatnonzero(batch["valid"]):
            sid, z = batch["subject_id"][b], int(batch["slice_index"][b])
            inputs, *_ = expected_slice(truth, sid, z, context=2)
            assert_close(batch["inputs"][b], inputs)
    # input-major order, edges replicated: slice 0 of h2, channel t2map = planes 5..9
    first = batches[0]
    assert first["subject_id"][0] == "h0" and first["slice_index"][0] == 0
    t2 = truth["h0"]["t2map"]
    for plane, zz in zip(range(5, 10), (0, 0, 0, 1, 2), strict=True):
        assert_close(first["inputs"][0, ..., plane], t2[:, :, zz])
    volumes = ip.assemble_volumes(batches)
    assert sorted(volumes) == ["h0", "h1", "h2"]
    for sid in volumes:
        t = truth[sid]
        assert_close(volumes[sid]["targets"], np.stack([t[c] for c in TARGETS], -1))
        assert_close(volumes[sid]["prediction"], np.stack([t[c] for c in TARGETS[:2]], -1) * 2,
                     atol=2e-6)
        np.testing.assert_array_equal(volumes[sid]["brain_mask"][..., 0], t["brain_mask"])
    with pytest.raises(ValueError, match="slices \\[0\\] missing"):
        ip.assemble_volumes([{k: v[1:] for k, v in batches[0].items()}])


def test_train_epoch_filters_and_shards_are_disjoint_and_cover(cohort):
    root, truth = cohort
    cfg = data_config()
    # brain fraction of slice 0 is 0 in every subject: it is filtered out
    everything = {(sid, z) for sid, _, _, split, nz in TINY_SUBJECTS
                  if split == "healthy_train" for z in range(1, nz)}
    seen = []
    for p in range(2):
        it = ip.make_train_iterator(root, "healthy_train", cfg, batch_size=1, seed=3,
                                    process_index=p, process_count=2)
        n = 8 if p == 0 else 7  # 15 slices split 8 + 7
        epoch = [next(it) for _ in range(n)]
        again = [next(it) for _ in range(n)]
        shard = [(b["subject_id"][0], int(b["slice_index"][0])) for b in epoch]
        assert len(set(shard)) == n  # one epoch visits each slice of the shard once
        assert {(b["subject_id"][0], int(b["slice_index"][0])) for b in again} == set(shard)
        assert shard != [(b["subject_id"][0], int(b["slice_index"][0])) for b in again]
        for b in epoch:
            inputs, targets, mask, labels = expected_slice(truth, b["subject_id"][0],
                                                           int(b["slice_index"][0]))
            assert_close(b["inputs"][0], inputs)
            assert_close(b["targets"][0], targets)
            np.testing.assert_array_equal(b["brain_mask"][0], mask)
        seen.append(set(shard))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == everything


def test_eval_shards_hold_whole_subjects_and_equal_batch_counts(cohort):
    root, _ = cohort
    runs = [list(ip.make_eval_iterator(root, "healthy_train", data_config(), batch_size=4,
                                       process_index=p, process_count=2)) for p in range(2)]
    assert len(runs[0]) == len(runs[1]) == 4  # h0+h1: 13 slices -> 4; h2: 5 -> 2 + 2 padding
    subjects = [set(ip.assemble_volumes(r)) for r in runs]
    assert subjects == [{"h0", "h1"}, {"h2"}]
    assert runs[1][-1]["valid"].sum() == 0


def test_resume_equals_uninterrupted_stream(cohort):
    root, _ = cohort
    cfg = data_config(flip_lr=True, intensity_jitter=0.1, context_slices=1,
                      input_channels=("t1map", "t1w"))
    # 15 slices, batch 4: 3 batches per epoch; steps 0..7 cross two epoch boundaries
    stream = list(itertools.islice(ip.make_train_iterator(
        root, "healthy_train", cfg, batch_size=4, seed=7, process_index=0, process_count=1), 8))
    for step in (1, 3, 7):
        resumed = next(ip.make_train_iterator(root, "healthy_train", cfg, batch_size=4, seed=7,
                                              start_step=step, process_index=0,
                                              process_count=1))
        for key in stream[step]:
            np.testing.assert_array_equal(resumed[key], stream[step][key], err_msg=key)
    other = next(ip.make_train_iterator(root, "healthy_train", cfg, batch_size=4, seed=8,
                                        process_index=0, process_count=1))
    assert not np.array_equal(other["inputs"], stream[0]["inputs"])


def test_augmentation_flips_together_and_jitters_only_qualitative_inputs(cohort):
    root, truth = cohort
    cfg = data_config(flip_lr=True, intensity_jitter=0.1, context_slices=1,
                      input_channels=("t1map", "t1w", "pdmap"))
    it = ip.make_train_iterator(root, "healthy_train", cfg, batch_size=5, seed=1,
                                process_index=0, process_count=1)
    flips, gains = [], []
    for batch in itertools.islice(it, 6):
        for b in range(5):
            sid, z = batch["subject_id"][b], int(batch["slice_index"][b])
            inputs, targets, mask, labels = expected_slice(truth, sid, z, 1, cfg.input_channels)
            flipped = not np.array_equal(batch["brain_mask"][b], mask) or \
                not np.allclose(batch["targets"][b], targets, rtol=0, atol=1e-6)
            if flipped:  # H = X, the left-right axis in RAS
                inputs, targets, mask, labels = (a[::-1] for a in (inputs, targets, mask, labels))
            flips.append(flipped)
            assert_close(batch["targets"][b], targets)
            np.testing.assert_array_equal(batch["brain_mask"][b], mask)
            np.testing.assert_array_equal(batch["labels"][b], labels)
            got = batch["inputs"][b]
            assert_close(got[..., 0:3], inputs[..., 0:3])  # t1map untouched
            assert_close(got[..., 6:9], inputs[..., 6:9])  # pdmap untouched
            # (the ratio to a float64 reference: keep values far above its 1e-6 rounding)
            brain = inputs[..., 3:6] > 0.05
            ratio = got[..., 3:6][brain] / inputs[..., 3:6][brain]
            np.testing.assert_allclose(ratio, ratio[0], rtol=5e-5)  # one gain, all 3 planes
            assert 0.9 <= ratio[0] <= 1.1
            gains.append(ratio[0])
    assert 5 < sum(flips) < 25  # both cases occur
    assert np.std(gains) > 0.02


def test_config_errors_and_stage_split(cohort, tmp_path):
    root, _ = cohort
    with pytest.raises(ValueError, match="unknown input channel"):
        ip.make_train_iterator(root, "healthy_train", data_config(input_channels=("t1",)),
                               batch_size=2, seed=0, process_index=0, process_count=1)
    config = default.get_config()
    assert ip.stage_split(config, "pretrain") == ("healthy_train", "healthy_test")
    assert ip.stage_split(config, "finetune") == ("gbm_train", "gbm_test")
    with pytest.raises(KeyError, match="unknown stage 'warmup'"):
        ip.stage_split(config, "warmup")
    # a cohort without t2w: its config differs, and asking for t2w is an error naming it
    small = tmp_path / "small"
    write_tiny_cohort(small, subjects=TINY_SUBJECTS[:1])
    lines = (small / "manifest.csv").read_text().splitlines()
    drop = lines[0].split(",").index("t2w")
    (small / "manifest.csv").write_text("\n".join(
        ",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in lines))
    builder = tfds_builder.prepare_cohort(small)
    assert "t2w" not in builder.builder_config.channels
    assert builder.builder_config.name != tfds_builder.prepare_cohort(root).builder_config.name
    with pytest.raises(ValueError, match="lack channel.*'h0': \\['t2w'\\]"):
        ip.make_eval_iterator(small, "healthy_train", data_config(), batch_size=2,
                              process_index=0, process_count=1)
    with pytest.raises(KeyError, match="split 'gbm_test' is not in cohort"):
        ip.make_eval_iterator(small, "gbm_test", data_config(), batch_size=2,
                              process_index=0, process_count=1)


def test_prepare_broken_cohort_reports_every_subject_and_writes_nothing(tmp_path):
    write_tiny_cohort(tmp_path, subjects=TINY_SUBJECTS)
    vols = np.full((8, 10, 6), 1.5, np.float32)  # T1 in seconds
    test_cohort.save(tmp_path / "h0" / "t1map.nii.gz", vols)
    test_cohort.save(tmp_path / "g0" / "t2w.nii.gz", np.zeros((8, 10, 5), np.float32))
    with pytest.raises(tfds_builder.cohort_lib.CohortError) as err:
        tfds_builder.prepare_cohort(tmp_path)
    text = str(err.value)
    assert "h0: " in text and "t1map.nii.gz" in text and "seconds" in text
    assert "g0: " in text and "t2w.nii.gz: shape mismatch" in text
    prepared = tmp_path / "tfds" / "qsnet_cohort"
    assert not [p for p in prepared.rglob("dataset_info.json")]
    # told to convert, the same cohort prepares (g0 fixed) and T1 comes out as in ms
    test_cohort.save(tmp_path / "g0" / "t2w.nii.gz", np.ones((8, 10, 6), np.float32))
    cfg = data_config(convert_seconds=True)
    batch = next(ip.make_eval_iterator(tmp_path, "healthy_train", cfg, batch_size=2,
                                       process_index=0, process_count=1))
    expected = reference_normalize("t1map", vols[:, :, 1] * 1000.0,
                                   batch["brain_mask"][1, ..., 0])
    np.testing.assert_allclose(batch["inputs"][1, ..., 0], expected, atol=1e-6)
