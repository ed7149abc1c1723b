"""Baselines: pix2pix U-Net-256, the Swin-UNet generator and the signal-equation physics
model. Reference parameter counts, exact equivalences, and values."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import default
from qsnet_jax import models
from qsnet_jax.models import layers, swin
from qsnet_jax.physics import channels, signal

INPUTS = ("t1map", "t2map", "pdmap")
TARGETS = ("t1w", "t2w", "t1flair", "t2flair", "swi")


def model_config(name, **overrides):
    config = default.get_config().model
    config.name = name
    config.update(overrides)
    return config


def build(config, inputs=INPUTS, targets=TARGETS, context_slices=0):
    return models.build_generator(config, input_channels=inputs, target_channels=targets,
                                  context_slices=context_slices)


def assert_every_grad_finite_and_nonzero(grads):
    for path, grad in traverse_util.flatten_dict(grads).items():
        assert np.all(np.isfinite(grad)), path
        assert np.any(grad != 0), path


# ------------------------------------------------------------------------------ pix2pix


def test_pix2pix_generator_has_the_published_54_4m_parameters():
    module = build(model_config("pix2pix", norm="batch"), targets=3)
    shape = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), shape)
    count = models.count_params(variables)
    # Isola et al. reference code, unet_256 ngf 64 batch norm: 54,413,955 ("54.414 M").
    assert abs(count - 54.4e6) / 54.4e6 < 0.01
    assert count == 54_413_955


def test_matmul_transposed_conv_equals_pytorch_style_transposed_convolution():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 6))
    upsample = layers.MatmulTransposedConv4x4(features=4)
    variables = upsample.init(jax.random.key(1), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    got = upsample.apply(variables, x)
    # PyTorch ConvTranspose2d(k=4, s=2, p=1): out[o] += x[i] kernel[o + 1 - 2 i].
    x_np, k_np = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    expected = np.zeros((2, 6, 10, 4)) + np.asarray(bias)
    for i in range(3):
        for j in range(5):
            for ky in range(4):
                for kx in range(4):
                    o, p = 2 * i - 1 + ky, 2 * j - 1 + kx
                    if 0 <= o < 6 and 0 <= p < 10:
                        expected[:, o, p] += x_np[:, i, j] @ k_np[ky, kx]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # and flax's transposed convolution with the kernel flipped
    transposed = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))
    flax_out = transposed.apply({"params": {"kernel": kernel[::-1, ::-1], "bias": bias}}, x)
    np.testing.assert_allclose(got, flax_out, atol=1e-5)


@pytest.mark.slow
def test_pix2pix_any_size_dropout_in_training_and_gradients():
    module = build(model_config("pix2pix", pix2pix_base_width=2, norm="instance"))
    x = jax.random.uniform(jax.random.key(2), (1, 20, 28, 3))
    variables = jax.jit(module.init)(jax.random.key(0), x)
    out = jax.jit(module.apply)(variables, x)
    assert out.prediction.shape == (1, 20, 28, 5) and out.aux == ()
    assert np.all((out.prediction > 0) & (out.prediction < 1))

    def loss(params, key):
        prediction = module.apply({"params": params}, x, train=True,
                                  rngs={"dropout": key}).prediction
        return jnp.mean((prediction - 0.5) ** 2), prediction

    grad_fn = jax.jit(jax.grad(loss, has_aux=True))
    grads, train_prediction = grad_fn(variables["params"], jax.random.key(1))
    _, other_prediction = grad_fn(variables["params"], jax.random.key(2))
    assert not np.allclose(train_prediction, other_prediction)  # dropout 0.5 in training
    assert_every_grad_finite_and_nonzero(grads)


# --------------------------------------------------------------------------------- Swin


def naive_shifted_window_attention(x, params, num_heads, window, shift):
    """Full attention over all tokens of the cyclically shifted map, allowed only between
    tokens in the same window and the same region of the un-shifted map (NumPy, float64)."""
    _, height, width, channels = x.shape
    head_dim = channels // num_heads
    shifted = np.roll(x, (-shift, -shift), axis=(1, 2))
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()

    def region(coord, size):  # which strip of the un-shifted map a shifted coordinate holds
        if shift == 0:
            return np.zeros_like(coord)
        return np.where(coord < size - window, 0, np.where(coord < size - shift, 1, 2))

    window_id = (rows // window) * (width // window) + cols // window
    region_id = region(rows, height) * 3 + region(cols, width)
    allowed = ((window_id[:, None] == window_id[None, :])
               & (region_id[:, None] == region_id[None, :]))
    table = np.asarray(params["relative_position_bias"], np.float64)
    rel_row = rows[:, None] - rows[None, :] + window - 1
    rel_col = cols[:, None] - cols[None, :] + window - 1
    safe = lambda a: np.clip(a, 0, 2 * window - 2)  # masked pairs may fall outside the table
    bias = table[safe(rel_row) * (2 * window - 1) + safe(rel_col)]  # [T, T, heads]

    w_qkv, b_qkv = (np.asarray(params["qkv"][k], np.float64) for k in ("kernel", "bias"))
    w_out, b_out = (np.asarray(params["proj"][k], np.float64) for k in ("kernel", "bias"))
    outputs = []
    for image in shifted.astype(np.float64):
        tokens = image.reshape(-1, channels)
        qkv = (tokens @ w_qkv + b_qkv).reshape(len(tokens), 3, num_heads, head_dim)
        heads = []
        for h in range(num_heads):
            q, k, v = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
            logits = q @ k.T / np.sqrt(head_dim) + bias[:, :, h]
            logits = np.where(allowed, logits, -np.inf)
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            heads.append((weights / weights.sum(axis=1, keepdims=True)) @ v)
        out = np.concatenate(heads, axis=-1) @ w_out + b_out
        outputs.append(out.reshape(height, width, channels))
    return np.roll(np.stack(outputs), (shift, shift), axis=(1, 2))


@pytest.mark.parametrize("shift", [0, 2])
def test_shifted_window_attention_equals_naive_masked_attention(shift):
    window, num_heads = 4, 2
    x = jax.random.normal(jax.random.key(4), (2, 8, 12, 8))
    attention = swin.WindowAttention(num_heads, window, shift)
    variables = attention.init(jax.random.key(5), x)
    params = jax.tree_util.tree_map(  # a visible position bias and qkv bias
        lambda p: p + 0.3 * jax.random.normal(jax.random.key(6), p.shape), variables["params"])
    got = attention.apply({"params": params}, x)
    expected = naive_shifted_window_attention(np.asarray(x), params, num_heads, window, shift)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_shift_mask_separates_wrapped_regions():
    mask = swin.shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert np.all(mask[0] == 0)  # the top-left window holds one region only
    assert np.sum(mask[3] == 0) == 4 * 16  # bottom-right: four 2x2 regions of 4 tokens


def tiny_swin_config(**overrides):
    settings = dict(embed_dim=8, swin_depths=(2, 2), swin_heads=(1, 2), window_size=4)
    return model_config("swin", **{**settings, **overrides})


@pytest.mark.slow
def test_swin_generator_any_size():
    module = build(tiny_swin_config())
    x = jax.random.uniform(jax.random.key(7), (2, 20, 44, 3))  # padded to 32 x 64
    out, variables = jax.jit(module.init_with_output)(jax.random.key(0), x)
    assert out.prediction.shape == (2, 20, 44, 5) and out.aux == ()
    assert np.all((out.prediction > 0) & (out.prediction < 1))
    paths = traverse_util.flatten_dict(variables["params"])
    assert any(models.is_encoder_param(p) for p in paths)
    assert all(p[0].startswith(("stem", "encoder", "decoder")) for p in paths)


@pytest.mark.slow
def test_swin_gradients_reach_every_parameter():
    module = build(tiny_swin_config())
    x = jax.random.uniform(jax.random.key(8), (1, 32, 32, 3))
    params = jax.jit(module.init)(jax.random.key(0), x)["params"]
    loss = lambda p: jnp.mean((module.apply({"params": p}, x).prediction - 0.3) ** 2)
    assert_every_grad_finite_and_nonzero(jax.jit(jax.grad(loss))(params))


@pytest.mark.slow
def test_swin_gradients_stay_bounded_on_an_all_background_slice():
    # An all-zero slice used to embed to channel-constant tokens, whose LayerNorm gradient
    # (1/sqrt(eps)) compounds through the blocks: inf at the quick study size.
    module = build(tiny_swin_config(swin_depths=(2, 2, 2), swin_heads=(1, 2, 4)))
    x = jnp.zeros((1, 64, 64, 3))
    params = jax.jit(module.init)(jax.random.key(0), x)["params"]
    loss = lambda p: jnp.mean((module.apply({"params": p}, x).prediction - 0.3) ** 2)
    grads = jax.tree_util.tree_leaves(jax.jit(jax.grad(loss))(params))
    largest = max(float(jnp.max(jnp.abs(g))) for g in grads)
    assert np.isfinite(largest) and largest < 10.0, largest


def test_default_swin_is_swin_unet_sized():
    # Swin-UNet (Cao et al. 2021) with Swin-T settings has about 27.2 M parameters.
    module = build(model_config("swin"))
    shape = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    count = models.count_params(jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                                               shape))
    assert abs(count - 27.2e6) / 27.2e6 < 0.01


# ------------------------------------------------------------------------------ physics

WHITE_MATTER = {"t1map": 820.0, "t2map": 68.0, "pdmap": 0.7}


def hand_signal(protocol, pd, t1, t2):
    """The design's signal equations (docs/design.md section 5) written out in NumPy for a
    protocol's TR/TE/TI/flip: the expected values do not come from qsnet_jax.physics.signal."""
    tr, te = protocol.tr_ms, protocol.te_ms
    if protocol.kind == "spin_echo":
        return pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2)
    if protocol.kind == "inversion_recovery":
        mz = 1 - 2 * np.exp(-protocol.ti_ms / t1) + np.exp(-tr / t1)
        return pd * np.abs(mz) * np.exp(-te / t2)
    assert protocol.kind == "gre", protocol
    t2star = 1 / (1 / t2 + 0.006)  # R2' 6 /s
    alpha, e1 = np.deg2rad(protocol.flip_deg), np.exp(-tr / t1)
    return pd * np.sin(alpha) * (1 - e1) / (1 - np.cos(alpha) * e1) * np.exp(-te / t2star)


