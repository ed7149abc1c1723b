"""Calibrated per-voxel uncertainty for synthesized contrasts (any generator).

Three parts, all arrays in and arrays out:

1. A scale estimate sigma(x) > 0 per voxel and contrast, the expected |error| up to a factor:
   - ``ResidualScaleNet``: a small post-hoc U-Net that reads (input maps, the generator's
     prediction, brain mask) and predicts the expected absolute error of that prediction. It
     is trained on a generator's residuals (Laplace negative log-likelihood, whose minimizer
     is sigma = E[|error| | x]) and never touches the generator, so it serves every model:
     the networks, the physics baseline and any per-voxel baseline alike.
   - ``flip_spread``: the disagreement of the prediction with the left-right-flipped
     prediction (test-time augmentation); free of training, one extra generator pass.
   - a constant (sigma = 1): plain split conformal on |error|, the reference to beat.
   - ``with_gain`` (method ``residual_gain``): the residual net's sigma widened by a term in
     proportion to the synthesized value, sqrt(sigma^2 + (beta y_hat)^2). Why: every target
     is divided by a per-volume percentile (docs/design.md section 3), so a new subject's
     synthesis is off by a whole-volume gain (error ~ (g - 1) y_hat) that the net, fitted on
     training subjects' residuals, never saw. beta per contrast is chosen on the calibration
     subjects (``choose_gains``): the value of ``GAIN_GRID`` whose leave-one-subject-out
     coverages scatter least.
2. Split-conformal calibration (Vovk et al. 2005; Angelopoulos et al., ICML 2022, for
   images): on held-out calibration subjects, the nonconformity score of a brain voxel is
   s = |y - y_hat| / sigma; per contrast, q is the ceil((n + 1) * level)-th smallest of the
   n pooled scores (the finite-sample correction). The interval is y_hat +- q * sigma.
   For a new exchangeable voxel, P(y in interval) >= level, and <= level + 1 / (n + 1)
   without ties. Voxels of one subject are not exchangeable with each other, so the
   guarantee is exact over voxels drawn with their subjects; with few calibration subjects
   the realized coverage of a test set varies around the level by subject-to-subject shift.
   ``held_out_coverage`` measures that scatter on the calibration subjects themselves: each
   one's coverage when the others calibrate (leave one subject out).
3. Scores of intervals in a region (``interval_scores``): empirical coverage, mean interval
   width (upper - lower = 2 q sigma, normalized units) and the Spearman rank correlation of
   width with |error| (does the width say where the errors are?).

Half-widths are in the normalized units of the contrasts (docs/design.md section 3).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from qsnet_jax.inference import synthesize_volume

DEFAULT_LEVEL = 0.9
SCALE_FLOOR = 1e-4  # smallest sigma: keeps |e| / sigma finite where the scale says "exact"
LOG_SCALE_LIMIT = 8.0  # sigma stays within base * e^(+-8)
REGION_NAMES = ("brain", "tumor", "healthy")
METHODS = ("residual_net", "residual_gain", "flip", "constant")
# beta of the gain term tried by choose_gains: 0 is the plain residual net; from about 1 on
# the gain term outweighs sigma (contrasts lie in [0, 1], sigma is a few hundredths)
GAIN_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
SCALE_NET_METHODS = ("residual_net", "residual_gain")  # the methods whose sigma is the net's
MIN_GAIN_SUBJECTS = 3  # choose_gains compares sds of held-out coverages: 2 say little

CONVENTION = (
    "Uncertainty: split-conformal intervals y_hat +- q sigma per voxel and contrast; "
    "q = the ceil((n+1) level)-th smallest of the n nonconformity scores |y - y_hat| / sigma "
    "over the brain voxels of the calibration subjects, per contrast. Coverage: fraction of "
    "region voxels with the target inside the interval. Width: mean of upper - lower "
    "(= 2 q sigma), normalized units x100. Spearman: rank correlation of width and "
    "|error| over the region's voxels. Regions: brain (brain mask), tumor (labels > 0), "
    "healthy (brain minus tumor).")


# ------------------------------------------------------------------ conformal calibration


def conformal_quantile(scores, level: float = DEFAULT_LEVEL) -> float:
    """The ceil((n + 1) * level)-th smallest of ``n`` scores (+inf when that exceeds n).

    With ``n`` exchangeable calibration scores and one new score S, P(S <= q) >= level.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = scores.size
    if n == 0:
        raise ValueError("no calibration scores")
    if not np.all(np.isfinite(scores)):
        raise ValueError("calibration scores hold NaN or inf")
    rank = math.ceil((n + 1) * level)
    if rank > n:
        return float("inf")
    return float(np.partition(scores, rank - 1)[rank - 1])


