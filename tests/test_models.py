"""QS-Net / Res-UNet, shared layers, discriminators and the registry: values, not only shapes.

Tiny widths and images so the whole file runs in well under a minute on 2 CPU cores.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import default
from qsnet_jax import models
from qsnet_jax.models import layers

INPUTS = ("t1map", "t2map", "pdmap")
TARGETS = ("t1w", "t2w", "t1flair", "t2flair", "swi")


def tiny_model_config(name="qsnet", **overrides):
    config = default.get_config().model
    config.name = name
    config.base_width = 8
    config.depth = 2
    config.blocks_per_level = 1
    config.bottleneck_width = 16
    config.update(overrides)
    return config


def build(config, context_slices=0):
    return models.build_generator(config, input_channels=INPUTS, target_channels=TARGETS,
                                  context_slices=context_slices)


def random_images(key, height, width, channels, batch=2):
    return jax.random.uniform(jax.random.key(key), (batch, height, width, channels))


@functools.cache
def tiny_qsnet():
    module = build(tiny_model_config())
    variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 40, 3)))
    return module, variables


@pytest.mark.parametrize("height,width", [(32, 40), (20, 28), (17, 9)])
def test_qsnet_output_shapes_and_scales_at_any_size(height, width):
    module, variables = tiny_qsnet()
    out = jax.jit(module.apply)(variables, random_images(1, height, width, 3))
    assert isinstance(out, models.GeneratorOutput)
    assert out.prediction.shape == (2, height, width, len(TARGETS))
    assert out.prediction.dtype == jnp.float32
    # depth 2 -> one auxiliary head at H/2 (ceil, padding was bottom/right)
    assert [a.shape for a in out.aux] == [(2, -(-height // 2), -(-width // 2), len(TARGETS))]
    # sigmoid output
    assert float(out.prediction.min()) > 0 and float(out.prediction.max()) < 1


def test_padding_does_not_change_the_valid_region_of_a_multiple_size():
    # A multiple of 2**depth is not padded: cropping a larger padded run must differ only by
    # the padding, so compare the same image directly with and without an explicit zero pad
    # that the wrapper would itself add.
    module, variables = tiny_qsnet()
    x = random_images(2, 30, 38, 3, batch=1)
    padded = jnp.pad(x, ((0, 0), (0, 2), (0, 2), (0, 0)))
    out = module.apply(variables, x)
    out_padded = module.apply(variables, padded)
    np.testing.assert_allclose(out.prediction, out_padded.prediction[:, :30, :38], atol=1e-6)


def test_deep_supervision_heads_coarse_to_fine_and_resunet_has_none():
    config = tiny_model_config(depth=3, bottleneck_width=32)
    module = build(config)
    x = random_images(3, 24, 40, 3, batch=1)
    out, _ = module.init_with_output(jax.random.key(0), x)
    assert [a.shape[1:3] for a in out.aux] == [(6, 10), (12, 20)]
    resunet = build(tiny_model_config("resunet", depth=3, bottleneck_width=32))
    out, variables = resunet.init_with_output(jax.random.key(0), x)
    assert out.aux == () and out.prediction.shape == (1, 24, 40, 5)
    heads = [k for k in variables["params"] if k.startswith("decoder_") and k.endswith("_head")]
    assert heads == ["decoder_0_head"]


def test_every_parameter_gets_a_finite_nonzero_gradient():
    module, variables = tiny_qsnet()
    x = random_images(4, 32, 40, 3)
    target = random_images(5, 32, 40, 5)

    def loss(params):
        out = module.apply({"params": params}, x, train=True)
        aux_losses = [jnp.abs(a - target[:, ::2, ::2]).mean() for a in out.aux]
        return jnp.abs(out.prediction - target).mean() + sum(aux_losses)

    grads = traverse_util.flatten_dict(jax.grad(loss)(variables["params"]))
    for path, grad in grads.items():
        assert np.all(np.isfinite(grad)), path
        assert np.any(grad != 0), path


def conv2d_same(x, kernel, bias=None):
    """Direct NumPy 'SAME' convolution (cross-correlation) of HWC x with HWIO kernel."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros(x.shape[:2] + (kernel.shape[-1],))
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = np.einsum("hwc,hwco->o", padded[i:i + kh, j:j + kw], kernel)
    return out if bias is None else out + bias