def constant_tissue_inputs(tissue, height=6, width=5, inputs=INPUTS, background_rows=2):
    maps = []
    for name in inputs:
        value = tissue[name]
        if name in channels.TIMING_SCALES:
            value = float(channels.TIMING_SCALES[name].forward(value))
        maps.append(np.full((height, width), value, np.float32))
    x = np.stack(maps, axis=-1)[None]
    x[:, :background_rows] = 0.0  # background rows
    return x


def test_physics_reproduces_the_signal_equations_on_constant_tissue():
    module = build(model_config("physics", physics_site="B"))
    x = constant_tissue_inputs(WHITE_MATTER)
    variables = module.init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["params"]["contrast_scale"], np.ones(5))
    prediction = np.asarray(module.apply(variables, x).prediction)
    # The log transform is inverted exactly up to float32 rounding.
    t1 = channels.TIMING_SCALES["t1map"].inverse(channels.TIMING_SCALES["t1map"].forward(820.0))
    t2 = channels.TIMING_SCALES["t2map"].inverse(channels.TIMING_SCALES["t2map"].forward(68.0))
    assert abs(t1 - 820.0) < 0.01 and abs(t2 - 68.0) < 0.01
    for c, name in enumerate(TARGETS):
        protocol = signal.site_protocols("B")[name]
        expected = hand_signal(protocol, 0.7, 820.0, 68.0)
        np.testing.assert_allclose(prediction[0, 2:, :, c], expected, rtol=1e-5)
        np.testing.assert_array_equal(prediction[0, :2, :, c], 0.0)
    # T2-FLAIR nulls CSF
    csf = constant_tissue_inputs({"t1map": signal.CSF_T1_MS, "t2map": 1800.0, "pdmap": 1.0})
    flair = np.asarray(module.apply(variables, csf).prediction)[0, 3:, :, 3]
    assert np.all(flair < 0.01)


