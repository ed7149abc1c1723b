"""Training on random patches (config.data.patch_size): every patch holds brain and equals the
slice cropped at its origin, the stream is seeded and resumable, tumor-aimed patches land on
the tumor, and evaluation still covers whole volumes.

The cohort's brain is a small box (4 x 5 voxels of a 20 x 24 slice), so a patch placed
anywhere would often miss it."""

import itertools
import os

import numpy as np
import pytest
from test_cohort import save, write_tiny_cohort

from configs import default
from data_pipelines import input_pipeline as ip
from qsnet_jax.physics.channels import normalize_channel

INPUTS = ("t1map", "t2map", "pdmap")
TARGETS = ("t1w", "t2w", "t1flair", "t2flair", "swi")
SHAPE = (20, 24)
BRAIN = (slice(12, 16), slice(3, 8))  # rows, columns of the brain box (slices 1 ..)
TUMOR = (slice(14, 16), slice(6, 8), slice(2, 4))  # inside the box, in slices 2 and 3
SUBJECTS = (
    ("h0", "healthy", "A", "healthy_train", 6),
    ("h1", "healthy", "A", "healthy_train", 7),
    ("g0", "gbm", "A", "gbm_train", 6),
    ("g1", "gbm", "A", "gbm_train", 5),
    ("g2", "gbm", "A", "gbm_test", 5),
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("patch_cohort"))
    raw = write_tiny_cohort(root, subjects=SUBJECTS, shape=SHAPE)
    truth = {}
    for sid, group, *_ in SUBJECTS:
        vols, _, _ = raw[sid]
        nz = next(iter(vols.values())).shape[2]
        mask = np.zeros(SHAPE + (nz,), np.uint8)
        mask[BRAIN[0], BRAIN[1], 1:] = 1
        labels = np.zeros_like(mask)
        save(os.path.join(root, sid, "brain_mask.nii.gz"), mask)
        if group == "gbm":
            labels[TUMOR] = 2
            save(os.path.join(root, sid, "labels.nii.gz"), labels)
        truth[sid] = {c: normalize_channel(c, v, mask) for c, v in vols.items()}
        truth[sid].update(brain_mask=mask, labels=labels)
    return root, truth


def data_config(**overrides):
    cfg = default.get_config().data
    cfg.input_channels = INPUTS
    cfg.target_channels = TARGETS
    cfg.flip_lr = False
    cfg.intensity_jitter = 0.0
    cfg.min_brain_fraction = 0.01  # the box is 20 of 480 voxels
    cfg.patch_size = 6
    cfg.update(overrides)
    return cfg


def train_batches(root, cfg, count, split="healthy_train", seed=3, start_step=0, batch_size=4):
    return list(itertools.islice(ip.make_train_iterator(
        root, split, cfg, batch_size=batch_size, seed=seed, start_step=start_step,
        process_index=0, process_count=1), count))


def items(batches):
    for batch in batches:
        for b in range(batch["inputs"].shape[0]):
            yield batch, b


def test_every_patch_holds_brain_and_is_the_slice_cropped_at_its_origin(cohort):
    root, truth = cohort
    origins = set()
    for batch, b in items(train_batches(root, data_config(), 12)):
        sid, z = str(batch["subject_id"][b]), int(batch["slice_index"][b])
        top, left = (int(v) for v in batch["patch_origin"][b])
        rows, cols = slice(top, top + 6), slice(left, left + 6)
        assert batch["inputs"][b].shape == (6, 6, 3)
        assert 0 <= top <= SHAPE[0] - 6 and 0 <= left <= SHAPE[1] - 6
        t = truth[sid]
        np.testing.assert_array_equal(batch["brain_mask"][b][..., 0],
                                      t["brain_mask"][rows, cols, z])
        assert batch["brain_mask"][b].sum() > 0, (sid, z, top, left)
        np.testing.assert_array_equal(batch["inputs"][b],
                                      np.stack([t[c][rows, cols, z] for c in INPUTS], -1))
        np.testing.assert_array_equal(batch["targets"][b],
                                      np.stack([t[c][rows, cols, z] for c in TARGETS], -1))
        origins.add((top, left))
    assert len(origins) > 10  # placed at random, not at one spot


