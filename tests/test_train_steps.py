"""Pure training steps: losses by hand, the adversarial switch, encoder freezing, NaN gating,
and one step on 8 simulated devices equal to the same step on one."""

import json
import os
import subprocess
import sys
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from qsnet_jax import losses
from qsnet_jax.train import mesh as mesh_lib
from qsnet_jax.train import optim, steps
from qsnet_jax.train.state import init_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Output(NamedTuple):
    prediction: jax.Array
    aux: tuple


class TinyGenerator(nn.Module):
    """stem + encoder + decoder, with one auxiliary head at half resolution."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.relu(nn.Conv(4, (3, 3), name="stem")(x))
        down = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3), name="encoder_0")(h)), (2, 2), (2, 2))
        aux = nn.sigmoid(nn.Conv(2, (1, 1), name="aux_head")(down))
        up = jax.image.resize(down, h.shape, "nearest")
        out = nn.sigmoid(nn.Conv(2, (3, 3), name="decoder")(jnp.concatenate([h, up], -1)))
        return Output(out, (aux,))


class TinyDiscriminator(nn.Module):
    @nn.compact
    def __call__(self, condition, image, train=False):
        h = nn.leaky_relu(nn.Conv(4, (3, 3), strides=2)(jnp.concatenate([condition, image], -1)),
                          0.2)
        return [nn.Conv(1, (3, 3))(h)]


def make_config(**loss_overrides):
    config = default.get_config()
    config.optim.warmup_steps = 0
    config.optim.lr_schedule = "constant"
    for key, value in loss_overrides.items():
        config.loss[key] = value
    return config


def make_batch(seed=0, batch=4):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.uniform(size=(batch, 8, 8, 3)).astype(np.float32),
            "targets": rng.uniform(size=(batch, 8, 8, 2)).astype(np.float32)}


def build(config, with_discriminator=True, frozen_mask_fn=None, freeze_steps=0, lr=1e-2):
    generator = TinyGenerator()
    discriminator = TinyDiscriminator() if with_discriminator else None
    schedule = optim.make_lr_schedule(config.optim, lr, 100)
    batch = make_batch()
    params = generator.init(jax.random.PRNGKey(1), batch["inputs"][:1])["params"]
    mask = frozen_mask_fn(params) if frozen_mask_fn else None
    gen_opt = optim.make_optimizer(config.optim, schedule, frozen_mask=mask,
                                   freeze_steps=freeze_steps)
    disc_opt = optim.make_optimizer(config.optim, schedule) if discriminator else None
    state = init_train_state(jax.random.PRNGKey(0), generator, discriminator, gen_opt,
                             disc_opt, batch["inputs"][:1], batch["targets"][:1])
    step = jax.jit(steps.make_train_step(config, generator, discriminator, gen_opt, disc_opt,
                                         schedule))
    return state, step, gen_opt, generator


def test_deep_supervision_loss_by_hand():
    target = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1) / 32
    aux_coarse = np.zeros((2, 1, 1, 1), np.float32)
    aux_fine = np.full((2, 2, 2, 1), 0.5, np.float32)
    # hand: 4x4 -> 1x1 is the mean of each image; 4x4 -> 2x2 the mean of 2x2 blocks
    coarse_target = target.mean(axis=(1, 2), keepdims=True)
    fine_target = target.reshape(2, 2, 2, 2, 2, 1).mean(axis=(2, 4))
    expected = (0.25 * np.abs(aux_coarse - coarse_target).mean()
                + 0.5 * np.abs(aux_fine - fine_target).mean())
    got = losses.deep_supervision_loss((aux_coarse, aux_fine), target, (0.25, 0.5, 1.0))
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    # the weight list is extended with its last value when there are more heads
    assert losses.deep_supervision_weights((0.1, 0.2), 4) == (0.1, 0.2, 0.2, 0.2)
    assert losses.deep_supervision_weights((0.1, 0.2, 0.3), 2) == (0.1, 0.2)


def test_downsample_target_pads_odd_sizes_like_the_generator():
    target = np.ones((1, 6, 6, 1), np.float32)
    pooled = losses.downsample_target(target, 2, 2)  # 6 -> pad to 8 -> factor 4
    np.testing.assert_allclose(np.asarray(pooled)[0, :, :, 0], [[1.0, 0.5], [0.5, 0.25]])


def test_gan_losses_values():
    ones, zeros = [jnp.ones((1, 2, 2, 1))], [jnp.zeros((1, 2, 2, 1))]
    assert float(losses.discriminator_loss(ones, zeros, "lsgan")) == 0.0
    assert float(losses.generator_adversarial_loss(zeros, "lsgan")) == 1.0
    np.testing.assert_allclose(float(losses.generator_adversarial_loss(zeros, "vanilla")),
                               np.log(2.0), rtol=1e-6)
    assert float(losses.discriminator_loss(ones, [-jnp.ones((1, 2, 2, 1))], "hinge")) == 0.0
    with pytest.raises(ValueError, match="gan_loss"):
        losses.generator_adversarial_loss(zeros, "wgan")


def test_adversarial_weight_zero_gives_the_pure_l1_gradient():
    config = make_config(adversarial_weight=0.0, ssim_weight=0.0)
    config.optim.grad_clip_norm = 0.0
    state, step, gen_opt, generator = build(config)
    batch = make_batch()
    new_state, metrics = step(state, batch)
    assert "adversarial" not in metrics and "discriminator_loss" in metrics

    def pure_l1(params):
        out = generator.apply({"params": params}, batch["inputs"], train=True)
        return 100.0 * (losses.l1_loss(out.prediction, batch["targets"])
                        + losses.deep_supervision_loss(out.aux, batch["targets"],
                                                       config.loss.deep_supervision_weights))

    grads = jax.grad(pure_l1)(state.gen_params)
    updates, _ = gen_opt.update(grads, gen_opt.init(state.gen_params), state.gen_params)
    expected = optax.apply_updates(state.gen_params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7),
                 new_state.gen_params, expected)
    # and with the adversarial term on, the generator moves differently
    state_adv, step_adv, _, _ = build(make_config(adversarial_weight=1.0))
    moved, metrics_adv = step_adv(state_adv, batch)
    assert float(metrics_adv["adversarial"]) > 0
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                         moved.gen_params, expected))
    assert max(diffs) > 1e-6


def test_freeze_encoder_holds_the_encoder_for_n_steps():
    config = make_config()
    is_encoder = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: path[0].key.startswith(("stem", "encoder")), params)
    state, step, _, _ = build(config, frozen_mask_fn=is_encoder, freeze_steps=2)
    start = jax.tree.map(np.asarray, state.gen_params)
    for i in range(2):
        state, _ = step(state, make_batch(seed=i))
    for name in ("stem", "encoder_0"):
        jax.tree.map(np.testing.assert_array_equal, state.gen_params[name], start[name])
    assert not np.array_equal(state.gen_params["decoder"]["kernel"], start["decoder"]["kernel"])
    state, _ = step(state, make_batch(seed=3))
    assert not np.array_equal(state.gen_params["stem"]["kernel"], start["stem"]["kernel"])
    # the first unfrozen encoder update is an ordinary first Adam step (|update| <= ~lr)
    first_move = np.abs(state.gen_params["stem"]["kernel"] - start["stem"]["kernel"]).max()
    assert first_move < 2e-2


def test_non_finite_step_keeps_the_last_good_state():
    config = make_config()
    state, step, _, _ = build(config)
    state, _ = step(state, make_batch(seed=0))
    good = jax.tree.map(np.asarray, state)
    poisoned = make_batch(seed=1)
    poisoned["inputs"][0, 0, 0, 0] = np.nan
    state, metrics = step(state, poisoned)
    assert not np.isfinite(float(metrics["generator_loss"]))
    assert int(state.first_bad_step) == 1  # zero-based index of the poisoned update
    state, _ = step(state, make_batch(seed=2))  # later steps stay frozen too
    jax.tree.map(np.testing.assert_array_equal, state.gen_params, good.gen_params)
    assert int(state.step) == 1


def test_lr_schedules():
    config = default.get_config()
    config.optim.warmup_steps = 10
    schedule = optim.make_lr_schedule(config.optim, 1.0, 110)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 9, 10, 60, 110)],
                               [0.1, 1.0, 1.0, 0.5, 0.0], atol=1e-6)
    config.optim.lr_schedule = "linear"
    schedule = optim.make_lr_schedule(config.optim, 1.0, 110)
    np.testing.assert_allclose(float(schedule(60)), 0.5, atol=1e-6)


def test_fsdp_rule_shards_the_largest_divisible_axis():
    assert mesh_lib._fsdp_spec((3, 3, 64, 128), 8, 1000) == jax.sharding.PartitionSpec(
        None, None, None, "data")
    assert mesh_lib._fsdp_spec((3, 3, 6, 10), 8, 10) == jax.sharding.PartitionSpec()
    assert mesh_lib._fsdp_spec((16,), 8, 1000) == jax.sharding.PartitionSpec()


MULTI_DEVICE_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from tests import test_train_steps as t
from qsnet_jax.train import mesh as mesh_lib
result = {{"devices": jax.device_count()}}
for sharding in {shardings!r}:
    config = t.make_config()
    config.mesh.param_sharding = sharding
    config.mesh.fsdp_min_size = 16
    state, _, gen_opt, generator = t.build(config)
    mesh = mesh_lib.make_mesh(config.mesh)
    shardings = mesh_lib.state_shardings(jax.eval_shape(lambda: state), mesh, config.mesh)
    state = jax.device_put(state, shardings)
    schedule = t.optim.make_lr_schedule(config.optim, 1e-2, 100)
    disc_opt = t.optim.make_optimizer(config.optim, schedule)
    step = mesh_lib.compile_train_step(
        t.steps.make_train_step(config, generator, t.TinyDiscriminator(), gen_opt, disc_opt,
                                schedule),
        shardings, mesh, ("inputs", "targets"))
    for i in range(2):
        state, metrics = step(state, mesh_lib.global_batch(t.make_batch(seed=i, batch=8), mesh))
    result[sharding] = [np.asarray(x).tolist() for x in jax.tree.leaves(state.gen_params)]
print("RESULT" + json.dumps(result))
"""


def _run_on_devices(count, shardings):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
               JAX_PLATFORMS="cpu")
    script = MULTI_DEVICE_SCRIPT.format(root=ROOT, shardings=tuple(shardings))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.slow
def test_eight_devices_equal_one_device():
    one = _run_on_devices(1, ["replicated"])
    eight = _run_on_devices(8, ["replicated", "fsdp"])
    assert (one["devices"], eight["devices"]) == (1, 8)
    for sharding in ("replicated", "fsdp"):  # FSDP: large params sharded over "data"
        for a, b in zip(one["replicated"], eight[sharding], strict=True):
            np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)