def test_fit_physics_scales_recovers_the_scale_in_the_brain():
    module = build(model_config("physics"), targets=("t2w", "t1w"))
    x = constant_tissue_inputs(WHITE_MATTER)
    variables = module.init(jax.random.key(0), x)
    raw = np.asarray(module.apply(variables, x).prediction)
    target = raw * np.array([2.5, 0.8], np.float32)
    mask = (x[..., :1] > 0).astype(np.float32)
    target_with_noise_outside = target + (1 - mask) * 0.9  # ignored outside the mask
    batches = [{"inputs": x, "targets": target_with_noise_outside, "brain_mask": mask}] * 2
    fitted = models.fit_physics_scales(module, variables, batches)
    np.testing.assert_allclose(fitted["params"]["contrast_scale"], [2.5, 0.8], rtol=1e-5)
    assert np.all(np.asarray(module.apply(fitted, x).prediction) <= 1.0)


def test_physics_uses_the_centre_slice_and_default_pd():
    module = build(model_config("physics"), inputs=("t1map", "t2map"), context_slices=1)
    centre = constant_tissue_inputs(WHITE_MATTER, inputs=("t1map", "t2map"))
    other = constant_tissue_inputs({"t1map": 1400.0, "t2map": 90.0}, inputs=("t1map", "t2map"))
    # input-major: t1(z-1), t1(z), t1(z+1), t2(z-1), t2(z), t2(z+1)
    x = np.concatenate([other[..., :1], centre[..., :1], other[..., :1],
                        other[..., 1:], centre[..., 1:], other[..., 1:]], axis=-1)
    out = module.apply(module.init(jax.random.key(0), x), x).prediction
    # site A T1w (TR 500, TE 10), PD 1 when it is not an input
    expected = (1 - np.exp(-500 / 820)) * np.exp(-10 / 68)
    np.testing.assert_allclose(out[0, 3, 3, 0], expected, rtol=1e-5)


def test_physics_needs_t1_and_t2_inputs():
    # the registry checks the channels when it builds the module: a bad config fails at once
    with pytest.raises(ValueError, match="needs input channels"):
        build(model_config("physics"), inputs=("t1w", "t2w"))
