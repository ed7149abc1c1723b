"""The QS-Net generator: a deeply supervised residual U-Net (Ni et al., Med Phys 2026).

Encoder: a 3x3 stem, then at each of `depth` levels `blocks_per_level` residual blocks (the
level's output is kept as a skip) and a 3x3 stride-2 convolution that halves the resolution
and moves to the next width; `blocks_per_level` residual blocks at `bottleneck_width` form
the bottleneck. Decoder: at each level a learned 2x up-sampling (`upsample`: the matmul form
of the paper's 2x2 stride-2 transposed convolution, or a resize and a 3x3 convolution),
concatenation with the skip, `blocks_per_level` residual blocks (the first projects the
doubled width back), and a 1x1 output head. With deep supervision every decoder level has a
head; the heads below full resolution are the auxiliary outputs, coarse to fine. Res-UNet is
the same network with only the last head.

Widths: base_width * 2**level, capped at bottleneck_width.

Optional per-voxel path (`pointwise_width` > 0, not in the paper): a small MLP of each
voxel's own input column (1x1 layers, `layers.pointwise_mlp`) whose output is added to the
full-resolution head before its activation. The voxel-wise part of the mapping (most of
T2w is a function of the voxel's T2 and PD) is then learnt as fast as by the per-voxel
baseline, and the U-Net learns what needs context on top of it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from qsnet_jax.models import layers


class GeneratorOutput(NamedTuple):
    """prediction [B, H, W, C_out]; aux: deep-supervision outputs coarse -> fine, each
    [B, ceil(H / 2**j), ceil(W / 2**j), C_out]; () when the model has none."""

    prediction: Any
    aux: tuple = ()


class ResidualUNet(nn.Module):
    out_channels: int
    base_width: int = 32
    depth: int = 4
    blocks_per_level: int = 2
    bottleneck_width: int = 512
    norm: str = "group"
    activation: str = "silu"
    dropout: float = 0.0
    output_activation: str = "sigmoid"
    deep_supervision: bool = True
    upsample: str = "transposed"  # layers.UPSAMPLINGS
    conv_weight_grad: str = "xla"  # layers.CONV_WEIGHT_GRADS
    pointwise_width: int = 0  # hidden width of the per-voxel path; 0 = none (the paper)
    pointwise_layers: int = 2
    dtype: Any = jnp.float32

    def level_width(self, level: int) -> int:
        return min(self.base_width * 2**level, self.bottleneck_width)

    @nn.compact
    def __call__(self, x, train: bool = False) -> GeneratorOutput:
        x, size = layers.pad_to_multiple(x.astype(self.dtype), 2**self.depth)
        pointwise = None
        if self.pointwise_width > 0:
            pointwise = layers.pointwise_mlp(
                x, width=self.pointwise_width, num_layers=self.pointwise_layers,
                out_channels=self.out_channels, activation=self.activation, dtype=self.dtype,
                prefix="pointwise_")
        block = lambda features, name: layers.ResidualBlock(
            features, norm=self.norm, activation=self.activation, dropout=self.dropout,
            conv_weight_grad=self.conv_weight_grad, dtype=self.dtype, name=name)
        conv = lambda *args, **kwargs: layers.make_conv(self.conv_weight_grad, *args,
                                                        dtype=self.dtype, **kwargs)

        h = conv(self.level_width(0), (3, 3), name="stem")(x)
        skips = []
        for level in range(self.depth):
            for b in range(self.blocks_per_level):
                h = block(self.level_width(level), f"encoder_{level}_block_{b}")(h, train)
            skips.append(h)
            next_width = (self.level_width(level + 1) if level + 1 < self.depth
                          else self.bottleneck_width)
            h = conv(next_width, (3, 3), strides=(2, 2), name=f"encoder_{level}_down")(h)
        for b in range(self.blocks_per_level):
            h = block(self.bottleneck_width, f"encoder_bottleneck_block_{b}")(h, train)

        heads = []
        for level in reversed(range(self.depth)):
            width = self.level_width(level)
            h = layers.make_upsample(self.upsample, width, conv_weight_grad=self.conv_weight_grad,
                                     dtype=self.dtype, name=f"decoder_{level}_up")(h)
            h = jnp.concatenate([h, skips[level]], axis=-1)
            for b in range(self.blocks_per_level):
                h = block(width, f"decoder_{level}_block_{b}")(h, train)
            if self.deep_supervision or level == 0:
                extra = pointwise if level == 0 else None
                heads.append((level, self._head(h, f"decoder_{level}_head", extra)))

        outputs = [layers.crop_to(y, size, 2**level) for level, y in heads]
        return GeneratorOutput(prediction=outputs[-1], aux=tuple(outputs[:-1]))

    def _head(self, h, name, extra=None):
        y = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name=name)(h)
        if extra is not None:
            y = y + extra
        # The output non-linearity in float32: sigmoid saturation is imprecise in bfloat16.
        return layers.output_activation_fn(self.output_activation)(y.astype(jnp.float32))


POINTWISE_PREFIX = "pointwise_"
FULL_RESOLUTION_HEAD = "decoder_0_head"


def seed_pointwise_path(variables: dict, pervoxel_params: dict) -> dict:
    """QS-Net / Res-UNet `variables` whose per-voxel path is a trained per-voxel MLP
    (`PerVoxelMLP` params: hidden_0.., head) and whose full-resolution head is zero.

    The network then starts as that MLP exactly, prediction = act(MLP(x)), and the U-Net
    learns only what the voxel's own inputs cannot say (the pre-fit of issue 12,
    `config.pointwise_prefit`). The auxiliary heads and every other weight are kept.
    ValueError when the network has no per-voxel path or the two MLPs differ in shape.
    """
    params = dict(variables["params"])
    expected = sorted(k[len(POINTWISE_PREFIX):] for k in params
                      if k.startswith(POINTWISE_PREFIX))
    if not expected:
        raise ValueError("the network has no per-voxel path to seed (model.pointwise_width=0)")
    if sorted(pervoxel_params) != expected:
        raise ValueError(f"per-voxel MLP layers {sorted(pervoxel_params)} do not match the "
                         f"network's per-voxel path {expected} (model.pointwise_layers)")
    for name, layer in pervoxel_params.items():
        own = params[POINTWISE_PREFIX + name]
        for leaf, value in layer.items():
            if tuple(value.shape) != tuple(own[leaf].shape):
                raise ValueError(f"per-voxel MLP {name}/{leaf} has shape {tuple(value.shape)}, "
                                 f"the network's per-voxel path {tuple(own[leaf].shape)} "
                                 "(model.pointwise_width or the input channels differ)")
        params[POINTWISE_PREFIX + name] = dict(layer)
    params[FULL_RESOLUTION_HEAD] = {leaf: jnp.zeros_like(value) for leaf, value
                                    in params[FULL_RESOLUTION_HEAD].items()}
    return {**variables, "params": params}
