"""Image-quality scores of synthesized contrasts, exactly as docs/design.md section 4 defines them.

Per subject and per contrast, on normalized volumes (section 3: intensities in [0, 1]) with
the background (outside the brain mask) set to 0 in prediction and target:

- MAE: mean |pred - target| over brain-mask voxels, times 100 (percent of the data range).
- PSNR: 10 log10(1 / MSE) over brain-mask voxels (data range 1), in dB.
- SSIM: computed per axial slice (``volume[:, :, z]``) with an 11-tap Gaussian window
  (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, data range 1 and population
  covariance; the borders are handled by symmetric reflection (``scipy.ndimage`` mode
  ``reflect``). The SSIM map then is averaged over the brain-mask voxels of all slices.
  The map equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, full=True)[1]`` slice by slice.
  (scikit-image's own mean crops a 5-pixel border instead of using a mask.)
- Regions: ``*_tumor`` restricts the three scores to the whole-tumor mask (labels > 0,
  inside the brain mask) and ``*_healthy`` to healthy tissue (brain mask minus tumor); both
  are present only when the label map holds tumor voxels. SSIM in a region is the mean of the
  SSIM map (computed on whole slices, as above) over that region's voxels.
- NMI: normalized mutual information (H(pred) + H(target)) / H(pred, target) of the
  brain-mask voxels (Studholme 1999; 1 = independent, 2 = identical up to a one-to-one
  relabeling), from a joint histogram of 100 x 100 equal bins over the data range [0, 1];
  whole brain only (key ``nmi``). Equals ``skimage.metrics.normalized_mutual_information``
  on the brain voxels when both hold the values 0 and 1 (scikit-image bins over each image's
  own min..max; the fixed range keeps subjects comparable).

The SSIM map is computed with JAX (jitted, vectorized over slices and contrasts) in float64
on the host CPU: the variance terms E[x^2] - E[x]^2 cancel badly in float32 in flat regions
(per-voxel errors up to ~2e-4 there), and on CPU float64 costs no more time than float32.
MAE and PSNR are float64 NumPy reductions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 1.0
METRIC_NAMES = ("mae", "ssim", "psnr")
REGIONS = ("brain", "tumor", "healthy")
NMI_BINS = 100
# Higher is better for these; MAE is lower-is-better.
HIGHER_IS_BETTER = {"mae": False, "ssim": True, "psnr": True, "nmi": True}

CONVENTION = (
    "Scores per subject and contrast on normalized volumes (intensities in [0, 1], "
    "background outside the brain mask set to 0 in prediction and target). "
    "MAE: mean |prediction - target| over brain-mask voxels, x100. "
    "PSNR: 10 log10(1 / MSE) over brain-mask voxels (data range 1), dB. "
    "SSIM: per axial slice, Gaussian window sigma 1.5 (11 taps), K1 0.01, K2 0.03, "
    "data range 1, population covariance (= skimage structural_similarity with "
    "gaussian_weights=True, use_sample_covariance=False), map averaged over brain-mask "
    "voxels. Tumor: the same scores inside the whole-tumor mask (labels > 0); healthy: "
    "inside brain minus tumor; SSIM of a region = mean of the SSIM map over its voxels. "
    "NMI: (H(pred) + H(target)) / H(pred, target) over brain voxels, 100 x 100 bins on "
    "[0, 1] (range 1-2).")


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """The normalized 1-D Gaussian taps that ``scipy.ndimage.gaussian_filter`` uses."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _gaussian_filter_2d(images, taps):
    """Separable Gaussian filter over the last two axes, borders reflected symmetrically."""
    radius = (len(taps) - 1) // 2
    height, width = images.shape[-2:]
    pad = [(0, 0)] * (images.ndim - 2) + [(radius, radius), (radius, radius)]
    padded = jnp.pad(images, pad, mode="symmetric")
    rows = sum(float(w) * padded[..., i:i + height, :] for i, w in enumerate(taps))
    return sum(float(w) * rows[..., :, i:i + width] for i, w in enumerate(taps))