def group_norm(x, groups, scale, bias, eps=1e-6):
    h, w, c = x.shape
    grouped = x.reshape(h, w, groups, c // groups)
    mean = grouped.mean(axis=(0, 1, 3), keepdims=True)
    var = grouped.var(axis=(0, 1, 3), keepdims=True)
    return ((grouped - mean) / np.sqrt(var + eps)).reshape(h, w, c) * scale + bias


def test_residual_block_equals_hand_computation():
    block = layers.ResidualBlock(features=4, norm="group", activation="silu")
    x = np.asarray(random_images(6, 5, 6, 3, batch=1))
    variables = block.init(jax.random.key(1), x)
    # Non-trivial norm affine parameters so the test sees them.
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), variables["params"])
    p = jax.tree_util.tree_map(np.asarray, params)
    silu = lambda v: v / (1 + np.exp(-v))
    groups = np.gcd(4, layers.MAX_GROUPS)
    h = conv2d_same(x[0], p["conv_0"]["kernel"])
    h = silu(group_norm(h, groups, p["norm_0"]["scale"], p["norm_0"]["bias"]))
    h = conv2d_same(h, p["conv_1"]["kernel"])
    h = group_norm(h, groups, p["norm_1"]["scale"], p["norm_1"]["bias"])
    skip = conv2d_same(x[0], p["skip_projection"]["kernel"], p["skip_projection"]["bias"])
    expected = silu(h + skip)
    got = block.apply({"params": params}, x)[0]
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_matmul_upsample_equals_transposed_convolution():
    x = random_images(7, 3, 5, 6, batch=2)
    upsample = layers.MatmulUpsample2x(features=4)
    variables = upsample.init(jax.random.key(0), x)
    kernel = variables["params"]["kernel"]  # [C_in, 2, 2, C_out]
    bias = jax.random.normal(jax.random.key(3), (4,))
    transposed = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="SAME")
    # nn.ConvTranspose keeps an HWIO kernel applied flipped: K_T[1 - a, 1 - b] = K[:, a, b].
    conv_kernel = jnp.transpose(kernel, (1, 2, 0, 3))[::-1, ::-1]
    expected = transposed.apply({"params": {"kernel": conv_kernel, "bias": bias}}, x)
    got = upsample.apply({"params": {"kernel": kernel, "bias": bias}}, x)
    assert got.shape == (2, 6, 10, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Same parameter count as the transposed convolution.
    assert kernel.size + bias.size == conv_kernel.size + bias.size


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_outputs_close():
    module32, variables = tiny_qsnet()
    module16 = build(tiny_model_config(dtype="bfloat16"))
    x = random_images(8, 32, 40, 3)
    init16 = module16.init(jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(init16))
    out16 = module16.apply(variables, x)
    out32 = module32.apply(variables, x)
    assert out16.prediction.dtype == jnp.float32 and out16.aux[0].dtype == jnp.float32
    np.testing.assert_allclose(out16.prediction, out32.prediction, atol=0.03)


@pytest.mark.slow
def test_batch_norm_and_dropout_variants_run_in_training_mode():
    module = build(tiny_model_config(norm="batch", dropout=0.5, activation="relu"))
    x = random_images(9, 16, 16, 3)
    variables = module.init(jax.random.key(0), x)
    assert "batch_stats" in variables
    out, updates = module.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                                mutable=["batch_stats"])
    assert out.prediction.shape == (2, 16, 16, 5)
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                     variables["batch_stats"], updates["batch_stats"])
    assert any(jax.tree_util.tree_leaves(changed))


