"""The per-voxel baseline: a small MLP from one voxel's input channels to its contrasts.

It is the floor a spatial model has to clear: it sees the (T1, T2, PD) values of one voxel
and nothing around it, like a signal equation or a lookup table fitted on the training
subjects. It is written as 1x1 convolutions, so it takes the same [B, H, W, C] slices as the
other generators and trains in the same loop with the same losses. With 2.5D context the
input column of a voxel also holds the same (x, y) position in the neighbouring slices; it
still never sees another in-plane position. There is no normalization layer on purpose:
group, instance or batch norm would pool statistics over the slice and break locality.

Layers: `num_layers` hidden 1x1 convolutions of `width` features with the config's
activation, then a 1x1 head with the output activation. Parameters:
C_in*w + w + (L - 1)*(w*w + w) + w*C_out + C_out.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from qsnet_jax.models import layers
from qsnet_jax.models.qsnet import GeneratorOutput


class PerVoxelMLP(nn.Module):
    out_channels: int
    width: int = 64
    num_layers: int = 3
    activation: str = "silu"
    output_activation: str = "sigmoid"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False) -> GeneratorOutput:
        del train
        if self.num_layers < 1:
            raise ValueError(f"the per-voxel MLP needs at least one hidden layer, got "
                             f"num_layers={self.num_layers}")
        out = layers.pointwise_mlp(x, width=self.width, num_layers=self.num_layers,
                                   out_channels=self.out_channels,
                                   activation=self.activation, dtype=self.dtype)
        prediction = layers.output_activation_fn(self.output_activation)(
            out.astype(jnp.float32))
        return GeneratorOutput(prediction=prediction, aux=())
