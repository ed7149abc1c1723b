"""Every training config validates, and the baselines train a step through the same code path
(Res-UNet: no discriminator, no auxiliary heads; cGAN: vanilla loss, single PatchGAN)."""

import importlib

import jax
import numpy as np
import pytest

from qsnet_jax.train import loop, optim, steps
from qsnet_jax.train.state import init_train_state
from workflow import train_eval

CONFIGS = ("default", "pretrain", "finetune", "two_stage", "resunet", "cgan", "swin", "physics")
SIZES = (None, "tiny", "quick", "paper")


def get(name, size=None):
    return importlib.import_module(f"configs.{name}").get_config(size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name, size):
    train_eval.validate_config(get(name, size))


def shrink(config):
    config.model.base_width = 8
    config.model.depth = 2
    config.model.blocks_per_level = 1
    config.model.bottleneck_width = 16
    config.model.pix2pix_base_width = 4
    config.model.embed_dim = 12
    config.model.swin_depths = (2, 2)
    config.model.swin_heads = (2, 4)
    config.model.window_size = 4
    config.discriminator.base_width = 8
    return config


@pytest.mark.parametrize("name, has_disc, has_aux", [
    ("resunet", False, False),
    pytest.param("cgan", True, False, marks=pytest.mark.slow),  # ~1 min each: compile-bound
    pytest.param("swin", True, False, marks=pytest.mark.slow)])
def test_baseline_trains_one_step(name, has_disc, has_aux):
    config = shrink(get(name))
    generator, discriminator = loop.build_models(config)
    assert (discriminator is not None) == has_disc
    rng = np.random.default_rng(0)
    # 64x64: the 2-scale PatchGAN needs room at half resolution (at 32x32 its maps are empty)
    batch = {"inputs": rng.uniform(size=(2, 64, 64, 3)).astype(np.float32),
             "targets": rng.uniform(size=(2, 64, 64, 5)).astype(np.float32)}
    schedule = optim.make_lr_schedule(config.optim, 1e-3, 10)
    gen_opt = optim.make_optimizer(config.optim, schedule)
    disc_opt = optim.make_optimizer(config.optim, schedule) if discriminator else None
    state = init_train_state(jax.random.PRNGKey(0), generator, discriminator, gen_opt, disc_opt,
                             batch["inputs"][:1], batch["targets"][:1])
    step = jax.jit(steps.make_train_step(config, generator, discriminator, gen_opt, disc_opt,
                                         schedule))
    new_state, metrics = step(state, batch)
    assert ("adversarial" in metrics) == has_disc
    assert ("deep_supervision" in metrics) == has_aux
    assert np.isfinite(float(metrics["generator_loss"]))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                         new_state.gen_params, state.gen_params))
    assert max(moved) > 0
