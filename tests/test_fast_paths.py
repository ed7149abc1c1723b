"""Every fast path equals the plain path it replaces, in outputs and in gradients (1e-5).

The plain paths: flax's nn.Conv (one XLA convolution and its autodiff, with the space-to-depth
input gradient switched off), a strided lax convolution, and a NumPy re-computation of the
weight gradient. Tiny shapes: the whole file runs in seconds.
"""

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import default
from qsnet_jax import models
from qsnet_jax.models import layers

TOLERANCE = 1e-5


def images(seed, batch, height, width, channels):
    return jax.random.normal(jax.random.key(seed), (batch, height, width, channels))


def numpy_weight_gradient(x, grad, kernel_size):
    """d(sum(grad * conv(x, k)))/dk for a stride-1, 'SAME' convolution, by explicit sums."""
    x, grad = np.asarray(x, np.float64), np.asarray(grad, np.float64)
    kh, kw = kernel_size
    _, height, width, _ = x.shape
    padded = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    return np.stack([np.stack([np.einsum("nhwc,nhwd->cd",
                                         padded[:, i:i + height, j:j + width], grad)
                               for j in range(kw)]) for i in range(kh)])


CASES = [  # kernel, strides, padding
    ((3, 3), (1, 1), "SAME"),
    ((3, 3), (2, 2), "SAME"),
    ((1, 1), (1, 1), "SAME"),
    ((4, 4), (2, 2), ((1, 1), (1, 1))),
]


def plain_gradients():
    """XLA's own strided input gradients (no space-to-depth) inside the block."""
    return mock.patch.object(layers, "strided_input_grad_by_space_to_depth",
                             lambda: False)


@pytest.mark.parametrize("weight_grad", ["per_sample", "xla"])
@pytest.mark.parametrize("kernel_size, strides, padding", CASES)
def test_fast_conv_equals_flax_conv_in_output_and_gradients(kernel_size, strides, padding,
                                                            weight_grad):
    x = images(0, 3, 8, 10, 5)
    plain = jax.nn.initializers.lecun_normal()
    fast_layer = layers.FastConv(6, kernel_size, strides=strides, padding=padding,
                                 weight_grad=weight_grad)
    plain_layer = nn.Conv(6, kernel_size, strides=strides, padding=padding)
    params = fast_layer.init(jax.random.key(1), x)["params"]
    params = {"kernel": params["kernel"], "bias": plain(jax.random.key(2), (1, 6))[0]}
    # Same parameter tree as nn.Conv: checkpoints move between the two paths.
    assert jax.tree.structure(params) == jax.tree.structure(
        plain_layer.init(jax.random.key(1), x)["params"])

    def loss(layer):
        def f(p, inputs):
            y = layer.apply({"params": p}, inputs)
            return jnp.sum(jnp.sin(y)), y
        return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)

    (_, y_fast), (gp_fast, gx_fast) = loss(fast_layer)(params, x)
    with plain_gradients():
        (_, y_plain), (gp_plain, gx_plain) = loss(plain_layer)(params, x)
    np.testing.assert_allclose(y_fast, y_plain, atol=TOLERANCE)
    np.testing.assert_allclose(gx_fast, gx_plain, atol=TOLERANCE)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(gp_fast[name], gp_plain[name], atol=TOLERANCE,
                                   rtol=TOLERANCE)


@pytest.mark.parametrize("kernel, padding, size", [
    (3, "SAME", (8, 10)), (3, "SAME", (7, 9)), (4, ((1, 1), (1, 1)), (8, 10)),
    (4, ((1, 1), (1, 1)), (9, 11)), (5, "SAME", (12, 6)), (3, "VALID", (9, 9)),
    (2, "VALID", (8, 8))])
