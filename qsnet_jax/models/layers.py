"""Building blocks shared by the generators: normalization, activations, residual block,
learned up-sampling, and the pad-to-a-multiple / crop-back helpers."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

NORMS = ("group", "instance", "batch", "none")
ACTIVATIONS = {
    "silu": nn.silu,
    "relu": nn.relu,
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
    "gelu": nn.gelu,
}
OUTPUT_ACTIVATIONS = {"sigmoid": nn.sigmoid, "none": lambda x: x, "tanh": jnp.tanh}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# GroupNorm uses up to this many groups (Wu & He 2018); fewer when the width is not divisible.
MAX_GROUPS = 32
# How a convolution's weight gradient is computed (config.model.conv_weight_grad): "xla" is
# XLA's own, "per_sample" sums one XLA weight-gradient convolution per sample (see `conv2d`).
CONV_WEIGHT_GRADS = ("xla", "per_sample")
CONV_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def activation_fn(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def output_activation_fn(name: str) -> Callable:
    try:
        return OUTPUT_ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown output_activation {name!r}; "
                         f"known: {sorted(OUTPUT_ACTIVATIONS)}") from None


def compute_dtype(name: str) -> Dtype:
    try:
        return COMPUTE_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown compute dtype {name!r}; known: {sorted(COMPUTE_DTYPES)}"
                         ) from None


def check_norm(name: str) -> str:
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; known: {list(NORMS)}")
    return name


def check_conv_weight_grad(name: str) -> str:
    if name not in CONV_WEIGHT_GRADS:
        raise ValueError(f"unknown conv_weight_grad {name!r}; known: {list(CONV_WEIGHT_GRADS)}")
    return name


def _conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding,
                                    dimension_numbers=CONV_DIMENSIONS)


def conv2d(x, kernel, strides: tuple[int, int], padding, weight_grad: str = "xla"):
    """An NHWC x HWIO convolution with the gradients XLA's CPU backend computes fastest.

    The forward pass is XLA's own. Two gradients are computed otherwise, with the same result
    up to the order of the summation (tests/test_fast_paths.py, to 1e-5):

    - weight_grad="per_sample": the weight gradient taken one sample at a time and summed.
      Under XLA's YNNPACK convolutions it ran 3-5x faster than the batch's one weight-gradient
      convolution at 32-64 channels; under the Eigen convolutions the project selects
      (`qsnet_jax.xla_cpu`) the batch's own is faster ("xla", the default since then).
    - stride 2 on the CPU: the input gradient of a strided convolution is, to XLA, a
      convolution of a zero-dilated gradient (a slow path: 111 ms against 55 for a 32->64
      3x3 layer at 192x224, batch 8; 2-4.5x on the discriminator's 4x4 layers). It is
      computed instead through the same convolution written in space-to-depth form
      (`space_to_depth_conv`), whose input gradient is a stride-1 convolution.
    """
    return _fast_conv(x, kernel, tuple(strides), _hashable(padding),
                      check_conv_weight_grad(weight_grad))


def _hashable(padding):
    return padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)


def strided_input_grad_by_space_to_depth() -> bool:
    """Whether stride-2 input gradients take the space-to-depth path: on the CPU only (the GPU
    and TPU backends have their own strided input gradients; tests switch it off to build the
    plain reference)."""
    return jax.default_backend() == "cpu"


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fast_conv(x, kernel, strides, padding, weight_grad):
    return _conv(x, kernel, strides, padding)


def _fast_conv_fwd(x, kernel, strides, padding, weight_grad):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _fast_conv_bwd(strides, padding, weight_grad, residuals, grad):
    x, kernel = residuals
    if strides == (2, 2) and strided_input_grad_by_space_to_depth():
        forward = lambda a: space_to_depth_conv(a, kernel, padding)
    else:
        forward = lambda a: _conv(a, kernel, strides, padding)
    (grad_x,) = jax.vjp(forward, x)[1](grad)
    if weight_grad == "xla":
        (grad_kernel,) = jax.vjp(lambda k: _conv(x, k, strides, padding), kernel)[1](grad)
        return grad_x, grad_kernel
    grad_kernel = jnp.zeros(kernel.shape, jnp.float32)
    for n in range(x.shape[0]):
        _, kernel_vjp = jax.vjp(lambda k, n=n: _conv(x[n:n + 1], k, strides, padding), kernel)
        grad_kernel = grad_kernel + kernel_vjp(grad[n:n + 1])[0].astype(jnp.float32)
    return grad_x, grad_kernel.astype(kernel.dtype)


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def space_to_depth_conv(x, kernel, padding):
    """A stride-2 convolution as a stride-1 one: the same output as ``_conv(x, kernel, (2, 2),
    padding)``.

    Each 2x2 block of the padded input becomes one pixel of 4C channels, and the k x k kernel
    (zero-padded to an even size 2k') becomes a k' x k' kernel over those 4C channels: the tap
    ky = 2 qy + a reads block offset qy, phase a. For 4x4 kernels with padding 1 no zero tap is
    added; for 3x3 kernels 16 taps stand for 9. Only its input gradient is used (`conv2d`).
    """
    _, height, width, channels = x.shape
    kh, kw, _, features = kernel.shape
    if isinstance(padding, str):  # XLA's own rule for "SAME" / "VALID"
        padding = lax.padtype_to_pads((height, width), (kh, kw), (2, 2), padding)
    pads = []
    for size, k, (before, after) in ((height, kh, padding[0]), (width, kw, padding[1])):
        outputs = (size + before + after - k) // 2 + 1
        half_kernel = -(-k // 2)
        pads.append((before, 2 * (outputs + half_kernel - 1) - size - before))
    (top, bottom), (left, right) = pads
    # A negative "after" crops input rows that no output reads.
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0),
                                             (0, 0, 0)))
    n, ph, pw, _ = x.shape
    blocks = x.reshape(n, ph // 2, 2, pw // 2, 2, channels).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, ph // 2, pw // 2, 4 * channels)
    qh, qw = -(-kh // 2), -(-kw // 2)
    kernel = jnp.pad(kernel, ((0, 2 * qh - kh), (0, 2 * qw - kw), (0, 0), (0, 0)))
    kernel = kernel.reshape(qh, 2, qw, 2, channels, features).transpose(0, 2, 1, 3, 4, 5)
    kernel = kernel.reshape(qh, qw, 4 * channels, features)
    return _conv(blocks, kernel, (1, 1), "VALID")


class FastConv(nn.Module):
    """nn.Conv for NHWC images (same parameters, names, initializers and padding) with the
    gradients of `conv2d`: the weight gradient `weight_grad`, and a stride-2 input gradient
    through space-to-depth on the CPU."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Any = "SAME"
    use_bias: bool = True
    weight_grad: str = "xla"  # see CONV_WEIGHT_GRADS
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*self.kernel_size, x.shape[-1], self.features), self.param_dtype)
        bias = (self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(x, kernel, self.strides, self.padding, self.weight_grad)
        return y if bias is None else y + bias


def make_conv(weight_grad: str, features: int, kernel_size, strides=(1, 1),
              **kwargs) -> nn.Module:
    """A convolution layer: flax's nn.Conv where XLA's own gradients are wanted (weight
    gradient "xla", stride 1), FastConv otherwise; both have the same parameter tree, so
    checkpoints move between them."""
    strides = tuple(strides)
    if check_conv_weight_grad(weight_grad) == "xla" and strides == (1, 1):
        return nn.Conv(features, kernel_size, strides=strides, **kwargs)
    return FastConv(features, tuple(kernel_size), strides=strides, weight_grad=weight_grad,
                    **kwargs)


def normalize(x, kind: str, *, train: bool, dtype: Dtype = jnp.float32, name: str | None = None):
    """Apply the normalization `kind` to NHWC `x`. Call inside a compact method.

    Batch norm keeps running statistics in the "batch_stats" collection (updated when train);
    group and instance norm do not depend on the batch (docs/design.md section 3).
    """
    if kind == "none":
        return x
    if kind == "group":
        groups = math.gcd(x.shape[-1], MAX_GROUPS)
        return nn.GroupNorm(num_groups=groups, dtype=dtype, name=name)(x)
    if kind == "instance":
        return nn.InstanceNorm(dtype=dtype, name=name)(x)
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype,
                            name=name)(x)
    raise ValueError(f"unknown norm {kind!r}; known: {list(NORMS)}")


