"""A Swin-Transformer generator: Swin-UNet (Cao et al. 2021, "Swin-Unet: Unet-like pure
transformer for medical image segmentation") used for image-to-image synthesis.

Patch embedding (4x4 patches, linear, LayerNorm); encoder stages of Swin blocks (Liu et al.
2021: window attention with a relative position bias, alternating with shifted windows and
their attention masks; pre-norm MLP) separated by patch merging (2x2 -> linear 4C -> 2C);
the last stage is the bottleneck. Decoder: patch expanding (linear C -> 2C, depth-to-space
to C/2), skip concatenation and a linear back to the stage width, Swin blocks; a final 4x
patch expanding and a 1x1 convolution to the contrasts. Widths embed_dim * 2**stage; depths
and heads per stage from config (defaults are Swin-T's / Swin-UNet's).

Any input size: zero-padded at the bottom/right to a multiple of 4 * 2**(stages - 1) *
window_size (every stage then tiles into whole windows) and cropped back.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from qsnet_jax.models import layers
from qsnet_jax.models.qsnet import GeneratorOutput

PATCH_SIZE = 4
MLP_RATIO = 4
LAYER_NORM_EPS = 1e-5  # the Swin reference (PyTorch LayerNorm default)
MASKED_LOGIT = -1e9  # added to logits of token pairs from different shifted regions


def window_partition(x, window: int):
    """[B, H, W, C] -> [B * H/w * W/w, w*w, C] (windows in row-major order)."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_merge(windows, window: int, height: int, width: int):
    """Inverse of window_partition."""
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window: int) -> np.ndarray:
    """[w*w, w*w] index into the (2w-1)^2 bias table of the offset between two tokens."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    offsets = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N] in [0, 2w-2]
    return offsets[0] * (2 * window - 1) + offsets[1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """[num_windows, w*w, w*w] additive mask: 0 where two tokens of a window come from the
    same region of the un-shifted image, MASKED_LOGIT where the cyclic shift brought them
    together from opposite borders (Liu et al. 2021)."""
    region = np.zeros((1, height, width, 1))
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            region[:, rows, cols, :] = label
            label += 1
    labels = np.asarray(window_partition(region, window))[..., 0]  # [nW, N]
    same = labels[:, :, None] == labels[:, None, :]
    return np.where(same, 0.0, MASKED_LOGIT).astype(np.float32)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (shifted) windows with a relative position bias, on
    a [B, H, W, C] map whose H and W are multiples of `window`."""

    num_heads: int
    window: int
    shift: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, height, width, channels = x.shape
        head_dim = channels // self.num_heads
        table = self.param("relative_position_bias",
                           nn.initializers.truncated_normal(stddev=0.02),
                           ((2 * self.window - 1) ** 2, self.num_heads))
        bias = table[relative_position_index(self.window)].transpose(2, 0, 1)  # [h, N, N]
        if self.shift:
            x = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2))
        tokens = window_partition(x, self.window)  # [B*nW, N, C]
        qkv = nn.Dense(3 * channels, dtype=self.dtype, name="qkv")(tokens)
        qkv = qkv.reshape(tokens.shape[0], tokens.shape[1], 3, self.num_heads, head_dim)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B*nW, N, h, d]
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)
        logits = logits * head_dim**-0.5 + bias
        if self.shift:
            mask = shifted_window_mask(height, width, self.window, self.shift)  # [nW, N, N]
            logits = logits.reshape(batch, mask.shape[0], self.num_heads, *mask.shape[1:])
            logits = (logits + mask[None, :, None]).reshape(-1, self.num_heads,
                                                            *mask.shape[1:])
        weights = nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value).reshape(tokens.shape)
        out = nn.Dense(channels, dtype=self.dtype, name="proj")(out)
        out = window_merge(out, self.window, height, width)
        if self.shift:
            out = jnp.roll(out, (self.shift, self.shift), axis=(1, 2))
        return out


class SwinBlock(nn.Module):
    """x + W-MSA(LN(x)); x + MLP(LN(x)). No shift when the map is a single window."""

    num_heads: int
    window: int
    shift: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        single_window = x.shape[1] <= self.window and x.shape[2] <= self.window
        shift = 0 if single_window else self.shift
        h = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="norm_attention")(x)
        x = x + WindowAttention(self.num_heads, self.window, shift, self.dtype,
                                name="attention")(h)
        h = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="norm_mlp")(x)
        h = nn.gelu(nn.Dense(MLP_RATIO * channels, dtype=self.dtype, name="mlp_in")(h))
        return x + nn.Dense(channels, dtype=self.dtype, name="mlp_out")(h)


class SwinUNet(nn.Module):
    out_channels: int
    embed_dim: int = 96
    depths: tuple = (2, 2, 2, 2)
    num_heads: tuple = (3, 6, 12, 24)
    window_size: int = 8
    output_activation: str = "sigmoid"
    dtype: Any = jnp.float32

    def stage_blocks(self, h, stage, prefix):
        for b in range(self.depths[stage]):
            shift = self.window_size // 2 if b % 2 else 0
            h = SwinBlock(self.num_heads[stage], self.window_size, shift, self.dtype,
                          name=f"{prefix}_{stage}_block_{b}")(h)
        return h

    @nn.compact
    def __call__(self, x, train: bool = False) -> GeneratorOutput:
        del train  # no dropout or batch statistics
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"swin_depths {self.depths} and swin_heads {self.num_heads} "
                             "need one entry per stage")
        stages = len(self.depths)
        multiple = PATCH_SIZE * 2 ** (stages - 1) * self.window_size
        x, size = layers.pad_to_multiple(x.astype(self.dtype), multiple)
        dense = lambda features, name: nn.Dense(features, dtype=self.dtype, name=name)
        norm = lambda name: nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name=name)

        # A random (not zero) bias: an all-background patch then embeds to a token whose
        # channels differ, so LayerNorm's gradient stays finite. With flax's zero bias such a
        # token is constant, LayerNorm's gradient there is 1/sqrt(eps), and the residual chain
        # of blocks overflows it to inf (PyTorch's Linear starts with a random bias).
        h = nn.Dense(self.embed_dim, dtype=self.dtype, name="stem_patch_embed",
                     bias_init=nn.initializers.normal(stddev=0.02))(
            layers.space_to_depth(x, PATCH_SIZE))
        h = norm("stem_patch_norm")(h)
        skips = []
        for stage in range(stages):
            h = self.stage_blocks(h, stage, "encoder")
            if stage < stages - 1:
                skips.append(h)
                merged = norm(f"encoder_{stage}_merge_norm")(layers.space_to_depth(h, 2))
                h = dense(2 * h.shape[-1], f"encoder_{stage}_merge")(merged)

        for stage in reversed(range(stages - 1)):
            width = self.embed_dim * 2**stage
            h = layers.depth_to_space(dense(4 * width, f"decoder_{stage}_expand")(h), 2)
            h = norm(f"decoder_{stage}_expand_norm")(h)
            h = jnp.concatenate([h, skips[stage]], axis=-1)
            h = dense(width, f"decoder_{stage}_concat_back")(h)
            h = self.stage_blocks(h, stage, "decoder")
        h = norm("decoder_norm")(h)
        expanded = dense(PATCH_SIZE**2 * self.embed_dim, "decoder_final_expand")(h)
        h = norm("decoder_final_expand_norm")(layers.depth_to_space(expanded, PATCH_SIZE))
        y = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="decoder_head")(h)
        y = layers.output_activation_fn(self.output_activation)(y.astype(jnp.float32))
        return GeneratorOutput(prediction=layers.crop_to(y, size), aux=())
