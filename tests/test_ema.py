"""The EMA of the generator weights against its recurrence computed in NumPy, and
`load_generator` (evaluation's default, use_ema=True) returning exactly those weights.

Recurrence (qsnet_jax/train/steps.py): e_0 = p_0; after update t (t = 0, 1, ...)
    d_t = min(decay, (1 + t) / (10 + t)),   e_{t+1} = d_t e_t + (1 - d_t) p_{t+1}.
"""

import jax
import numpy as np
import pytest

from configs import default
from qsnet_jax.train import checkpoints, load_generator, loop, optim, steps
from qsnet_jax.train.state import init_train_state

STEPS = 5


def batch(seed):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.uniform(size=(2, 16, 16, 3)).astype(np.float32),
            "targets": rng.uniform(size=(2, 16, 16, 5)).astype(np.float32)}


def ema_config(decay):
    config = default.get_config("tiny")
    config.discriminator.name = "none"
    config.optim.lr_schedule = "constant"
    config.optim.ema_decay = decay
    return config


def train(config, count):
    """`count` steps of the smoke generator; the params after each step (p_0 .. p_count)."""
    generator, _ = loop.build_models(config)
    schedule = optim.make_lr_schedule(config.optim, 1e-2, 100)
    gen_opt = optim.make_optimizer(config.optim, schedule)
    sample = batch(0)
    state = init_train_state(jax.random.PRNGKey(0), generator, None, gen_opt, None,
                             sample["inputs"][:1], sample["targets"][:1])
    step = jax.jit(steps.make_train_step(config, generator, None, gen_opt, None, schedule))
    history = [jax.device_get(state.gen_params)]
    for i in range(count):
        state, _ = step(state, batch(i))
        history.append(jax.device_get(state.gen_params))
    return state, history


def numpy_ema(history, decay):
    ema = jax.tree.map(lambda p: np.asarray(p, np.float64), history[0])
    for t, params in enumerate(history[1:]):
        d = min(decay, (1.0 + t) / (10.0 + t))
        ema = jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * np.asarray(p, np.float64),
                           ema, params)
    return ema


def assert_trees_close(got, expected, **tolerance):
    got_leaves, expected_leaves = jax.tree.leaves(got), jax.tree.leaves(expected)
    assert len(got_leaves) == len(expected_leaves) > 10
    for a, b in zip(got_leaves, expected_leaves, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), b, **tolerance)


@pytest.fixture(scope="module")
def trained():
    # decay 0.15: the warm-up (1 + t) / (10 + t) = 0.1 decides step 0, the decay every later step
    config = ema_config(0.15)
    state, history = train(config, STEPS)
    return config, state, history


def test_ema_follows_the_closed_form_recurrence_with_warm_up(trained):
    _, state, history = trained
    assert int(state.step) == STEPS
    expected = numpy_ema(history, 0.15)
    assert_trees_close(state.ema_params, expected, rtol=1e-5, atol=1e-7)
    # the EMA is neither the initial nor the latest weights
    kernel = lambda tree: np.asarray(tree["stem"]["kernel"])
    assert not np.allclose(kernel(state.ema_params), kernel(history[0]), atol=1e-6)
    assert not np.allclose(kernel(state.ema_params), kernel(history[-1]), atol=1e-6)


@pytest.mark.slow
def test_ema_decay_zero_is_the_raw_weights():
    state, history = train(ema_config(0.0), 2)
    assert_trees_close(state.ema_params, jax.tree.map(np.asarray, history[-1]), rtol=0, atol=0)


def test_load_generator_returns_the_ema_weights(trained, tmp_path):
    config, state, history = trained
    stage_dir = str(tmp_path / "pretrain")
    manager = checkpoints.latest_manager(stage_dir, 2)
    checkpoints.save_state(manager, state, {"stage": "pretrain", "step": STEPS,
                                            "config": config.to_json_best_effort(),
                                            "scores": {}})
    manager.wait_until_finished()
    _, module, variables = load_generator(stage_dir)  # evaluation's default: EMA
    assert_trees_close(variables["params"], numpy_ema(history, 0.15), rtol=1e-5, atol=1e-7)
    _, _, raw = load_generator(stage_dir, use_ema=False)
    assert_trees_close(raw["params"], jax.tree.map(np.asarray, history[-1]), rtol=0, atol=0)
    out = module.apply(variables, batch(9)["inputs"], train=False)
    assert out.prediction.shape == (2, 16, 16, 5)
