"""Losses of QS-Net and its baselines: pixel L1, deep supervision, GAN objectives, SSIM.

All functions are pure and return float32 scalars. Images are NHWC in [0, 1] (section 3 of
the design); predictions in bfloat16 are promoted to float32 before any reduction.

Deep supervision. An auxiliary head at decoder scale j predicts the target at H/2^j. Its
target is the full-resolution target average-pooled by 2^j over the *whole* image, not only
the brain: the background of a normalized target is exactly 0 and the full-resolution L1 is
also taken over the whole image, so plain pooling keeps the two terms consistent and lets
the coarse heads learn the zero background too. When H or W is not a multiple of 2^j the
target is zero-padded at the bottom/right first, as the generator pads its input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp

GAN_LOSSES = ("lsgan", "vanilla", "hinge")


def l1_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute error over every pixel and channel."""
    return jnp.mean(jnp.abs(prediction.astype(jnp.float32) - target.astype(jnp.float32)))


def downsample_target(target: jax.Array, height: int, width: int) -> jax.Array:
    """Average-pool an NHWC `target` to `(height, width)` by a power-of-two factor.

    The factor is the power of two nearest to H / height; the target is zero-padded (or
    cropped) to `factor * (height, width)` before pooling.
    """
    full_height, full_width = target.shape[1], target.shape[2]
    if (full_height, full_width) == (height, width):
        return target
    factor = 2 ** round(math.log2(full_height / height))
    if 2 ** round(math.log2(full_width / width)) != factor:
        raise ValueError(f"auxiliary output {height}x{width} is not a power-of-two "
                         f"down-sampling of the {full_height}x{full_width} target")
    padded_height, padded_width = height * factor, width * factor
    target = target[:, :padded_height, :padded_width]
    target = jnp.pad(target, ((0, 0), (0, padded_height - target.shape[1]),
                              (0, padded_width - target.shape[2]), (0, 0)))
    batch, channels = target.shape[0], target.shape[3]
    pooled = target.reshape(batch, height, factor, width, factor, channels)
    return pooled.mean(axis=(2, 4))


def deep_supervision_weights(weights: Sequence[float], num_heads: int) -> tuple[float, ...]:
    """The config's weights (coarse to fine) cut or extended with the last value to `num_heads`."""
    if num_heads == 0:
        return ()
    if not weights:
        raise ValueError("config.loss.deep_supervision_weights is empty but the generator "
                         f"has {num_heads} auxiliary heads")
    weights = tuple(float(w) for w in weights)[:num_heads]
    return weights + (weights[-1],) * (num_heads - len(weights))


def deep_supervision_loss(aux_predictions: Sequence[jax.Array], target: jax.Array,
                          weights: Sequence[float]) -> jax.Array:
    """Sum over heads of weight_j * L1(aux_j, target average-pooled to aux_j's size)."""
    if not aux_predictions:
        return jnp.zeros((), jnp.float32)
    per_head = deep_supervision_weights(weights, len(aux_predictions))
    total = jnp.zeros((), jnp.float32)
    for weight, aux in zip(per_head, aux_predictions, strict=True):
        total = total + weight * l1_loss(aux, downsample_target(target, aux.shape[1],
                                                                aux.shape[2]))
    return total


def ssim_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """1 - mean SSIM (dm-pix: Gaussian 11 taps, sigma 1.5, data range 1, as the metric)."""
    score = pix.ssim(prediction.astype(jnp.float32), target.astype(jnp.float32), max_val=1.0)
    return 1.0 - jnp.mean(score)


def _mean_over_scales(per_scale):
    return sum(per_scale) / len(per_scale)


def generator_adversarial_loss(fake_logits: Sequence[jax.Array], kind: str) -> jax.Array:
    """The generator's GAN term, averaged over discriminator scales.

    lsgan: (D(G(x)) - 1)^2; vanilla: the non-saturating -log sigmoid(D(G(x))) of pix2pix;
    hinge: -D(G(x)).
    """
    check_gan_loss(kind)
    terms = []
    for logits in fake_logits:
        logits = logits.astype(jnp.float32)
        if kind == "lsgan":
            terms.append(jnp.mean((logits - 1.0) ** 2))
        elif kind == "vanilla":
            terms.append(jnp.mean(jax.nn.softplus(-logits)))
        else:
            terms.append(-jnp.mean(logits))
    return _mean_over_scales(terms)


def discriminator_loss(real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array],
                       kind: str) -> jax.Array:
    """The discriminator's objective, halved as in pix2pix (it then learns at half the rate
    of the generator), averaged over scales."""
    check_gan_loss(kind)
    terms = []
    for real, fake in zip(real_logits, fake_logits, strict=True):
        real, fake = real.astype(jnp.float32), fake.astype(jnp.float32)
        if kind == "lsgan":
            real_term, fake_term = jnp.mean((real - 1.0) ** 2), jnp.mean(fake ** 2)
        elif kind == "vanilla":  # binary cross-entropy on logits
            real_term = jnp.mean(jax.nn.softplus(-real))
            fake_term = jnp.mean(jax.nn.softplus(fake))
        else:
            real_term = jnp.mean(jax.nn.relu(1.0 - real))
            fake_term = jnp.mean(jax.nn.relu(1.0 + fake))
        terms.append(0.5 * (real_term + fake_term))
    return _mean_over_scales(terms)


def check_gan_loss(kind):
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown config.loss.gan_loss {kind!r}; known: {list(GAN_LOSSES)}")