def test_context_slices_only_widen_the_input():
    module = build(tiny_model_config(), context_slices=1)
    out, _ = module.init_with_output(jax.random.key(0), random_images(10, 16, 16, 9))
    assert out.prediction.shape == (2, 16, 16, 5)


def test_small_qsnet_overfits_one_batch():
    """L1 falls below 0.02 within 300 Adam steps on one 2 x 16 x 16 batch."""
    module = build(tiny_model_config())
    x = random_images(11, 16, 16, 3)
    # A smooth, learnable mapping of the inputs (like contrasts of tissue maps).
    target = jnp.stack([x[..., 0], x[..., 1], 0.5 * (x[..., 0] + x[..., 2]),
                        x[..., 1] * x[..., 2], 1 - x[..., 0]], axis=-1)
    params = module.init(jax.random.key(0), x)["params"]
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state):
        loss_fn = lambda p: jnp.abs(module.apply({"params": p}, x).prediction - target).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(300):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[0] > 0.1
    assert min(losses[-20:]) < 0.02, losses[-20:]


def test_is_encoder_param_splits_encoder_and_decoder():
    _, variables = tiny_qsnet()
    paths = traverse_util.flatten_dict(variables["params"])
    encoder = {p[0] for p in paths if models.is_encoder_param(p)}
    decoder = {p[0] for p in paths if not models.is_encoder_param(p)}
    assert "stem" in encoder and "encoder_bottleneck_block_0" in encoder
    # the per-voxel path is not encoder: it keeps training while the encoder is frozen
    assert all(name.startswith(("decoder_", "pointwise_")) for name in decoder)
    assert "pointwise_head" in decoder
    assert models.is_encoder_param(("params", "encoder_0_down", "kernel"))
    assert not models.is_encoder_param(("params", "decoder_0_head", "kernel"))


def test_default_qsnet_matches_the_reference_twin_size():
    # docs/design.md section 7: widths 32-256, bottleneck 512, two residual blocks per level,
    # GroupNorm + SiLU: 18.9 M parameters.
    # The twin up-samples with 2x2 transposed convolutions (the default resize + 3x3 conv
    # has 9/4 of their weights: 19.8 M in all) and has no per-voxel path.
    config = default.get_config()
    config.model.upsample = "transposed"
    config.model.pointwise_width = 0
    module = build(config.model)
    summary = models.model_summary(module, (1, 64, 64, 3))
    assert abs(summary["params"] - 18.9e6) / 18.9e6 < 0.01
    assert summary["flops_per_slice"] > 0


def test_unknown_names_give_clear_errors():
    with pytest.raises(ValueError, match="unknown model.name"):
        build(tiny_model_config("nope"))
    with pytest.raises(ValueError, match="unknown norm"):
        build(tiny_model_config(norm="layer"))
    disc = default.get_config().discriminator
    disc.name = "nope"
    with pytest.raises(ValueError, match="unknown discriminator.name"):
        models.build_discriminator(disc)
    disc.name = "none"
    assert models.build_discriminator(disc) is None


@pytest.mark.parametrize("norm,spectral", [("instance", False), ("batch", True)])
def test_multiscale_discriminator_returns_one_logit_map_per_scale(norm, spectral):
    disc_config = default.get_config().discriminator
    disc_config.update(base_width=4, num_layers=2, num_scales=2, norm=norm,
                       spectral_norm=spectral)
    disc = models.build_discriminator(disc_config)
    condition = random_images(12, 32, 40, 3)
    image = random_images(13, 32, 40, 5)
    variables = disc.init(jax.random.key(0), condition, image)
    logits, updates = disc.apply(variables, condition, image, train=True,
                                 mutable=["batch_stats"])
    # PyTorch-style k4 p1 layers: 2 stride-2 (-> /4 minus edge effects), then 2 stride-1 (-1 each)
    assert [lg.shape for lg in logits] == [(2, 6, 8, 1), (2, 2, 3, 1)]
    assert all(np.all(np.isfinite(lg)) for lg in logits)
    if spectral:
        u_before = variables["batch_stats"]["scale_0"]["conv_0_sn"]["conv_0/kernel/u"]
        u_after = updates["batch_stats"]["scale_0"]["conv_0_sn"]["conv_0/kernel/u"]
        assert not np.allclose(u_before, u_after)
    # The discriminator is conditional: changing the condition changes the logits.
    other = disc.apply(variables, condition[::-1], image, train=False)
    assert not np.allclose(other[0], disc.apply(variables, condition, image)[0])


