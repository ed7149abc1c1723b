"""Conditional patch discriminators: PatchGAN (Isola et al. 2017) and its multi-scale form
(Wang et al. 2018, pix2pixHD).

Both see the input maps concatenated with a real or synthesized contrast stack and return a
list of logit maps, one per scale (no sigmoid: the GAN loss chooses).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from qsnet_jax.models import layers

DISCRIMINATOR_NORMS = ("instance", "batch", "none")


class PatchGAN(nn.Module):
    """The N-layer PatchGAN of the pix2pix reference implementation.

    conv4x4/2 + LeakyReLU(0.2); (num_layers - 1) x [conv4x4/2 + norm + LeakyReLU]; conv4x4/1 +
    norm + LeakyReLU; conv4x4/1 to one logit. Widths base_width * min(2**n, 8). Padding 1 on
    each side, as in PyTorch, so num_layers = 3 has the 70x70 receptive field.
    """

    base_width: int = 64
    num_layers: int = 3
    norm: str = "instance"
    spectral_norm: bool = False
    conv_weight_grad: str = "xla"  # layers.CONV_WEIGHT_GRADS

    @nn.compact
    def __call__(self, x, train: bool = False):
        def conv(h, features, stride, name, use_bias=True):
            layer = layers.make_conv(self.conv_weight_grad, features, (4, 4),
                                     strides=(stride, stride), padding=((1, 1), (1, 1)),
                                     use_bias=use_bias, name=name)
            if self.spectral_norm:
                # Power-iteration state lives in "batch_stats"; it advances only in training.
                return nn.SpectralNorm(layer, name=f"{name}_sn")(h, update_stats=train)
            return layer(h)

        # A bias before an affine normalization is redundant (the norm's offset replaces it).
        normed_bias = self.norm == "none"
        h = nn.leaky_relu(conv(x, self.base_width, 2, "conv_0"), 0.2)
        for n in range(1, self.num_layers + 1):
            stride = 2 if n < self.num_layers else 1
            h = conv(h, self.base_width * min(2**n, 8), stride, f"conv_{n}", normed_bias)
            h = layers.normalize(h, self.norm, train=train, name=f"norm_{n}")
            h = nn.leaky_relu(h, 0.2)
        return conv(h, 1, 1, "logits")


class ConditionalDiscriminator(nn.Module):
    """`num_scales` independent PatchGANs on the (condition, image) pair at full, 1/2, 1/4 ...
    resolution; down-sampling by 3x3 stride-2 average pooling that ignores the padding
    (pix2pixHD)."""

    base_width: int = 64
    num_layers: int = 3
    num_scales: int = 1
    norm: str = "instance"
    spectral_norm: bool = False
    conv_weight_grad: str = "xla"  # layers.CONV_WEIGHT_GRADS

    @nn.compact
    def __call__(self, condition, image, train: bool = False) -> list[Any]:
        if self.norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"unknown discriminator norm {self.norm!r}; "
                             f"known: {list(DISCRIMINATOR_NORMS)}")
        x = jnp.concatenate([condition, image.astype(condition.dtype)], axis=-1)
        logits = []
        for scale in range(self.num_scales):
            if scale > 0:
                x = nn.avg_pool(x, (3, 3), strides=(2, 2), padding="SAME",
                                count_include_pad=False)
            self._check_size(x.shape[1:3], scale)
            patchgan = PatchGAN(self.base_width, self.num_layers, self.norm,
                                self.spectral_norm, self.conv_weight_grad, name=f"scale_{scale}")
            logits.append(patchgan(x, train))
        return logits

    def _check_size(self, size, scale):
        """The PatchGAN maps n pixels to floor(n / 2**num_layers) - 2 patches (stride-2 convs,
        then two 4x4 stride-1 convs); an empty map would give NaN logits, not an error."""
        smallest = 3 * 2**self.num_layers
        if min(size) < smallest:
            raise ValueError(
                f"the discriminator's scale {scale} sees {size[0]}x{size[1]} pixels, fewer than "
                f"the {smallest} a {self.num_layers}-layer PatchGAN needs: use fewer "
                "discriminator.num_scales or num_layers, or larger slices")
