"""qsnet_jax.metrics against scikit-image and NumPy references (docs/design.md section 4)."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from qsnet_jax import metrics

SKIMAGE_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                    data_range=1.0)


def _skimage_ssim_maps(pred, target):
    """[X, Y, Z] -> per-axial-slice skimage SSIM maps and skimage's own (cropped) means."""
    maps, means = [], []
    for z in range(pred.shape[2]):
        mean, full = structural_similarity(pred[:, :, z], target[:, :, z], full=True,
                                           **SKIMAGE_SSIM)
        maps.append(full)
        means.append(mean)
    return np.stack(maps, axis=2), np.array(means)


def _random_pair(rng, shape):
    target = rng.random(shape)
    pred = np.clip(target + 0.15 * rng.standard_normal(shape), 0, 1)
    return pred, target


def _structured_subject(rng, shape=(40, 48, 12)):
    """A smooth 'brain' in an ellipsoid mask, a spherical tumor with labels 1-3, two contrasts."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    brain = (grid[..., 0] / 0.85) ** 2 + (grid[..., 1] / 0.8) ** 2 + (grid[..., 2] / 1.1) ** 2 < 1
    radius = np.linalg.norm(grid - np.array([0.3, -0.2, 0.0]), axis=-1)
    labels = np.select([radius < 0.12, radius < 0.2, radius < 0.3], [1, 3, 2], 0)
    labels = np.where(brain, labels, 0).astype(np.uint8)
    targets, preds = [], []
    for _ in range(2):
        smooth = ndimage.gaussian_filter(rng.random(shape), 2.0)
        smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
        target = np.where(brain, 0.2 + 0.6 * smooth + 0.2 * (labels > 0), 0.0)
        pred = np.clip(target + 0.03 * rng.standard_normal(shape)
                       + 0.05 * (labels == 3), 0, 1)
        # junk outside the brain must not count: score_volume zeroes it
        pred = np.where(brain, pred, rng.random(shape))
        targets.append(target)
        preds.append(pred)
    return (np.stack(preds, -1).astype(np.float32), np.stack(targets, -1).astype(np.float32),
            brain, labels)


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_map_equals_skimage_full_map(kind):
    rng = np.random.default_rng(0)
    if kind == "random":
        pred, target = _random_pair(rng, (32, 27, 5))
    else:
        pred, target, _, _ = _structured_subject(rng)
        pred, target = pred[..., 0], target[..., 0]
    ours = metrics.axial_ssim_map(pred, target)
    reference, skimage_means = _skimage_ssim_maps(pred.astype(np.float64),
                                                  target.astype(np.float64))
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-9)
    # skimage's scalar: the map mean after cropping a (11 - 1) / 2 = 5 pixel border
    cropped = ours[5:-5, 5:-5, :].mean(axis=(0, 1))
    np.testing.assert_allclose(cropped, skimage_means, rtol=0, atol=1e-9)


def test_ssim_map_float32_matches_dm_pix_on_valid_region():
    import dm_pix as pix
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    pred, target = _random_pair(rng, (4, 30, 26))
    ours = np.asarray(metrics.ssim_map(jnp.asarray(pred, jnp.float32),
                                       jnp.asarray(target, jnp.float32)))
    # dm-pix uses a 'valid' convolution: it averages the map without the 5-pixel border
    theirs = np.asarray(pix.ssim(jnp.asarray(pred[..., None], jnp.float32),
                                 jnp.asarray(target[..., None], jnp.float32), max_val=1.0))
    np.testing.assert_allclose(ours[:, 5:-5, 5:-5].mean(axis=(1, 2)), theirs, atol=1e-6)


def test_score_volume_full_mask_equals_skimage_and_numpy():
    rng = np.random.default_rng(2)
    pred, target = _random_pair(rng, (24, 20, 4, 3))
    brain = np.ones(pred.shape[:3], bool)
    scores = metrics.score_volume(pred, target, brain, channel_names=["a", "b", "c"])
    assert list(scores) == ["a", "b", "c"]
    for c, name in enumerate("abc"):
        p = pred[..., c].astype(np.float32).astype(np.float64)
        t = target[..., c].astype(np.float32).astype(np.float64)
        maps, _ = _skimage_ssim_maps(p, t)
        assert scores[name]["ssim"] == pytest.approx(maps.mean(), abs=1e-9)
        assert scores[name]["mae"] == pytest.approx(np.abs(p - t).mean() * 100, abs=1e-9)
        assert scores[name]["psnr"] == pytest.approx(
            peak_signal_noise_ratio(t, p, data_range=1.0), abs=1e-9)
        assert "ssim_tumor" not in scores[name]


def test_score_volume_brain_and_tumor_regions_equal_references():
    rng = np.random.default_rng(3)
    pred, target, brain, labels = _structured_subject(rng)
    scores = metrics.score_volume(pred, target, brain, labels, channel_names=["t1w", "t2w"])
    tumor = (labels > 0) & brain
    assert tumor.sum() > 50
    for c, name in enumerate(["t1w", "t2w"]):
        # reference: zero the background, skimage maps per axial slice, average in the masks
        p = np.where(brain, pred[..., c], 0).astype(np.float64)
        t = np.where(brain, target[..., c], 0).astype(np.float64)
        maps, _ = _skimage_ssim_maps(p, t)
        for suffix, region in (("", brain), ("_tumor", tumor)):
            diff = p[region] - t[region]
            s = scores[name]
            assert s["mae" + suffix] == pytest.approx(np.abs(diff).mean() * 100, abs=1e-7)
            assert s["psnr" + suffix] == pytest.approx(
                10 * np.log10(1.0 / np.mean(diff**2)), abs=1e-7)
            assert s["ssim" + suffix] == pytest.approx(maps[region].mean(), abs=1e-7)
        # the tumor is where the prediction is worst (the enhancing-rim bias)
        assert s["mae_tumor"] > s["mae"]


def test_background_is_ignored_and_identity_is_perfect():
    rng = np.random.default_rng(4)
    _, target, brain, labels = _structured_subject(rng)
    junk = np.where(brain[..., None], target, rng.random(target.shape)).astype(np.float32)
    scores = metrics.score_volume(junk, target, brain, labels)
    for entry in scores.values():
        assert entry["mae"] == 0.0 and entry["mae_tumor"] == 0.0
        assert entry["psnr"] == float("inf")
        assert entry["ssim"] == pytest.approx(1.0, abs=1e-12)
        assert entry["ssim_tumor"] == pytest.approx(1.0, abs=1e-12)


def test_no_tumor_keys_without_tumor_voxels():
    rng = np.random.default_rng(5)
    pred, target, brain, _ = _structured_subject(rng)
    scores = metrics.score_volume(pred[..., 0], target[..., 0], brain,
                                  np.zeros(brain.shape, np.uint8))
    # whole-brain scores only (NMI is whole-brain, tests/test_regions_nmi.py): no *_tumor key
    assert set(scores["channel0"]) == {"mae", "ssim", "psnr", "nmi"}


def test_score_volume_rejects_bad_input():
    brain = np.ones((12, 12, 2), bool)
    vol = np.zeros((12, 12, 2, 1), np.float32)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.score_volume(vol, vol[:, :, :1], brain)
    with pytest.raises(ValueError, match="brain mask"):
        metrics.score_volume(vol, vol, brain[:, :, :1])
    with pytest.raises(ValueError, match="empty brain mask"):
        metrics.score_volume(vol, vol, ~brain)
    bad = vol.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.score_volume(bad, vol, brain)
