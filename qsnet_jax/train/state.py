"""The training state of a generator (+ optional discriminator) as one pytree.

Randomness: `rng` is a fixed base key; every step derives its keys with
`fold_in(rng, step)`, so there is no RNG state to carry and a resumed run draws exactly the
keys of an uninterrupted one.

`first_bad_step` is -1 until a step produces a non-finite loss or gradient; that step and
every later one then leave the state untouched (see `steps.py`), so the state, and any
checkpoint written from it, is always the last good one.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Params = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32, number of completed updates in this stage
    rng: jax.Array  # uint32[2] base key
    gen_params: Params
    gen_state: dict  # non-parameter collections, e.g. {"batch_stats": ...}; {} when none
    gen_opt_state: optax.OptState
    ema_params: Params  # exponential moving average of gen_params (= gen_params if decay 0)
    disc_params: Params  # {} without a discriminator
    disc_state: dict
    disc_opt_state: optax.OptState
    first_bad_step: jax.Array  # int32, -1 while every step has been finite

    def generator_variables(self, use_ema: bool = True) -> dict:
        """`{"params": ..., **other collections}` as `module.apply` wants them."""
        return {"params": self.ema_params if use_ema else self.gen_params, **self.gen_state}


def split_variables(variables) -> tuple[Params, dict]:
    """Flax variables -> (params, the other collections)."""
    variables = flax.core.unfreeze(variables)
    params = variables.pop("params")
    return params, variables


def init_train_state(rng: jax.Array, generator: nn.Module, discriminator: nn.Module | None,
                     gen_optimizer: optax.GradientTransformation,
                     disc_optimizer: optax.GradientTransformation | None,
                     sample_inputs: jax.Array, sample_targets: jax.Array,
                     init_generator_variables=None) -> TrainState:
    """Initialize every part; `init_generator_variables` (params + collections) replaces the
    freshly initialized generator (fine-tuning), while the discriminator and both optimizers
    start fresh."""
    # Parameter initialization uses the "rbg" generator: XLA compiles the threefry code of
    # hundreds of initializers ~5x slower (tens of seconds on CPU). Dropout keys stay threefry
    # (`rng`), whose values do not depend on how a computation is sharded.
    init_key = jax.random.key(jax.random.randint(rng, (), 0, 2**31 - 1), impl="rbg")
    gen_key, disc_key = jax.random.split(init_key)
    base_key = jax.random.fold_in(rng, 1)
    if init_generator_variables is None:
        init_generator_variables = generator.init(
            {"params": gen_key, "dropout": gen_key}, sample_inputs, train=False)
    gen_params, gen_state = split_variables(init_generator_variables)
    if discriminator is not None:
        disc_params, disc_state = split_variables(discriminator.init(
            {"params": disc_key, "dropout": disc_key}, sample_inputs, sample_targets,
            train=False))
        disc_opt_state = disc_optimizer.init(disc_params)
    else:
        disc_params, disc_state, disc_opt_state = {}, {}, ()
    return TrainState(
        step=jnp.zeros((), jnp.int32), rng=base_key, gen_params=gen_params,
        gen_state=gen_state, gen_opt_state=gen_optimizer.init(gen_params),
        ema_params=jax.tree.map(jnp.copy, gen_params), disc_params=disc_params,
        disc_state=disc_state, disc_opt_state=disc_opt_state,
        first_bad_step=jnp.full((), -1, jnp.int32))
