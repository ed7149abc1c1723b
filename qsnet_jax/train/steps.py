"""Pure training and evaluation steps (jit them with `mesh.compile_*`).

One training step = one generator update, then `config.optim.disc_steps_per_gen_step`
discriminator updates on the same batch. The generator's loss uses the discriminator as it
was at the start of the step; the discriminator then sees the generator's prediction from
that same forward pass (with stopped gradient). This matches pix2pix, which also computes
the fake once per step, and saves a second generator forward pass.

Generator loss = l1_weight * (L1(prediction) + sum_j w_j L1(aux_j, pooled target))
               + adversarial_weight * GAN_G + ssim_weight * (1 - SSIM).
Terms whose weight is 0, or whose part is absent (no discriminator, no auxiliary heads),
are left out of the computation. The L1-only warm-up (`loss.adversarial_start_step`) is a
second step function, `make_train_step(..., warmup=True)`: no GAN term, no discriminator
update, zeros in their metrics; the loop runs it before the start step. (A `lax.cond` inside
one step made every adversarial step ~8x slower on CPU.)
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from qsnet_jax import losses
from qsnet_jax.train.state import TrainState

TRAIN_BATCH_KEYS = ("inputs", "targets")

StepFn = Callable[[TrainState, dict], tuple[TrainState, dict]]


def _apply_generator(generator, params, collections, inputs, *, train, dropout_key=None):
    variables = {"params": params, **collections}
    rngs = {"dropout": dropout_key} if dropout_key is not None else None
    if train and collections:
        output, new_collections = generator.apply(variables, inputs, train=True, rngs=rngs,
                                                  mutable=list(collections))
        return output, dict(new_collections)
    return generator.apply(variables, inputs, train=train, rngs=rngs), collections


def _apply_discriminator(discriminator, params, collections, condition, image, *, train,
                         dropout_key):
    variables = {"params": params, **collections}
    rngs = {"dropout": dropout_key}
    if train and collections:
        logits, new_collections = discriminator.apply(
            variables, condition, image, train=True, rngs=rngs, mutable=list(collections))
        return list(logits), dict(new_collections)
    return list(discriminator.apply(variables, condition, image, train=train, rngs=rngs)), \
        collections


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def ema_decay_at(step, decay: float):
    """EMA decay with the usual warm-up min(decay, (1 + t) / (10 + t)): early averages are not
    dominated by the random initialization."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_train_step(config: ml_collections.ConfigDict, generator: nn.Module,
                    discriminator: nn.Module | None, gen_optimizer: optax.GradientTransformation,
                    disc_optimizer: optax.GradientTransformation | None,
                    gen_schedule: optax.Schedule, *, warmup: bool = False) -> StepFn:
    """Build `train_step(state, batch) -> (state, metrics)` (pure; metrics are scalars).

    warmup: the L1-only step of the warm-up: the discriminator is neither used nor updated,
    and its metrics (the same keys as the full step's) are zeros.
    """
    if warmup and discriminator is not None:
        return _warmup_step(make_train_step(config, generator, discriminator, gen_optimizer,
                                            disc_optimizer, gen_schedule),
                            make_train_step(config, generator, None, gen_optimizer, None,
                                            gen_schedule))
    loss_config = config.loss
    l1_weight = float(loss_config.l1_weight)
    adversarial_weight = float(loss_config.adversarial_weight) if discriminator else 0.0
    ssim_weight = float(loss_config.ssim_weight)
    ds_weights = tuple(loss_config.deep_supervision_weights)
    gan_kind = loss_config.gan_loss
    if discriminator is not None:
        losses.check_gan_loss(gan_kind)  # a bad name fails before compiling
    disc_updates = int(config.optim.disc_steps_per_gen_step) if discriminator else 0
    ema_decay = float(config.optim.ema_decay)

    def generator_loss(gen_params, state, inputs, targets, key):
        output, new_gen_state = _apply_generator(generator, gen_params, state.gen_state,
                                                 inputs, train=True, dropout_key=key)
        prediction = output.prediction.astype(jnp.float32)
        metrics = {"l1": losses.l1_loss(prediction, targets)}
        pixel = metrics["l1"]
        if output.aux:
            metrics["deep_supervision"] = losses.deep_supervision_loss(output.aux, targets,
                                                                       ds_weights)
            pixel = pixel + metrics["deep_supervision"]
        total = l1_weight * pixel
        if ssim_weight:
            metrics["ssim_loss"] = losses.ssim_loss(prediction, targets)
            total = total + ssim_weight * metrics["ssim_loss"]
        if adversarial_weight:
            fake_logits, _ = _apply_discriminator(
                discriminator, state.disc_params, state.disc_state, inputs, prediction,
                train=True, dropout_key=jax.random.fold_in(key, 1))
            metrics["adversarial"] = losses.generator_adversarial_loss(fake_logits, gan_kind)
            total = total + adversarial_weight * metrics["adversarial"]
        metrics["generator_loss"] = total
        return total, (metrics, new_gen_state, prediction)

    def discriminator_loss(disc_params, disc_state, inputs, targets, prediction, key):
        both_logits, new_disc_state = _apply_discriminator(
            discriminator, disc_params, disc_state, jnp.concatenate([inputs, inputs]),
            jnp.concatenate([targets, prediction]), train=True, dropout_key=key)
        batch = inputs.shape[0]
        real_logits = [logits[:batch] for logits in both_logits]
        fake_logits = [logits[batch:] for logits in both_logits]
        loss = losses.discriminator_loss(real_logits, fake_logits, gan_kind)
        metrics = {"discriminator_loss": loss,
                   "disc_real_logit": jnp.mean(jnp.stack([r.mean() for r in real_logits])),
                   "disc_fake_logit": jnp.mean(jnp.stack([f.mean() for f in fake_logits]))}
        return loss, (metrics, new_disc_state)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        inputs, targets = batch["inputs"], batch["targets"].astype(jnp.float32)
        step_key = jax.random.fold_in(state.rng, state.step)
        gen_key, disc_key = jax.random.split(step_key)

        (_, (metrics, new_gen_state, prediction)), gen_grads = jax.value_and_grad(
            generator_loss, has_aux=True)(state.gen_params, state, inputs, targets, gen_key)
        updates, new_gen_opt_state = gen_optimizer.update(gen_grads, state.gen_opt_state,
                                                          state.gen_params)
        new_gen_params = optax.apply_updates(state.gen_params, updates)
        decay = ema_decay_at(state.step, ema_decay)
        new_ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params,
                               new_gen_params)
        metrics["generator_grad_norm"] = optax.global_norm(gen_grads)
        metrics["learning_rate"] = gen_schedule(state.step)

        disc_params, disc_state, disc_opt_state = (state.disc_params, state.disc_state,
                                                   state.disc_opt_state)
        fake = jax.lax.stop_gradient(prediction)
        for update_index in range(disc_updates):
            (_, (disc_metrics, disc_state)), disc_grads = jax.value_and_grad(
                discriminator_loss, has_aux=True)(disc_params, disc_state, inputs, targets,
                                                  fake, jax.random.fold_in(disc_key,
                                                                           update_index))
            disc_updates_tree, disc_opt_state = disc_optimizer.update(
                disc_grads, disc_opt_state, disc_params)
            disc_params = optax.apply_updates(disc_params, disc_updates_tree)
            disc_metrics["discriminator_grad_norm"] = optax.global_norm(disc_grads)
            metrics.update(disc_metrics)

        new_state = state.replace(
            step=state.step + 1, gen_params=new_gen_params, gen_state=new_gen_state,
            gen_opt_state=new_gen_opt_state, ema_params=new_ema, disc_params=disc_params,
            disc_state=disc_state, disc_opt_state=disc_opt_state)
        # A non-finite loss or gradient freezes the state at the last good step for good; the
        # host sees `first_bad_step` at its next check and stops.
        finite = _all_finite(metrics) & (state.first_bad_step < 0)
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        first_bad = jnp.where((state.first_bad_step < 0) & ~finite, state.step,
                              state.first_bad_step)
        return kept.replace(first_bad_step=first_bad), metrics

    return train_step


def _warmup_step(full_step: StepFn, pixel_step: StepFn) -> StepFn:
    """The pixel-loss step, with zeros for the metrics only the full step has."""

    def warmup_step(state, batch):
        new_state, metrics = pixel_step(state, batch)
        shapes = jax.eval_shape(full_step, state, batch)[1]
        return new_state, {k: metrics[k] if k in metrics else jnp.zeros(v.shape, v.dtype)
                           for k, v in shapes.items()}

    return warmup_step


def make_predict_fn(generator: nn.Module) -> Callable[[dict, jax.Array], jax.Array]:
    """`predict(variables, inputs) -> float32 prediction` in inference mode."""

    def predict(variables, inputs):
        output = generator.apply(variables, inputs, train=False)
        return output.prediction.astype(jnp.float32)

    return predict