def nonconformity_scores(prediction, target, scale, mask) -> np.ndarray:
    """``|y - y_hat| / sigma`` of the ``mask`` voxels, ``[n_voxels, C]`` (float64)."""
    prediction, target, scale = (_as_4d(a) for a in (prediction, target, scale))
    if not prediction.shape == target.shape == scale.shape:
        raise ValueError(f"prediction {prediction.shape}, target {target.shape} and scale "
                         f"{scale.shape} must have one shape")
    mask = np.asarray(mask) > 0
    if mask.shape != prediction.shape[:3]:
        raise ValueError(f"mask {mask.shape} does not match the volume {prediction.shape[:3]}")
    if np.any(scale[mask] <= 0):
        raise ValueError("the scale must be positive inside the mask")
    error = np.abs(prediction[mask].astype(np.float64) - target[mask])
    return error / scale[mask].astype(np.float64)


def calibrate(predictions: Sequence, targets: Sequence, scales: Sequence, masks: Sequence, *,
              level: float = DEFAULT_LEVEL,
              channel_names: Sequence[str] | None = None,
              subject_names: Sequence[str] | None = None) -> dict:
    """Conformal quantiles from calibration subjects (lists of volumes ``[X, Y, Z, C]``).

    The scores of all masks' voxels of all subjects are pooled per contrast. Returns
    ``{"level", "quantiles": {contrast: q}, "num_subjects", "num_voxels"}``, plus
    ``"held_out_coverage"`` (``held_out_coverage``) from two subjects on.
    """
    if not (len(predictions) == len(targets) == len(scales) == len(masks)) or not predictions:
        raise ValueError("calibrate needs equally many (>= 1) predictions, targets, scales, "
                         "masks")
    per_subject = [nonconformity_scores(p, t, s, m) for p, t, s, m
                   in zip(predictions, targets, scales, masks, strict=True)]
    pooled = np.concatenate(per_subject)
    names = _names(channel_names, pooled.shape[1])
    result = {"level": float(level),
              "quantiles": {name: conformal_quantile(pooled[:, c], level)
                            for c, name in enumerate(names)},
              "num_subjects": len(predictions), "num_voxels": int(pooled.shape[0])}
    if len(per_subject) >= 2:
        result["held_out_coverage"] = held_out_coverage(per_subject, level=level,
                                                        channel_names=names,
                                                        subject_names=subject_names)
    return result


def held_out_coverage(subject_scores: Sequence, *, level: float = DEFAULT_LEVEL,
                      channel_names: Sequence[str] | None = None,
                      subject_names: Sequence[str] | None = None) -> dict:
    """Each calibration subject's coverage when the *other* subjects calibrate the interval
    (leave one subject out), per contrast: ``{contrast: {"per_subject": [...], "mean", "min",
    "max"}}``; ``per_subject`` follows ``subject_names`` when given (a dict then).

    Why: the conformal guarantee is over voxels drawn with their subjects, so one subject's
    (or a small test set's) coverage scatters around the level by subject-to-subject shift.
    This spread, measured on the calibration subjects themselves, is the scatter a user should
    expect for a new subject. ``subject_scores``: one ``[n_voxels, C]`` array per subject
    (``nonconformity_scores``).
    """
    scores = [np.asarray(s, dtype=np.float64) for s in subject_scores]
    if len(scores) < 2:
        raise ValueError("leave-one-subject-out coverage needs at least 2 subjects")
    names = _names(channel_names, scores[0].shape[1])
    result = {}
    for c, name in enumerate(names):
        coverages = []
        for held_out in range(len(scores)):
            others = np.concatenate([s[:, c] for i, s in enumerate(scores) if i != held_out])
            q = conformal_quantile(others, level)
            coverages.append(float(np.mean(scores[held_out][:, c] <= q)))
        per_subject = (dict(zip(subject_names, coverages, strict=True))
                       if subject_names is not None else coverages)
        result[name] = {"per_subject": per_subject, "mean": float(np.mean(coverages)),
                        "min": float(np.min(coverages)), "max": float(np.max(coverages))}
    return result