def test_discriminator_rejects_slices_too_small_for_a_scale():
    # 3 layers map n pixels to floor(n/8) - 2 patches: scale 1 of a 32x32 slice (16 px) would
    # be an empty map (NaN logits), so it is refused with the size it needs (24).
    disc_config = default.get_config().discriminator
    disc_config.update(base_width=4, num_layers=3, num_scales=2)
    disc = models.build_discriminator(disc_config)
    small = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="scale 1 sees 16x16 pixels, fewer than the 24"):
        disc.init(jax.random.key(0), small, small)
    fits = jnp.zeros((1, 48, 48, 3))
    logits = jax.eval_shape(lambda c, i: disc.init_with_output(jax.random.key(0), c, i)[0],
                            fits, fits)
    assert [lg.shape for lg in logits] == [(1, 4, 4, 1), (1, 1, 1, 1)]


def test_seventy_by_seventy_patchgan_at_the_reference_settings_has_2_8m_params():
    disc_config = default.get_config().discriminator
    disc_config.update(name="patchgan", base_width=64, num_layers=3, norm="batch")
    disc = models.build_discriminator(disc_config)
    shape = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(lambda c, i: disc.init(jax.random.key(0), c, i), shape, shape)
    # pix2pix reference implementation (netD basic, n_layers 3, batch norm, 6 input channels):
    # 2,768,705 parameters.
    assert abs(models.count_params(variables) - 2_768_705) / 2_768_705 < 0.01
    logits = jax.eval_shape(lambda v, c, i: disc.apply(v, c, i), variables, shape, shape)
    assert logits[0].shape == (1, 30, 30, 1)  # the 30x30 patch grid of a 70x70 PatchGAN


def test_pointwise_path_adds_a_numpy_mlp_of_each_voxel_to_the_output_logits():
    # model.pointwise_width: the prediction's logit is the U-Net head's logit plus an MLP of
    # the voxel's own inputs, at full resolution only (the deep-supervision heads unchanged).
    with_path = build(tiny_model_config(pointwise_width=6, pointwise_layers=2))
    without = build(tiny_model_config(pointwise_width=0))
    x = random_images(11, 20, 24, 3, batch=2)
    params = with_path.init(jax.random.key(3), x)["params"]
    params = jax.tree_util.tree_map(  # a non-zero head bias, so the test sees it
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(4), p.shape), params)
    unet_params = {k: v for k, v in params.items() if not k.startswith("pointwise_")}
    assert set(params) - set(unet_params) == {"pointwise_hidden_0", "pointwise_hidden_1",
                                              "pointwise_head"}
    out = with_path.apply({"params": params}, x)
    base = without.apply({"params": unet_params}, x)

    p = jax.tree_util.tree_map(np.asarray, params)
    silu = lambda v: v / (1 + np.exp(-v))
    h = np.asarray(x, np.float64)
    for name in ("pointwise_hidden_0", "pointwise_hidden_1"):
        h = silu(h @ p[name]["kernel"][0, 0] + p[name]["bias"])
    mlp = h @ p["pointwise_head"]["kernel"][0, 0] + p["pointwise_head"]["bias"]
    logit = lambda y: np.log(np.asarray(y, np.float64) / (1 - np.asarray(y, np.float64)))
    np.testing.assert_allclose(logit(out.prediction) - logit(base.prediction), mlp, atol=2e-4)
    for a, b in zip(out.aux, base.aux, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