class Pointwise(nn.Module):
    """A 1x1 convolution computed as one matrix product over the channels. Same parameters
    as ``nn.Conv(features, (1, 1))`` (kernel ``[1, 1, C, F]``, bias ``[F]``), same outputs;
    XLA's CPU convolution path ran the per-voxel MLP's training step 3.2x slower (1.35 against
    0.43 s for forward and backward of a 8 x 96 x 112 batch, measured on 2 cores)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (1, 1, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        return jnp.einsum("...c,cf->...f", x, kernel[0, 0]) + bias


def pointwise_mlp(x, *, width: int, num_layers: int, out_channels: int, activation: str,
                  dtype: Dtype = jnp.float32, prefix: str = ""):
    """`num_layers` hidden 1x1 layers of `width` features, then a linear 1x1 layer to
    `out_channels`: a function of each voxel's own input column, returned before any output
    activation. Call it inside an ``nn.compact`` method: the layers (``{prefix}hidden_{i}``,
    ``{prefix}head``) become the caller's submodules."""
    act = activation_fn(activation)
    h = x.astype(dtype)
    for i in range(num_layers):
        h = act(Pointwise(width, dtype=dtype, name=f"{prefix}hidden_{i}")(h))
    return Pointwise(out_channels, dtype=dtype, name=f"{prefix}head")(h)


