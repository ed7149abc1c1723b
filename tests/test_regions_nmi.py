"""Region scores (brain, tumor, healthy) and NMI of qsnet_jax.metrics against independent
references: scikit-image's SSIM map and NMI, and NumPy recomputations written here."""

import numpy as np
import pytest
from skimage.metrics import normalized_mutual_information, structural_similarity

from qsnet_jax import evaluation, metrics


def _volumes(seed=0, shape=(20, 18, 6)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    base = (np.sin(yy / 3.0) * np.cos(xx / 4.0) * 0.4 + 0.5)[..., None]
    target = np.clip(np.repeat(base, shape[2], axis=2)
                     + rng.normal(scale=0.05, size=shape), 0, 1)
    target = np.stack([target, 1 - target], axis=-1).astype(np.float32)
    pred = np.clip(target + rng.normal(scale=0.04, size=target.shape), 0, 1).astype(np.float32)
    brain = np.zeros(shape, bool)
    brain[2:18, 2:16] = True
    labels = np.zeros(shape, np.int32)
    labels[6:11, 5:10, 1:5] = 2
    labels[7:9, 6:8, 2:4] = 1
    pred[labels > 0] = np.clip(pred[labels > 0] + 0.15, 0, 1)  # the tumor is worse
    return pred, target, brain, labels


def test_region_mae_psnr_ssim_equal_numpy_and_skimage():
    pred, target, brain, labels = _volumes()
    scores = metrics.score_volume(pred, target, brain, labels, channel_names=["a", "b"])
    tumor = (labels > 0) & brain
    healthy = brain & ~tumor
    for c, name in enumerate(["a", "b"]):
        p = np.where(brain, pred[..., c], 0.0).astype(np.float64)
        t = np.where(brain, target[..., c], 0.0).astype(np.float64)
        ssim = np.stack([structural_similarity(
            p[:, :, z], t[:, :, z], gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, full=True)[1]
            for z in range(p.shape[2])], axis=2)
        for suffix, region in (("", brain), ("_tumor", tumor), ("_healthy", healthy)):
            diff = p[region] - t[region]
            assert scores[name]["mae" + suffix] == pytest.approx(100 * np.abs(diff).mean())
            assert scores[name]["psnr" + suffix] == pytest.approx(
                10 * np.log10(1 / np.mean(diff**2)))
            assert scores[name]["ssim" + suffix] == pytest.approx(ssim[region].mean(),
                                                                  abs=1e-6)
        s = scores[name]
        assert s["mae_tumor"] > s["mae"] > s["mae_healthy"]
    # no tumor voxels inside the brain: no tumor or healthy keys
    outside = np.zeros_like(labels)
    outside[0, 0, 0] = 3
    plain = metrics.score_volume(pred, target, brain, outside)
    assert set(plain["channel0"]) == {"mae", "ssim", "psnr", "nmi"}


def _numpy_nmi(a, b, bins=100):
    """(H(A) + H(B)) / H(A, B), histogram over [0, 1], written out without histogram2d."""
    ia = np.minimum((a * bins).astype(int), bins - 1)
    ib = np.minimum((b * bins).astype(int), bins - 1)
    joint = np.zeros((bins, bins))
    np.add.at(joint, (ia, ib), 1.0)
    joint /= joint.sum()

    def entropy(p):
        p = p[p > 0]
        return -(p * np.log(p)).sum()

    return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / entropy(joint)


def test_nmi_equals_skimage_and_a_numpy_histogram():
    pred, target, brain, labels = _volumes(1)
    # put 0 and 1 in both images inside the brain so that skimage's min..max bins are [0, 1]
    for volume in (pred, target):
        volume[3, 3, 0] = 0.0
        volume[4, 4, 0] = 1.0
    scores = metrics.score_volume(pred, target, brain, labels, channel_names=["a", "b"])
    for c, name in enumerate(["a", "b"]):
        p, t = pred[..., c][brain], target[..., c][brain]
        reference = normalized_mutual_information(p, t, bins=100)
        # skimage bins the float32 values itself: a voxel on a bin edge may land one bin
        # over (~1e-8 relative); a wrong bin count or range moves NMI by > 1e-3
        assert scores[name]["nmi"] == pytest.approx(reference, rel=1e-6)
        assert scores[name]["nmi"] == pytest.approx(_numpy_nmi(p.astype(np.float64),
                                                               t.astype(np.float64)), rel=1e-9)
    # identical images: NMI 2; independent noise: close to 1
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(40, 40, 10))
    mask = np.ones(a.shape, bool)
    assert metrics.normalized_mutual_information(a, a, mask) == pytest.approx(2.0)
    b = rng.uniform(size=a.shape)
    assert metrics.normalized_mutual_information(a, b, mask) < 1.1


def test_tables_carry_healthy_and_nmi_columns():
    pred, target, brain, labels = _volumes()
    per_subject = {"s1": metrics.score_volume(pred, target, brain, labels,
                                              channel_names=["t1w", "t2w"])}
    table = evaluation.markdown_table({"m": evaluation.aggregate(per_subject)})
    header = table.splitlines()[0]
    for title in ("MAE (×100) healthy", "SSIM tumor", "PSNR (dB) brain", "NMI brain"):
        assert title in header
    assert "NMI tumor" not in header
    rows = evaluation.score_rows(per_subject)
    assert {r["region"] for r in rows} == {"brain", "tumor", "healthy"}
