"""Optimizers and learning-rate schedules built from `config.optim` and a stage config.

Adam with b1 = 0.5 and lr 2e-4 is the pix2pix default the paper follows. Clipping is by the
global norm over the whole model. Freezing the encoder for the first N fine-tuning steps is
an `optax.multi_transform`: encoder parameters go through an optimizer wrapped in
`hold_for_first_steps`, which outputs zero updates and leaves its inner state (Adam moments,
step count, schedule position) untouched while frozen. Zeroing gradients instead would still
advance Adam's bias-correction count, and the first unfrozen update would be ~1/sqrt(1-b2)
too large. The encoder's own schedule therefore starts (warm-up included) when it unfreezes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adam", "adamw")


def make_lr_schedule(optim_config: ml_collections.ConfigDict, peak_lr: float,
                     total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `peak_lr`, then constant, cosine to 0 or linear to 0."""
    kind = optim_config.lr_schedule
    if kind not in SCHEDULES:
        raise ValueError(f"unknown config.optim.lr_schedule {kind!r}; known: {list(SCHEDULES)}")
    warmup = max(0, min(int(optim_config.warmup_steps), max(total_steps - 1, 0)))
    decay_steps = max(total_steps - warmup, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warmup_factor = jnp.minimum(1.0, (step + 1.0) / max(warmup, 1)) if warmup else 1.0
        progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if kind == "cosine":
            decay = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        elif kind == "linear":
            decay = 1.0 - progress
        else:
            decay = 1.0
        return peak_lr * jnp.where(step < warmup, warmup_factor, decay)

    return schedule


class HoldState(NamedTuple):
    count: jax.Array
    inner_state: optax.OptState


def hold_for_first_steps(inner: optax.GradientTransformation,
                         num_steps: int) -> optax.GradientTransformation:
    """Zero updates, and an untouched inner state, for the first `num_steps` calls."""

    def init(params):
        return HoldState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        held = state.count < num_steps
        new_updates, new_inner = inner.update(updates, state.inner_state, params)
        new_updates = jax.tree.map(lambda u: jnp.where(held, jnp.zeros_like(u), u),
                                   new_updates)
        new_inner = jax.tree.map(lambda old, new: jnp.where(held, old, new),
                                 state.inner_state, new_inner)
        return new_updates, HoldState(state.count + 1, new_inner)

    return optax.GradientTransformation(init, update)


def _base_optimizer(optim_config, schedule, *, b1=None):
    name = optim_config.optimizer
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown config.optim.optimizer {name!r}; known: {list(OPTIMIZERS)}")
    b1 = optim_config.b1 if b1 is None else b1
    if name == "adamw":
        return optax.adamw(schedule, b1=b1, b2=optim_config.b2,
                           weight_decay=optim_config.weight_decay)
    return optax.adam(schedule, b1=b1, b2=optim_config.b2)


def make_optimizer(optim_config: ml_collections.ConfigDict, schedule: optax.Schedule, *,
                   frozen_mask=None, freeze_steps: int = 0) -> optax.GradientTransformation:
    """Clip by global norm, then Adam(W); `frozen_mask` (a params-shaped tree of bools, True
    for encoder parameters) is held for `freeze_steps` steps."""
    parts = []
    if optim_config.grad_clip_norm and optim_config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
    if frozen_mask is not None and freeze_steps > 0:
        labels = jax.tree.map(lambda frozen: "encoder" if frozen else "rest", frozen_mask)
        parts.append(optax.multi_transform(
            {"encoder": hold_for_first_steps(_base_optimizer(optim_config, schedule),
                                             freeze_steps),
             "rest": _base_optimizer(optim_config, schedule)},
            labels))
    else:
        parts.append(_base_optimizer(optim_config, schedule))
    return optax.chain(*parts)
