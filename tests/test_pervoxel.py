"""The per-voxel baseline: truly per-voxel, its parameter count from the layer shapes, its
values from a NumPy re-computation, and trained without a discriminator."""

import jax
import numpy as np
import pytest

from configs import default
from qsnet_jax import models
from qsnet_jax.train import loop

INPUTS = ("t1map", "t2map", "pdmap")
TARGETS = ("t1w", "t2w", "t1flair", "t2flair", "swi")


def pervoxel_config(**overrides):
    config = default.get_config()
    config.model.name = "pervoxel"
    config.model.update(overrides)
    return config


def build_and_init(context_slices=0, height=9, width=11, **overrides):
    module = models.build_generator(pervoxel_config(**overrides).model, input_channels=INPUTS,
                                    target_channels=TARGETS, context_slices=context_slices)
    channels = len(INPUTS) * (2 * context_slices + 1)
    x = np.asarray(jax.random.uniform(jax.random.key(0), (2, height, width, channels)))
    variables = module.init(jax.random.key(1), x)
    return module, variables, x


@pytest.mark.parametrize("context_slices", [0, 1])
def test_changing_one_voxel_changes_only_that_voxels_output(context_slices):
    module, variables, x = build_and_init(context_slices)
    before = np.asarray(module.apply(variables, x).prediction)
    changed = x.copy()
    # every plane of voxel (b=1, h=4, w=7), the neighbouring slices' planes included
    changed[1, 4, 7, :] += np.linspace(0.3, 0.9, x.shape[-1])
    after = np.asarray(module.apply(variables, changed).prediction)
    differs = np.any(after != before, axis=-1)
    expected = np.zeros_like(differs)
    expected[1, 4, 7] = True
    np.testing.assert_array_equal(differs, expected)


def test_parameter_count_from_the_layer_shapes():
    _, variables, _ = build_and_init(pervoxel_width=64, pervoxel_layers=3)
    c_in, w, c_out = 3, 64, 5
    by_hand = (c_in * w + w) + 2 * (w * w + w) + (w * c_out + c_out)  # 8901
    assert models.count_params(variables) == by_hand == 8901
    _, variables, _ = build_and_init(context_slices=2, pervoxel_width=16, pervoxel_layers=1)
    assert models.count_params(variables) == (15 * 16 + 16) + (16 * 5 + 5)


def test_values_equal_a_numpy_mlp_on_each_voxel(numpy_mlp):
    module, variables, x = build_and_init(pervoxel_width=8, pervoxel_layers=2)
    logits = numpy_mlp(variables["params"], x)
    expected = 1.0 / (1.0 + np.exp(-logits))
    got = np.asarray(module.apply(variables, x).prediction)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_trained_with_the_pixel_losses_and_no_discriminator():
    config = pervoxel_config()
    assert config.discriminator.name != "none"  # the default config names one...
    generator, discriminator = loop.build_models(config)
    assert discriminator is None  # ...but the per-voxel baseline trains without it
    assert generator.__class__.__name__ == "PerVoxelMLP"


def test_no_hidden_layer_is_refused():
    with pytest.raises(ValueError, match="num_layers"):
        build_and_init(pervoxel_layers=0)
