"""The downstream tumor segmenter (qsnet_jax.models.segmenter): Dice by hand, and a tiny
U-Net that learns to segment synthetic lesions whose classes are visible in the contrasts."""

import numpy as np
import pytest

from qsnet_jax.models import segmenter


def test_dice_scores_by_hand():
    truth = np.zeros((6, 6, 2), np.uint8)
    truth[1:3, 1:3, 0] = 1  # 4 necrosis voxels
    truth[3:5, 1:4, 0] = 2  # 6 edema voxels
    predicted = np.zeros_like(truth)
    predicted[1:3, 1:2, 0] = 1  # 2 necrosis, inside the truth
    predicted[3:5, 1:3, 0] = 2  # 4 edema, inside the truth
    predicted[0, 5, 1] = 3  # 1 enhancing voxel, none in the truth
    scores = segmenter.dice_scores(predicted, truth)
    assert scores["dice_necrosis"] == pytest.approx(2 * 2 / (2 + 4))
    assert scores["dice_edema"] == pytest.approx(2 * 4 / (4 + 6))
    assert scores["dice_enhancing"] == 0.0
    assert scores["dice_whole_tumor"] == pytest.approx(2 * 6 / (7 + 10))
    # both empty: 1 (BraTS); a brain mask drops the stray voxel outside it
    brain = np.ones(truth.shape, bool)
    brain[0, 5, 1] = False
    masked = segmenter.dice_scores(predicted, truth, brain)
    assert masked["dice_enhancing"] == 1.0
    assert masked["dice_whole_tumor"] == pytest.approx(2 * 6 / (6 + 10))
    with pytest.raises(ValueError, match="shape"):
        segmenter.dice_scores(predicted[:-1], truth)


def _lesion_slices(rng, num, size=24):
    """Two contrasts; necrosis dark in both, enhancing bright in the first, edema bright in
    the second; some slices without lesion."""
    images = rng.normal(0.4, 0.03, size=(num, size, size, 2)).astype(np.float32)
    labels = np.zeros((num, size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(num):
        if i % 4 == 3:
            continue
        cy, cx = rng.uniform(7, size - 7, 2)
        r = np.hypot(yy - cy, xx - cx)
        radius = rng.uniform(4, 6)
        labels[i][r < radius + 2] = 2
        labels[i][r < radius] = 3
        labels[i][r < radius - 2] = 1
    images[..., 0] += np.where(labels == 3, 0.4, 0.0) - np.where(labels == 1, 0.3, 0.0)
    images[..., 1] += np.where(labels == 2, 0.4, 0.0) - np.where(labels == 1, 0.3, 0.0)
    return images, labels, np.ones(labels.shape, np.float32)


def test_segmenter_learns_synthetic_lesions_and_runs_on_volumes():
    rng = np.random.default_rng(0)
    images, labels, masks = _lesion_slices(rng, 48)
    # 120 steps were measured to leave necrosis (the innermost class) unlearned; 200 learn all
    fit = segmenter.fit_segmenter(images, labels, masks, steps=200, batch_size=8,
                                  learning_rate=5e-3, width=8, levels=2, seed=0)
    assert np.mean(fit.losses[-10:]) < 0.5 * np.mean(fit.losses[:3])
    test_images, test_labels, _ = _lesion_slices(rng, 12)
    volume = np.moveaxis(test_images, 0, 2)  # [X, Y, Z, C]
    truth = np.moveaxis(test_labels, 0, 2)
    segment_fn = segmenter.make_segment_fn(fit.module, fit.variables)
    predicted = segmenter.segment_volume(segment_fn, volume, np.ones(truth.shape), batch_size=5)
    assert predicted.shape == truth.shape and predicted.dtype == np.uint8
    scores = segmenter.dice_scores(predicted, truth)
    for name, value in scores.items():
        assert value > 0.7, (name, scores)
    # noise instead of contrast: the same segmenter finds much less (the Dice gap it reports)
    flat = rng.normal(0.4, 0.03, size=volume.shape).astype(np.float32)
    worse = segmenter.dice_scores(segmenter.segment_volume(segment_fn, flat,
                                                           np.ones(truth.shape)), truth)
    assert worse["dice_whole_tumor"] < 0.3
    # round trip through the serialized state
    state = segmenter.segmenter_state(fit)
    module, variables = segmenter.segmenter_from_state(state["config"], state["params"])
    again = segmenter.segment_volume(segmenter.make_segment_fn(module, variables), volume,
                                     np.ones(truth.shape), batch_size=5)
    np.testing.assert_array_equal(again, predicted)


def test_fit_segmenter_rejects_bad_labels():
    images = np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="labels must lie"):
        segmenter.fit_segmenter(images, np.full((2, 8, 8), 5), np.ones((2, 8, 8)), steps=1)
