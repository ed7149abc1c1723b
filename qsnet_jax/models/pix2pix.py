"""The pix2pix generator: U-Net-256 of Isola et al. 2017 (CVPR), "Image-to-image translation
with conditional adversarial networks", as in the authors' PyTorch reference implementation
(netG unet_256, ngf 64).

Encoder C64-C128-C256-C512-C512-C512-C512-C512: 4x4 stride-2 convolutions (padding 1), each
preceded by LeakyReLU(0.2) except the first, each followed by normalization except the first
and the innermost. Decoder: ReLU, 4x4 stride-2 transposed convolution (PyTorch padding 1),
normalization (not on the last), skip concatenation; dropout 0.5 in the first three decoder
layers (the paper's CD512-CD1024-CD1024; the reference code puts it one layer later, which
changes no parameter). As in the reference, only the last layer has a bias when there is
normalization (54,413,955 parameters for 3 -> 3 channels with batch norm).

Project choices: the output activation is config.model.output_activation (the paper's tanh
suits targets in [-1, 1]; ours are in [0, 1], hence sigmoid by default); normalization is
config.model.norm (the reference uses batch norm); dropout is active in training only, so
evaluation is deterministic; inputs whose sides are not multiples of 2**8 are zero-padded
and cropped back. Up-sampling is the matmul form of the transposed convolution
(layers.MatmulTransposedConv4x4: same parameters, exact).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from qsnet_jax.models import layers
from qsnet_jax.models.qsnet import GeneratorOutput

NUM_DOWNS = 8  # U-Net-256: 256 -> 1
DROPOUT_RATE = 0.5
DROPOUT_DECODER_LAYERS = 3


class Pix2PixUNet(nn.Module):
    out_channels: int
    base_width: int = 64  # ngf
    norm: str = "batch"
    output_activation: str = "sigmoid"
    dtype: Any = jnp.float32

    def widths(self) -> list[int]:
        return [self.base_width * min(2**level, 8) for level in range(NUM_DOWNS)]

    @nn.compact
    def __call__(self, x, train: bool = False) -> GeneratorOutput:
        x, size = layers.pad_to_multiple(x.astype(self.dtype), 2**NUM_DOWNS)
        widths = self.widths()
        normed_bias = self.norm == "none"
        norm = lambda h, name: layers.normalize(h, self.norm, train=train, dtype=self.dtype,
                                                name=name)

        skips = []
        h = x
        for level, width in enumerate(widths):
            outermost, innermost = level == 0, level == NUM_DOWNS - 1
            if not outermost:
                h = nn.leaky_relu(h, 0.2)
            has_norm = not (outermost or innermost)
            h = nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                        use_bias=normed_bias, dtype=self.dtype,
                        name=f"encoder_{level}")(h)
            if has_norm:
                h = norm(h, f"encoder_{level}_norm")
            skips.append(h)

        for step, level in enumerate(reversed(range(NUM_DOWNS))):
            if level < NUM_DOWNS - 1:  # every decoder layer but the first sees a skip
                h = jnp.concatenate([skips[level], h], axis=-1)
            h = nn.relu(h)
            if level == 0:
                h = layers.MatmulTransposedConv4x4(self.out_channels, dtype=self.dtype,
                                                   name="decoder_0")(h)
                break
            h = layers.MatmulTransposedConv4x4(widths[level - 1], use_bias=normed_bias,
                                               dtype=self.dtype, name=f"decoder_{level}")(h)
            h = norm(h, f"decoder_{level}_norm")
            if step < DROPOUT_DECODER_LAYERS:
                h = nn.Dropout(DROPOUT_RATE, deterministic=not train)(h)

        y = layers.output_activation_fn(self.output_activation)(h.astype(jnp.float32))
        return GeneratorOutput(prediction=layers.crop_to(y, size), aux=())