def test_patch_stream_is_seeded_and_resumable_and_keeps_the_slice_order(cohort):
    root, _ = cohort
    cfg = data_config(flip_lr=True, intensity_jitter=0.1, context_slices=1,
                      input_channels=("t1map", "t1w"))
    # 11 training slices, batch 4: 2 batches per epoch; 7 steps cross three epoch boundaries
    stream = train_batches(root, cfg, 7)
    for step in (1, 2, 6):
        resumed = train_batches(root, cfg, 1, start_step=step)[0]
        for key in stream[step]:
            np.testing.assert_array_equal(resumed[key], stream[step][key], err_msg=key)
    again = train_batches(root, cfg, 7)
    for batch, other in zip(stream, again, strict=True):
        np.testing.assert_array_equal(batch["patch_origin"], other["patch_origin"])
    other_seed = train_batches(root, cfg, 7, seed=4)
    assert not all(np.array_equal(a["patch_origin"], b["patch_origin"])
                   for a, b in zip(stream, other_seed, strict=True))
    # the slice order is that of whole-slice training with the same seed
    whole = train_batches(root, data_config(flip_lr=True, intensity_jitter=0.1,
                                            context_slices=1, input_channels=("t1map", "t1w"),
                                            patch_size=0), 7)
    for batch, slice_batch in zip(stream, whole, strict=True):
        np.testing.assert_array_equal(batch["subject_id"], slice_batch["subject_id"])
        np.testing.assert_array_equal(batch["slice_index"], slice_batch["slice_index"])
        assert slice_batch["inputs"].shape[1:3] == SHAPE


def test_tumor_patch_fraction_aims_patches_at_the_tumor(cohort):
    root, truth = cohort

    def hits(fraction):
        on_tumor = []
        for batch, b in items(train_batches(root, data_config(patch_size=3,
                                                              tumor_patch_fraction=fraction),
                                            15, split="gbm_train")):
            sid, z = str(batch["subject_id"][b]), int(batch["slice_index"][b])
            if truth[sid]["labels"][..., z].any():
                on_tumor.append(bool(batch["labels"][b].any()))
        return on_tumor

    assert all(hits(1.0)) and len(hits(1.0)) >= 8
    assert not all(hits(0.0))  # from the whole brain box, many patches miss the tumor


def test_evaluation_still_covers_whole_volumes(cohort):
    root, truth = cohort
    batches = list(ip.make_eval_iterator(root, "gbm_test", data_config(patch_size=6),
                                         batch_size=4, process_index=0, process_count=1))
    assert all(batch["inputs"].shape[1:3] == SHAPE for batch in batches)
    volumes = ip.assemble_volumes(batches)
    assert sorted(volumes) == ["g2"]
    t = truth["g2"]
    np.testing.assert_array_equal(volumes["g2"]["targets"],
                                  np.stack([t[c] for c in TARGETS], -1))
    np.testing.assert_array_equal(volumes["g2"]["labels"][..., 0], t["labels"])


def test_patch_size_is_checked_and_cut_to_the_slice(cohort):
    root, truth = cohort
    with pytest.raises(ValueError, match="data.patch_size"):
        train_batches(root, data_config(patch_size=-1), 1)
    with pytest.raises(ValueError, match="data.tumor_patch_fraction"):
        train_batches(root, data_config(tumor_patch_fraction=1.5), 1)
    batch = train_batches(root, data_config(patch_size=64), 1)[0]
    assert batch["inputs"].shape[1:3] == SHAPE
    np.testing.assert_array_equal(batch["patch_origin"], 0)
