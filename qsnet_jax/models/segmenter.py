"""A small tumor segmenter for the downstream-utility score (BraSyn's convention).

BraSyn (Li et al., "The Brain Tumor Segmentation (BraTS) Challenge 2023: Brain MR Image
Synthesis for Tumor Segmentation") scores synthesized contrasts by the Dice of a
segmentation run on them. Here: a 2-D U-Net trained on the *ground-truth* contrasts of the
training splits with the cohort's labels (0 background, 1 necrosis, 2 edema, 3 enhancing),
then applied unchanged to the ground-truth and to the synthesized contrasts of the test
split. The gap between the two Dice scores is what synthesis costs a downstream user.

Dice per sub-region on the whole volume: 2|P ∩ T| / (|P| + |T|) for necrosis (1), edema
(2), enhancing (3) and whole tumor (labels > 0); 1 when both are empty (the BraTS rule),
predictions outside the brain mask ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qsnet_jax.inference import synthesize_volume

NUM_CLASSES = 4
SUBREGIONS = {"necrosis": (1,), "edema": (2,), "enhancing": (3,), "whole_tumor": (1, 2, 3)}
DICE_CONVENTION = (
    "Dice 2|P∩T|/(|P|+|T|) per subject on the whole volume, per sub-region: necrosis (1), "
    "edema (2), enhancing (3), whole tumor (labels > 0); 1 when both are empty (BraTS). "
    "One 2-D U-Net trained on the ground-truth contrasts of the training splits, applied "
    "to the ground-truth and to the synthesized contrasts of the test split (BraSyn).")


class TumorSegmenter(nn.Module):
    """A 2-D U-Net ``[B, H, W, C] -> logits [B, H, W, 4]`` (any H, W; padded inside)."""

    width: int = 16
    levels: int = 3

    @nn.compact
    def __call__(self, images):
        height, width = images.shape[1:3]
        multiple = 2 ** self.levels
        h = jnp.pad(images, ((0, 0), (0, (-height) % multiple), (0, (-width) % multiple),
                             (0, 0)))
        skips = []
        for level in range(self.levels):
            channels = self.width * 2 ** level
            h = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(channels, (3, 3))(h)))
            h = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(channels, (3, 3))(h)))
            skips.append(h)
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = nn.relu(nn.Conv(self.width * 2 ** self.levels, (3, 3))(h))
        for level in reversed(range(self.levels)):
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = jnp.concatenate([h, skips[level]], axis=-1)
            h = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(self.width * 2 ** level,
                                                           (3, 3))(h)))
        logits = nn.Conv(NUM_CLASSES, (1, 1))(h)
        return logits[:, :height, :width]


@dataclasses.dataclass
class SegmenterFit:
    module: TumorSegmenter
    variables: dict
    losses: list[float]


def segmentation_loss(logits, labels, mask):
    """Cross-entropy over brain pixels plus the soft Dice loss of the three tumor classes."""
    one_hot = jax.nn.one_hot(labels, NUM_CLASSES)
    log_probs = jax.nn.log_softmax(logits)
    mask = mask.astype(logits.dtype)
    ce = -jnp.sum(jnp.sum(one_hot * log_probs, -1) * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    probs = jnp.exp(log_probs)[..., 1:] * mask[..., None]
    truth = one_hot[..., 1:] * mask[..., None]
    intersection = jnp.sum(probs * truth, axis=(0, 1, 2))
    total = jnp.sum(probs + truth, axis=(0, 1, 2))
    soft_dice = (2 * intersection + 1.0) / (total + 1.0)
    return ce + jnp.mean(1.0 - soft_dice)


def fit_segmenter(images, labels, masks, *, steps: int = 300, batch_size: int = 8,
                  learning_rate: float = 2e-3, width: int = 16, levels: int = 3,
                  tumor_fraction: float = 0.5, seed: int = 0,
                  on_step: Callable[[int, float], None] | None = None) -> SegmenterFit:
    """Train on slices ``images [N, H, W, C]``, ``labels [N, H, W]`` (0..3), ``masks
    [N, H, W]`` (brain). A ``tumor_fraction`` of each batch comes from slices with tumor
    (the lesion is a few percent of the brain); batches are flipped left-right at random.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    masks = np.asarray(masks, np.float32)
    if images.ndim != 4 or labels.shape != images.shape[:3] or masks.shape != labels.shape:
        raise ValueError(f"images {images.shape}, labels {labels.shape} and masks "
                         f"{masks.shape} do not fit together as [N, H, W(, C)]")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1}")
    module = TumorSegmenter(width=width, levels=levels)
    variables = module.init(jax.random.key(seed), jnp.asarray(images[:1]))
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(steps, 1)))
    opt_state = optimizer.init(variables)

    @jax.jit
    def step(variables, opt_state, x, y, m):
        loss, grads = jax.value_and_grad(
            lambda v: segmentation_loss(module.apply(v, x), y, m))(variables)
        updates, opt_state = optimizer.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    with_tumor = np.flatnonzero((labels > 0).any(axis=(1, 2)))
    everything = np.arange(len(images))
    batch_size = min(batch_size, len(images))
    num_tumor = int(round(tumor_fraction * batch_size)) if len(with_tumor) else 0
    losses = []
    for _ in range(steps):
        chosen = np.concatenate([rng.choice(with_tumor, num_tumor),
                                 rng.choice(everything, batch_size - num_tumor)])
        flip = (rng.random(batch_size) < 0.5)[:, None, None]
        x = np.where(flip[..., None], images[chosen][:, :, ::-1], images[chosen])
        y = np.where(flip, labels[chosen][:, :, ::-1], labels[chosen])
        m = np.where(flip, masks[chosen][:, :, ::-1], masks[chosen])
        variables, opt_state, loss = step(variables, opt_state, x, y, m)
        losses.append(float(loss))
        if on_step is not None:  # progress for a caller (a fit takes minutes on a CPU)
            on_step(len(losses), losses[-1])
    return SegmenterFit(module=module, variables=variables, losses=losses)