@functools.partial(jax.jit, static_argnames=("data_range", "sigma", "truncate", "k1", "k2"))
def ssim_map(x, y, *, data_range: float = DATA_RANGE, sigma: float = SSIM_SIGMA,
             truncate: float = SSIM_TRUNCATE, k1: float = SSIM_K1, k2: float = SSIM_K2):
    """The SSIM map of image pairs ``x, y`` of shape ``[..., H, W]`` (any leading axes).

    Computed in the dtype of the inputs; equals scikit-image's ``full=True`` map with
    ``gaussian_weights=True, use_sample_covariance=False``.
    """
    taps = gaussian_window(sigma, truncate)
    filt = functools.partial(_gaussian_filter_2d, taps=taps)
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x * mu_x
    var_y = filt(y * y) - mu_y * mu_y
    cov_xy = filt(x * y) - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def axial_ssim_map(pred, target, *, data_range: float = DATA_RANGE) -> np.ndarray:
    """SSIM maps of volumes ``[X, Y, Z]`` or ``[X, Y, Z, C]``, one 2-D map per axial slice.

    All slices (and contrasts) go through one jitted call, in float64 on the host CPU.
    Returns float64 with the input's shape.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    if pred.ndim not in (3, 4):
        raise ValueError(f"expected a volume [X, Y, Z] or [X, Y, Z, C], got shape {pred.shape}")
    # [X, Y, Z, ...] -> [..., Z, X, Y]: slices (and contrasts) become the batch axes.
    order = tuple(range(3, pred.ndim)) + (2, 0, 1)
    inverse = tuple(np.argsort(order))
    cpu = jax.local_devices(backend="cpu")[0]
    with jax.enable_x64(True):
        x = jax.device_put(np.transpose(pred, order).astype(np.float64), cpu)
        y = jax.device_put(np.transpose(target, order).astype(np.float64), cpu)
        result = np.asarray(ssim_map(x, y, data_range=float(data_range)))
    return np.transpose(result, inverse)


def masked_mae(pred, target, mask) -> float:
    """Mean |pred - target| over ``mask`` voxels, x100 (percent of the data range 1)."""
    mask = np.asarray(mask, dtype=bool)
    diff = np.asarray(pred, np.float64)[mask] - np.asarray(target, np.float64)[mask]
    return float(np.mean(np.abs(diff)) * 100.0)


def masked_psnr(pred, target, mask, *, data_range: float = DATA_RANGE) -> float:
    """10 log10(data_range^2 / MSE) over ``mask`` voxels; +inf for identical images."""
    mask = np.asarray(mask, dtype=bool)
    diff = np.asarray(pred, np.float64)[mask] - np.asarray(target, np.float64)[mask]
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def normalized_mutual_information(pred, target, mask, *, bins: int = NMI_BINS,
                                  data_range: float = DATA_RANGE) -> float:
    """(H(pred) + H(target)) / H(pred, target) over ``mask`` voxels (1 to 2).

    Joint histogram of ``bins`` x ``bins`` equal bins over [0, data_range] (values outside
    fall into the end bins). Identical constant images (zero joint entropy) give 2.
    """
    mask = np.asarray(mask, dtype=bool)
    a = np.clip(np.asarray(pred, np.float64)[mask], 0.0, data_range)
    b = np.clip(np.asarray(target, np.float64)[mask], 0.0, data_range)
    joint, _, _ = np.histogram2d(a, b, bins=bins, range=[[0.0, data_range]] * 2)
    joint /= joint.sum()
    h_joint = _entropy(joint)
    if h_joint == 0.0:
        return 2.0
    return float((_entropy(joint.sum(axis=1)) + _entropy(joint.sum(axis=0))) / h_joint)


def _entropy(probabilities) -> float:
    p = probabilities[probabilities > 0]
    return float(-np.sum(p * np.log(p)))


def _check_volumes(pred, target, brain_mask, labels):
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    if brain_mask.shape != pred.shape[:3]:
        raise ValueError(f"brain mask {brain_mask.shape} does not match the volume "
                         f"{pred.shape[:3]}")
    if labels is not None and labels.shape != pred.shape[:3]:
        raise ValueError(f"label map {labels.shape} does not match the volume {pred.shape[:3]}")
    if not brain_mask.any():
        raise ValueError("empty brain mask: nothing to score")
    for name, array in (("prediction", pred), ("target", target)):
        if not np.all(np.isfinite(array[brain_mask])):
            raise ValueError(f"the {name} holds NaN or inf inside the brain mask")


def score_volume(pred, target, brain_mask, labels=None, *,
                 channel_names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Scores of one subject: ``{contrast: {"mae", "psnr", "ssim", "nmi"[, "*_tumor",
    "*_healthy"]}}``.

    ``pred``/``target``: normalized volumes ``[X, Y, Z, C]`` (or ``[X, Y, Z]``, one contrast);
    ``brain_mask``: ``[X, Y, Z]``, nonzero inside the brain; ``labels``: optional tumor label
    map ``[X, Y, Z]`` (0 background). ``channel_names`` name the contrasts (default
    ``channel0``, ``channel1``, ...). The background outside the brain mask is set to 0 in
    both volumes before scoring. The ``*_tumor`` and ``*_healthy`` (brain minus tumor) keys
    appear when ``labels`` holds voxels > 0 inside the brain mask.
    """
    pred = np.asarray(pred, dtype=np.float32)
    target = np.asarray(target, dtype=np.float32)
    if pred.ndim == 3:
        pred, target = pred[..., None], target[..., None]
    brain = np.asarray(brain_mask) > 0
    labels = None if labels is None else np.asarray(labels)
    _check_volumes(pred, target, brain, labels)
    num_channels = pred.shape[-1]
    if channel_names is None:
        channel_names = [f"channel{i}" for i in range(num_channels)]
    if len(channel_names) != num_channels:
        raise ValueError(f"{len(channel_names)} channel names for {num_channels} channels")

    pred = np.where(brain[..., None], pred, 0.0).astype(np.float32)
    target = np.where(brain[..., None], target, 0.0).astype(np.float32)
    tumor = None
    if labels is not None:
        tumor = (labels > 0) & brain
        if not tumor.any():
            tumor = None
    ssim_maps = axial_ssim_map(pred, target)

    scores = {}
    for c, name in enumerate(channel_names):
        entry = {}
        regions = [("", brain)]
        if tumor is not None:
            regions += [("_tumor", tumor), ("_healthy", brain & ~tumor)]
        for suffix, region in regions:
            entry["mae" + suffix] = masked_mae(pred[..., c], target[..., c], region)
            entry["ssim" + suffix] = float(np.mean(ssim_maps[..., c][region]))
            entry["psnr" + suffix] = masked_psnr(pred[..., c], target[..., c], region)
        entry["nmi"] = normalized_mutual_information(pred[..., c], target[..., c], brain)
        scores[name] = entry
    return scores