def with_gain(scale, prediction, gains: Mapping[str, float],
              channel_names: Sequence[str]) -> np.ndarray:
    """``sqrt(sigma^2 + (beta_c * y_hat)^2)`` per contrast (float32): sigma widened in
    proportion to the synthesized value by the gain term ``gains[contrast]`` (0: unchanged)."""
    scale, prediction = _as_4d(scale), _as_4d(prediction)
    if scale.shape != prediction.shape:
        raise ValueError(f"scale {scale.shape} and prediction {prediction.shape} must have "
                         "one shape")
    names = _names(channel_names, scale.shape[-1])
    beta = np.array([gains[name] for name in names], dtype=np.float64)
    if np.any(beta < 0) or not np.all(np.isfinite(beta)):
        raise ValueError(f"gain terms must be finite and >= 0, got {dict(gains)}")
    widened = np.hypot(scale.astype(np.float64), beta * np.abs(prediction))
    return widened.astype(np.float32)


def choose_gains(predictions: Sequence, targets: Sequence, scales: Sequence,
                 masks: Sequence, *, level: float = DEFAULT_LEVEL,
                 channel_names: Sequence[str] | None = None,
                 grid: Sequence[float] = GAIN_GRID) -> dict:
    """The gain term of each contrast whose intervals cover every calibration subject most
    alike: per ``beta`` of ``grid``, each subject's coverage when the others calibrate
    (``held_out_coverage``), and the ``beta`` with the least sample sd of those coverages
    (the smaller ``beta`` on a tie). Needs 3 subjects at least (an sd of 2 coverages says
    little). Returns ``{"gains": {contrast: beta}, "held_out_sd": {contrast: [sd per beta]},
    "grid": [...]}``.

    Choosing beta on the subjects that then calibrate q spends one parameter of theirs; with
    a handful of grid values the coverage guarantee loosens by little, and the study reports
    the coverage of test subjects that chose nothing.
    """
    if not (len(predictions) == len(targets) == len(scales) == len(masks)):
        raise ValueError("choose_gains needs equally many predictions, targets, scales, masks")
    if len(predictions) < MIN_GAIN_SUBJECTS:
        raise ValueError(f"choosing the gain term needs >= {MIN_GAIN_SUBJECTS} calibration "
                         f"subjects, got {len(predictions)}")
    grid = sorted(float(b) for b in grid)
    if not grid or grid[0] < 0:
        raise ValueError(f"the gain grid must be non-empty and >= 0, got {grid}")
    names = _names(channel_names, _as_4d(predictions[0]).shape[-1])
    spreads = {name: [] for name in names}
    for beta in grid:
        gains = dict.fromkeys(names, beta)
        subject_scores = [nonconformity_scores(p, t, with_gain(s, p, gains, names), m)
                          for p, t, s, m in zip(predictions, targets, scales, masks,
                                                strict=True)]
        held_out = held_out_coverage(subject_scores, level=level, channel_names=names)
        for name in names:
            spreads[name].append(float(np.std(held_out[name]["per_subject"], ddof=1)))
    chosen = {name: grid[int(np.argmin(spreads[name]))] for name in names}
    return {"gains": chosen, "held_out_sd": spreads, "grid": grid}