def make_segment_fn(module: TumorSegmenter, variables) -> Callable:
    """A jitted ``images [B, H, W, C] -> class probabilities [B, H, W, 4]``."""
    variables = jax.device_put(variables)
    apply = jax.jit(lambda v, x: jax.nn.softmax(module.apply(v, x)))
    return lambda images: apply(variables, images)


def segment_volume(segment_fn: Callable, volume, brain_mask, *, batch_size: int = 16):
    """Labels ``[X, Y, Z]`` (uint8, 0 outside the brain) of a contrast volume ``[X, Y, Z, C]``."""
    probabilities = synthesize_volume(segment_fn, volume, batch_size=batch_size)
    labels = np.argmax(probabilities, axis=-1).astype(np.uint8)
    return np.where(np.asarray(brain_mask) > 0, labels, 0).astype(np.uint8)


def dice_scores(predicted, truth, brain_mask=None) -> dict[str, float]:
    """``{"dice_necrosis", "dice_edema", "dice_enhancing", "dice_whole_tumor"}`` of label
    volumes; 1 where both are empty; voxels outside ``brain_mask`` (if given) ignored."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"label maps {predicted.shape} and {truth.shape} differ in shape")
    inside = np.ones(truth.shape, bool) if brain_mask is None else np.asarray(brain_mask) > 0
    scores = {}
    for name, classes in SUBREGIONS.items():
        p = np.isin(predicted, classes) & inside
        t = np.isin(truth, classes) & inside
        total = int(p.sum() + t.sum())
        scores[f"dice_{name}"] = 1.0 if total == 0 else 2.0 * float((p & t).sum()) / total
    return scores


def segmenter_state(fit: SegmenterFit) -> dict:
    """``{"config", "params"}``: JSON-able settings and the msgpack bytes of the variables."""
    from flax import serialization  # noqa: PLC0415

    return {"config": {"width": fit.module.width, "levels": fit.module.levels},
            "params": serialization.msgpack_serialize(jax.device_get(fit.variables))}


def segmenter_from_state(config, params: bytes):
    from flax import serialization  # noqa: PLC0415

    module = TumorSegmenter(width=int(config["width"]), levels=int(config["levels"]))
    return module, serialization.msgpack_restore(params)