def test_space_to_depth_conv_equals_the_strided_convolution(kernel, padding, size):
    """Odd sizes, cropped rows and zero taps included; and its input gradient, which is the
    one conv2d uses, equals the strided convolution's."""
    x = images(14, 2, *size, 3)
    weights = jax.random.normal(jax.random.key(15), (kernel, kernel, 3, 4))
    strided = lambda a: jax.lax.conv_general_dilated(
        a, weights, (2, 2), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    expected, strided_vjp = jax.vjp(strided, x)
    got, space_to_depth_vjp = jax.vjp(lambda a: layers.space_to_depth_conv(a, weights, padding),
                                      x)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    grad = jax.random.normal(jax.random.key(16), expected.shape)
    np.testing.assert_allclose(space_to_depth_vjp(grad)[0], strided_vjp(grad)[0],
                               atol=TOLERANCE)


def test_strided_input_gradient_takes_the_space_to_depth_path_on_the_cpu():
    """The fast path is the one that runs (not only a correct function beside it)."""
    x = images(17, 2, 8, 8, 3)
    kernel = jax.random.normal(jax.random.key(18), (3, 3, 3, 4))
    calls = []
    real = layers.space_to_depth_conv
    with mock.patch.object(layers, "space_to_depth_conv",
                           lambda *args: calls.append(1) or real(*args)):
        jax.grad(lambda a: jnp.sum(layers.conv2d(a, kernel, (2, 2), "SAME")))(x)
    assert calls and jax.default_backend() == "cpu"


def test_per_sample_weight_gradient_equals_numpy_sums():
    x = images(3, 4, 7, 9, 3)
    kernel = jax.random.normal(jax.random.key(4), (3, 3, 3, 2))
    grad = images(5, 4, 7, 9, 2)
    _, vjp = jax.vjp(lambda k: layers.conv2d(x, k, (1, 1), "SAME", "per_sample"), kernel)
    np.testing.assert_allclose(vjp(grad)[0], numpy_weight_gradient(x, grad, (3, 3)),
                               atol=TOLERANCE, rtol=TOLERANCE)


def tiny_config(**overrides):
    config = default.get_config().model
    config.update(base_width=8, depth=2, blocks_per_level=1, bottleneck_width=16, **overrides)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("upsample", ["transposed", "nearest_conv"])
def test_generator_fast_path_equals_plain_path(upsample):
    """The whole U-Net: per-sample weight gradients and space-to-depth input gradients give
    nn.Conv's outputs and gradients."""
    build = lambda grad: models.build_generator(
        tiny_config(conv_weight_grad=grad, upsample=upsample),
        input_channels=3, target_channels=2)
    fast, plain = build("per_sample"), build("xla")
    x = images(6, 2, 12, 16, 3)
    target = jax.random.uniform(jax.random.key(7), (2, 12, 16, 2))
    variables = fast.init(jax.random.key(8), x)

    def loss(model):
        def f(params):
            out = model.apply({"params": params}, x)
            return jnp.mean(jnp.abs(out.prediction - target)), out.prediction
        return jax.value_and_grad(f, has_aux=True)(variables["params"])

    (loss_fast, y_fast), grads_fast = loss(fast)
    with plain_gradients():
        (loss_plain, y_plain), grads_plain = loss(plain)
    np.testing.assert_allclose(y_fast, y_plain, atol=TOLERANCE)
    np.testing.assert_allclose(loss_fast, loss_plain, atol=TOLERANCE)
    flat_fast = traverse_util.flatten_dict(grads_fast)
    flat_plain = traverse_util.flatten_dict(grads_plain)
    assert flat_fast.keys() == flat_plain.keys()
    for key, value in flat_plain.items():
        np.testing.assert_allclose(flat_fast[key], value, atol=TOLERANCE, rtol=1e-4,
                                   err_msg="/".join(key))


def test_nearest_resize_conv_upsample_equals_numpy_repeat_then_conv():
    x = images(9, 2, 3, 4, 5)
    upsample = layers.ResizeConvUpsample2x(features=4, method="nearest")
    variables = upsample.init(jax.random.key(10), x)
    repeated = np.repeat(np.repeat(np.asarray(x), 2, axis=1), 2, axis=2)
    kernel = np.asarray(variables["params"]["conv"]["kernel"], np.float64)
    padded = np.pad(repeated, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = sum(np.einsum("nhwc,cd->nhwd", padded[:, i:i + 6, j:j + 8], kernel[i, j])
                   for i in range(3) for j in range(3))
    np.testing.assert_allclose(upsample.apply(variables, x), expected, atol=TOLERANCE)


@pytest.mark.parametrize("key, value", [("conv_weight_grad", "fast"), ("upsample", "pixel")])
def test_unknown_fast_path_names_fail_clearly(key, value):
    with pytest.raises(ValueError, match=key):
        models.build_generator(tiny_config(**{key: value}), input_channels=3, target_channels=2)


@pytest.mark.slow
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_discriminator_fast_path_equals_plain_path(spectral_norm):
    config = default.get_config().discriminator
    config.update(base_width=4, num_layers=2, num_scales=2, spectral_norm=spectral_norm)
    build = lambda grad: models.build_discriminator(_with(config, grad))
    fast, plain = build("per_sample"), build("xla")
    condition, image = images(11, 2, 24, 24, 3), images(12, 2, 24, 24, 2)
    variables = fast.init(jax.random.key(13), condition, image)

    def loss(model):
        def f(params, image):
            logits = model.apply({**variables, "params": params}, condition, image)
            return sum(jnp.sum(jnp.tanh(logit)) for logit in logits)
        return jax.value_and_grad(f, argnums=(0, 1))(variables["params"], image)

    (value_fast, (grads_fast, gimage_fast)) = loss(fast)
    with plain_gradients():
        (value_plain, (grads_plain, gimage_plain)) = loss(plain)
    np.testing.assert_allclose(value_fast, value_plain, rtol=TOLERANCE)
    np.testing.assert_allclose(gimage_fast, gimage_plain, atol=TOLERANCE)
    for key, value in traverse_util.flatten_dict(grads_plain).items():
        np.testing.assert_allclose(traverse_util.flatten_dict(grads_fast)[key], value,
                                   atol=TOLERANCE, rtol=1e-4, err_msg="/".join(key))


def _with(config, conv_weight_grad):
    config = config.copy_and_resolve_references()
    config.conv_weight_grad = conv_weight_grad
    return config