def half_width(scale, quantiles: Mapping[str, float], channel_names: Sequence[str]):
    """``q_c * sigma`` per contrast: the interval's half-width ``[X, Y, Z, C]`` (float32)."""
    scale = _as_4d(scale)
    names = _names(channel_names, scale.shape[-1])
    q = np.array([quantiles[name] for name in names], dtype=np.float64)
    return (scale * q).astype(np.float32)


# ------------------------------------------------------------------ scoring intervals


def region_masks(brain_mask, labels=None) -> dict[str, np.ndarray]:
    """``brain``, and with tumor voxels also ``tumor`` (labels > 0 in the brain) and
    ``healthy`` (brain minus tumor)."""
    brain = np.asarray(brain_mask) > 0
    regions = {"brain": brain}
    if labels is not None:
        tumor = (np.asarray(labels) > 0) & brain
        if tumor.any():
            regions["tumor"] = tumor
            regions["healthy"] = brain & ~tumor
    return regions


def interval_scores(prediction, target, half_widths, brain_mask, labels=None, *,
                    channel_names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per contrast: ``coverage``, ``width`` (x100), ``spearman`` and ``voxels`` (the count)
    for each region.

    Keys carry the region suffix as in ``qsnet_jax.metrics``: ``coverage`` (brain),
    ``coverage_tumor``, ``coverage_healthy`` (the latter two when ``labels`` hold tumor
    voxels). Spearman is NaN where width or error is constant over the region.
    """
    prediction, target, half_widths = (_as_4d(a) for a in (prediction, target, half_widths))
    if not prediction.shape == target.shape == half_widths.shape:
        raise ValueError(f"prediction {prediction.shape}, target {target.shape} and "
                         f"half-widths {half_widths.shape} must have one shape")
    names = _names(channel_names, prediction.shape[-1])
    regions = region_masks(brain_mask, labels)
    scores: dict[str, dict[str, float]] = {}
    for c, name in enumerate(names):
        error = np.abs(prediction[..., c].astype(np.float64) - target[..., c])
        width = 2.0 * half_widths[..., c].astype(np.float64)
        entry = {}
        for region, mask in regions.items():
            suffix = "" if region == "brain" else f"_{region}"
            e, w = error[mask], width[mask]
            entry["coverage" + suffix] = float(np.mean(e <= w / 2.0))
            entry["width" + suffix] = float(np.mean(w) * 100.0)
            entry["spearman" + suffix] = _spearman(w, e)
            entry["voxels" + suffix] = int(mask.sum())
        scores[name] = entry
    return scores


def pooled_coverage(per_subject: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """Coverage over all voxels of all subjects (``interval_scores`` per subject in):
    ``{contrast: {"coverage", "coverage_tumor", ...}}``, voxel-weighted."""
    pooled: dict[str, dict[str, float]] = {}
    for scores in per_subject.values():
        for contrast, entry in scores.items():
            for key in entry:
                if key.startswith("coverage"):
                    count = entry["voxels" + key[len("coverage"):]]
                    covered, total = pooled.setdefault(contrast, {}).get(key, (0.0, 0))
                    pooled[contrast][key] = (covered + entry[key] * count, total + count)
    return {c: {k: covered / total for k, (covered, total) in entry.items()}
            for c, entry in pooled.items()}


def _spearman(a, b) -> float:
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


# ------------------------------------------------------------------ scale estimates


class ResidualScaleNet(nn.Module):
    """A small U-Net from features ``[B, H, W, F]`` to sigma ``[B, H, W, C]`` (> 0).

    sigma = base_scale_c * exp(clip(raw, +-8)) with the last layer initialized at zero, so an
    untrained net is the constant scale (the mean |error| of each contrast) and training can
    only shape it. Two poolings, so any H, W (padded inside to a multiple of 4).
    """

    base_scales: tuple[float, ...]
    width: int = 16
    levels: int = 2

    @nn.compact
    def __call__(self, features):
        height, width = features.shape[1:3]
        multiple = 2 ** self.levels
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        h = jnp.pad(features, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        skips = []
        for level in range(self.levels):
            channels = self.width * 2 ** level
            h = nn.silu(nn.Conv(channels, (3, 3))(h))
            h = nn.silu(nn.Conv(channels, (3, 3))(h))
            skips.append(h)
            h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = nn.silu(nn.Conv(self.width * 2 ** self.levels, (3, 3))(h))
        for level in reversed(range(self.levels)):
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = jnp.concatenate([h, skips[level]], axis=-1)
            h = nn.silu(nn.Conv(self.width * 2 ** level, (3, 3))(h))
        raw = nn.Conv(len(self.base_scales), (1, 1), kernel_init=nn.initializers.zeros)(h)
        raw = jnp.clip(raw[:, :height, :width], -LOG_SCALE_LIMIT, LOG_SCALE_LIMIT)
        base = jnp.asarray(self.base_scales, dtype=raw.dtype)
        return base * jnp.exp(raw) + SCALE_FLOOR


def scale_features(inputs, prediction, brain_mask) -> np.ndarray:
    """What the scale net reads: ``[X, Y, Z, C_in + C_out + 1]`` = inputs, prediction, mask."""
    inputs, prediction = _as_4d(inputs), _as_4d(prediction)
    mask = (np.asarray(brain_mask) > 0).astype(np.float32)[..., None]
    return np.concatenate([inputs.astype(np.float32), prediction.astype(np.float32), mask],
                          axis=-1)


def residual_slices(inputs, prediction, target, brain_mask, *,
                    min_brain_fraction: float = 0.05):
    """Training slices of the scale net from one subject: ``(features [N, X, Y, F],
    abs_error [N, X, Y, C], mask [N, X, Y, 1])`` of the axial slices with at least
    ``min_brain_fraction`` brain."""
    brain = np.asarray(brain_mask) > 0
    features = scale_features(inputs, prediction, brain)
    error = np.abs(_as_4d(prediction).astype(np.float32) - _as_4d(target))
    keep = brain.mean(axis=(0, 1)) >= min_brain_fraction
    to_slices = functools.partial(np.moveaxis, source=2, destination=0)
    return (to_slices(features)[keep], to_slices(error)[keep],
            to_slices(brain.astype(np.float32)[..., None])[keep])


@dataclasses.dataclass
class ScaleFit:
    module: ResidualScaleNet
    variables: dict
    losses: list[float]


def fit_scale_net(features, abs_error, mask, *, steps: int = 400, batch_size: int = 16,
                  learning_rate: float = 2e-3, width: int = 16, levels: int = 2,
                  seed: int = 0,
                  on_step: Callable[[int, float], None] | None = None) -> ScaleFit:
    """Train a ``ResidualScaleNet`` on residual slices (``residual_slices``, concatenated).

    Loss: the Laplace negative log-likelihood mean over brain voxels,
    log sigma + |error| / sigma, whose minimizer is sigma = E[|error| | features]. Batches
    are random slices, randomly flipped left-right. Returns the module, variables and the
    loss of every step.
    """
    features = np.asarray(features, np.float32)
    abs_error = np.asarray(abs_error, np.float32)
    mask = np.asarray(mask, np.float32)
    if features.ndim != 4 or abs_error.shape[:3] != features.shape[:3] or \
            mask.shape != features.shape[:3] + (1,):
        raise ValueError(f"features {features.shape}, errors {abs_error.shape} and mask "
                         f"{mask.shape} do not fit together as [N, H, W, ...]")
    brain = mask[..., 0] > 0
    base = tuple(max(float(abs_error[..., c][brain].mean()), 10 * SCALE_FLOOR)
                 for c in range(abs_error.shape[-1]))
    module = ResidualScaleNet(base_scales=base, width=width, levels=levels)
    rng = np.random.default_rng(seed)
    variables = module.init(jax.random.key(seed), jnp.asarray(features[:1]))
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(steps, 1)))
    opt_state = optimizer.init(variables)

    @jax.jit
    def step(variables, opt_state, x, e, m):
        def loss_fn(v):
            sigma = module.apply(v, x)
            nll = jnp.log(sigma) + e / sigma
            return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m) * e.shape[-1], 1.0)
        loss, grads = jax.value_and_grad(loss_fn)(variables)
        updates, opt_state = optimizer.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state, loss

    losses = []
    batch_size = min(batch_size, len(features))
    for _ in range(steps):
        chosen = rng.choice(len(features), size=batch_size, replace=False)
        x, e, m = features[chosen], abs_error[chosen], mask[chosen]
        flip = rng.random(batch_size) < 0.5
        x, e, m = (np.where(flip[:, None, None, None], a[:, :, ::-1], a) for a in (x, e, m))
        variables, opt_state, loss = step(variables, opt_state, x, e, m)
        losses.append(float(loss))
        if on_step is not None:  # progress for a caller (a fit takes minutes on a CPU)
            on_step(len(losses), losses[-1])
    return ScaleFit(module=module, variables=variables, losses=losses)


def make_scale_fn(module: ResidualScaleNet, variables) -> Callable:
    """A jitted ``features [B, H, W, F] -> sigma [B, H, W, C]``."""
    variables = jax.device_put(variables)
    apply = jax.jit(module.apply)
    return lambda features: apply(variables, features)


def predict_scale(scale_fn: Callable, inputs, prediction, brain_mask, *,
                  batch_size: int = 16) -> np.ndarray:
    """sigma ``[X, Y, Z, C]`` of one subject from its inputs, prediction and brain mask."""
    features = scale_features(inputs, prediction, brain_mask)
    return synthesize_volume(scale_fn, features, batch_size=batch_size)


def flip_spread(prediction, flipped_prediction) -> np.ndarray:
    """|y_hat - flip(G(flip(x)))| + floor: the left-right test-time-augmentation spread.

    ``flipped_prediction`` is the generator's output on the left-right-flipped input,
    already flipped back (axis 0 of ``[X, Y, Z, C]`` is left-right in RAS).
    """
    return (np.abs(_as_4d(prediction) - _as_4d(flipped_prediction)) + SCALE_FLOOR).astype(
        np.float32)


def constant_scale(prediction) -> np.ndarray:
    """sigma = 1 everywhere: plain split conformal on |error|."""
    return np.ones_like(_as_4d(prediction), dtype=np.float32)


# ------------------------------------------------------------------ serialization


def scale_net_state(fit_or_module, variables=None) -> dict:
    """A JSON-able description plus msgpack bytes of a scale net: ``{"config", "params"}``."""
    from flax import serialization  # noqa: PLC0415

    module = fit_or_module.module if isinstance(fit_or_module, ScaleFit) else fit_or_module
    variables = fit_or_module.variables if isinstance(fit_or_module, ScaleFit) else variables
    config = {"base_scales": list(module.base_scales), "width": module.width,
              "levels": module.levels}
    return {"config": config,
            "params": serialization.msgpack_serialize(jax.device_get(variables))}


def scale_net_from_state(config: Mapping, params: bytes):
    """``(module, variables)`` from ``scale_net_state``'s parts."""
    from flax import serialization  # noqa: PLC0415

    module = ResidualScaleNet(base_scales=tuple(float(b) for b in config["base_scales"]),
                              width=int(config["width"]), levels=int(config["levels"]))
    return module, serialization.msgpack_restore(params)


# ------------------------------------------------------------------ helpers


def _as_4d(volume) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim == 3:
        return volume[..., None]
    if volume.ndim != 4:
        raise ValueError(f"expected a volume [X, Y, Z] or [X, Y, Z, C], got {volume.shape}")
    return volume


def _names(channel_names, count: int) -> list[str]:
    names = list(channel_names) if channel_names is not None else [f"channel{i}"
                                                                   for i in range(count)]
    if len(names) != count:
        raise ValueError(f"{len(names)} channel names for {count} channels")
    return names