class ResidualBlock(nn.Module):
    """conv3x3-norm-act-(dropout)-conv3x3-norm, plus the input (1x1-projected when the width
    changes), then the activation: the basic block of He et al. 2016."""

    features: int
    norm: str = "group"
    activation: str = "silu"
    dropout: float = 0.0
    conv_weight_grad: str = "xla"  # see CONV_WEIGHT_GRADS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = activation_fn(self.activation)
        # A bias before a normalization is cancelled by it; keep one only without norm.
        use_bias = self.norm == "none"
        conv = lambda name: make_conv(self.conv_weight_grad, self.features, (3, 3),
                                      padding="SAME", use_bias=use_bias, dtype=self.dtype,
                                      name=name)
        h = conv("conv_0")(x)
        h = act(normalize(h, self.norm, train=train, dtype=self.dtype, name="norm_0"))
        if self.dropout > 0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv("conv_1")(h)
        h = normalize(h, self.norm, train=train, dtype=self.dtype, name="norm_1")
        skip = x
        if x.shape[-1] != self.features:
            skip = make_conv(self.conv_weight_grad, self.features, (1, 1), dtype=self.dtype,
                             name="skip_projection")(x)
        return act(h + skip)


class MatmulUpsample2x(nn.Module):
    """A learned 2x up-sampling, mathematically a 2x2 stride-2 transposed convolution, written
    as one matrix product plus a depth-to-space reshape.

    Each input pixel emits a 2x2 block of output pixels: out[2i+a, 2j+b] = x[i, j] @ K[:, a, b]
    + bias. Same parameters as nn.ConvTranspose(features, (2, 2), strides=(2, 2)) (its kernel is
    ours flipped and transposed, see the test), but XLA on CPU computes the weight gradient of
    the transposed convolution at ~2 GFLOP/s and of a matmul at full speed (docs/design.md sec. 7).
    """

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, height, width, channels = x.shape
        # LeCun-normal with the true fan-in: each output pixel sees one input pixel.
        kernel = self.param("kernel", nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=(1, 2, 3)),
            (channels, 2, 2, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.dot(x.reshape(-1, channels), kernel.reshape(channels, 4 * self.features))
        return depth_to_space(y.reshape(batch, height, width, 4 * self.features), 2) + bias


class ResizeConvUpsample2x(nn.Module):
    """A learned 2x up-sampling as a fixed resize ("nearest" or "bilinear") followed by a 3x3
    convolution: every output pixel gets the same kernel, so no checkerboard can come from
    the up-sampling itself (Odena et al. 2016, "Deconvolution and checkerboard artifacts")."""

    features: int
    method: str = "nearest"
    conv_weight_grad: str = "xla"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, height, width, channels = x.shape
        if self.method == "nearest":
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = jax.image.resize(x, (batch, 2 * height, 2 * width, channels), self.method)
        return make_conv(self.conv_weight_grad, self.features, (3, 3), padding="SAME",
                         dtype=self.dtype, name="conv")(x)


# config.model.upsample -> how the decoder doubles the resolution
UPSAMPLINGS = ("transposed", "nearest_conv", "bilinear_conv")


def check_upsample(name: str) -> str:
    if name not in UPSAMPLINGS:
        raise ValueError(f"unknown upsample {name!r}; known: {list(UPSAMPLINGS)}")
    return name


def make_upsample(kind: str, features: int, *, conv_weight_grad: str, dtype: Dtype,
                  name: str) -> nn.Module:
    if check_upsample(kind) == "transposed":
        return MatmulUpsample2x(features, dtype=dtype, name=name)
    return ResizeConvUpsample2x(features, method=kind.removesuffix("_conv"),
                                conv_weight_grad=conv_weight_grad, dtype=dtype, name=name)


def pad_to_multiple(x, multiple: int):
    """Zero-pad NHWC `x` at the bottom and right so H and W are multiples of `multiple`.

    Zeros, not reflection: the normalized images have a zero background, so zero padding adds
    more background instead of mirrored anatomy, and it works for any size (reflection needs
    the pad to be smaller than the image). Returns (padded, (H, W)).
    """
    height, width = x.shape[1], x.shape[2]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return x, (height, width)


def crop_to(x, size: tuple[int, int], downsampling: int = 1):
    """Crop NHWC `x` back to `size` seen at 1/`downsampling` scale (ceil, as the padding was
    at the bottom and right)."""
    height = -(-size[0] // downsampling)
    width = -(-size[1] // downsampling)
    return x[:, :height, :width, :]


def depth_to_space(x, block: int):
    """[B, H, W, block*block*C] -> [B, H*block, W*block, C]."""
    batch, height, width, channels = x.shape
    out = channels // (block * block)
    x = x.reshape(batch, height, width, block, block, out).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height * block, width * block, out)


def space_to_depth(x, block: int):
    """[B, H, W, C] -> [B, H/block, W/block, block*block*C] (H, W multiples of block)."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // block, block, width // block, block, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height // block, width // block, block * block * channels)


class MatmulTransposedConv4x4(nn.Module):
    """PyTorch's ConvTranspose2d(kernel_size=4, stride=2, padding=1) (the pix2pix decoder
    up-sampling) as one matrix product on 2x2 patches plus a phase shuffle.

    Output pixel 2m+a (a in {0, 1}) receives input pixels m+a-1 and m+a with kernel taps
    3-a and 1-a, so every phase is a 2x2 convolution over the input padded by one; the four
    phases share the 2x2 patches and become one [4 C_in, 4 C_out] matmul. kernel[k_y, k_x,
    c_in, c_out] has PyTorch's meaning: out[o] += x[i] * kernel[o + 1 - 2 i]. Same parameters
    and multiply-adds as the transposed convolution, whose weight gradient XLA on CPU runs at
    ~2 GFLOP/s (docs/design.md section 7).
    """

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, height, width, channels = x.shape
        # LeCun-normal with the true fan-in: each output pixel sees 2x2 input pixels.
        kernel = self.param("kernel", nn.initializers.variance_scaling(
            1.0 / 4, "fan_in", "truncated_normal", in_axis=2, out_axis=3),
            (4, 4, channels, self.features), self.param_dtype)
        bias = (self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        taps = [(ty, tx) for ty in (0, 1) for tx in (0, 1)]
        patches = jnp.concatenate(
            [padded[:, ty:ty + height + 1, tx:tx + width + 1] for ty, tx in taps], axis=-1)
        # weights[(t_y, t_x, c), (a, b, o)] = kernel[3 - a - 2 t_y, 3 - b - 2 t_x, c, o]
        weights = jnp.stack([jnp.stack([kernel[3 - a - 2 * ty, 3 - b - 2 * tx]
                                        for a in (0, 1) for b in (0, 1)], axis=1)
                             for ty, tx in taps], axis=0)  # [4 taps, C_in, 4 phases, C_out]
        y = jnp.dot(patches, weights.reshape(4 * channels, 4 * self.features))
        y = y.reshape(batch, height + 1, width + 1, 4, self.features)
        phases = [y[:, a:a + height, b:b + width, 2 * a + b] for a in (0, 1) for b in (0, 1)]
        out = depth_to_space(jnp.concatenate(phases, axis=-1), 2)
        return out if bias is None else out + bias
