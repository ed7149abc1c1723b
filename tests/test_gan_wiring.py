"""The GAN wiring of the train step (qsnet_jax/train/steps.py), with a discriminator that
records what it sees and whose logits and gradients are written out by hand in NumPy.

Generator: prediction = sigmoid(x K + b) per pixel (its Jacobian is simple). Discriminator:
logit = condition . w_c + (image - 0.5) . w_x per pixel. Both optimizers are plain SGD, so one
step moves the parameters by exactly -lr * gradient, which this file computes by hand.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from qsnet_jax import metrics
from qsnet_jax.train import steps
from qsnet_jax.train.state import init_train_state

W_CONDITION = (0.1, 0.1, 0.1)
W_IMAGE = (0.2, 0.2)
DISC_LR = 0.5
SEEN = []  # (condition, image) of every discriminator call, recorded on the host


class Output(NamedTuple):
    prediction: jax.Array
    aux: tuple


class PixelGenerator(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        z = nn.Dense(2, kernel_init=nn.initializers.normal(0.5),
                     bias_init=nn.initializers.constant(-3.0), name="pixel")(x)
        return Output(nn.sigmoid(z), ())


class RecordingLinearDiscriminator(nn.Module):
    @nn.compact
    def __call__(self, condition, image, train=False):
        jax.debug.callback(lambda c, i: SEEN.append((np.asarray(c), np.asarray(i))),
                           condition, image)
        constant = lambda values: lambda key, shape: jnp.asarray(values, jnp.float32)
        w_c = self.param("w_condition", constant(W_CONDITION), (3,))
        w_x = self.param("w_image", constant(W_IMAGE), (2,))
        return [(condition @ w_c + (image - 0.5) @ w_x)[..., None]]


def make_batch():
    # real contrasts bright, the initial prediction dark (bias -3): the discriminator has
    # something to separate, and the condition is small so that the image decides
    rng = np.random.default_rng(0)
    return {"inputs": rng.uniform(0.0, 0.2, (2, 16, 16, 3)).astype(np.float32),
            "targets": rng.uniform(0.7, 1.0, (2, 16, 16, 2)).astype(np.float32)}


def one_step(l1_weight, adversarial_weight, ssim_weight):
    config = default.get_config()
    config.loss.l1_weight = l1_weight
    config.loss.adversarial_weight = adversarial_weight
    config.loss.ssim_weight = ssim_weight
    config.loss.gan_loss = "lsgan"
    config.optim.disc_steps_per_gen_step = 1
    generator, discriminator = PixelGenerator(), RecordingLinearDiscriminator()
    gen_opt, disc_opt = optax.sgd(1.0), optax.sgd(DISC_LR)
    batch = make_batch()
    state = init_train_state(jax.random.PRNGKey(0), generator, discriminator, gen_opt,
                             disc_opt, batch["inputs"][:1], batch["targets"][:1])
    step = jax.jit(steps.make_train_step(config, generator, discriminator, gen_opt, disc_opt,
                                         optax.constant_schedule(1.0)))
    jax.effects_barrier()
    SEEN.clear()
    new_state, step_metrics = step(state, batch)
    jax.effects_barrier()
    return state, new_state, step_metrics, batch, list(SEEN)


def numpy_parts(state, batch):
    x = np.asarray(batch["inputs"], np.float64)
    kernel = np.asarray(state.gen_params["pixel"]["kernel"], np.float64)
    bias = np.asarray(state.gen_params["pixel"]["bias"], np.float64)
    prediction = 1.0 / (1.0 + np.exp(-(x @ kernel + bias)))
    return x, prediction


def logits(x, image):
    return x @ np.array(W_CONDITION) + (image - 0.5) @ np.array(W_IMAGE)


def numpy_generator_gradient(state, batch, l1_weight, adversarial_weight):
    """d/d(K, b) of l1_weight * mean|p - t| + adversarial_weight * mean((D(x, p) - 1)^2); the
    discriminator is a constant here: the gradient reaches the generator only through p."""
    x, p = numpy_parts(state, batch)
    t = np.asarray(batch["targets"], np.float64)
    pixels = p.shape[0] * p.shape[1] * p.shape[2]
    d_pred = l1_weight * np.sign(p - t) / p.size
    d_pred = d_pred + adversarial_weight * 2 * (logits(x, p) - 1.0)[..., None] * np.array(
        W_IMAGE) / pixels
    d_z = d_pred * p * (1 - p)
    return {"kernel": np.einsum("bhwi,bhwk->ik", x, d_z), "bias": d_z.sum(axis=(0, 1, 2))}


def moved(before, after):
    """-(after - before) of the generator's two leaves: the gradient (SGD, lr 1)."""
    return {k: np.asarray(before.gen_params["pixel"][k], np.float64)
            - np.asarray(after.gen_params["pixel"][k], np.float64) for k in ("kernel", "bias")}


def test_discriminator_sees_inputs_with_targets_and_with_the_prediction():
    state, new_state, _, batch, seen = one_step(1.0, 1.0, 0.0)
    _, prediction = numpy_parts(state, batch)
    generator_calls = [s for s in seen if s[0].shape[0] == 2]
    disc_calls = [s for s in seen if s[0].shape[0] == 4]
    assert generator_calls and disc_calls and len(seen) == len(generator_calls) + len(disc_calls)
    for condition, image in generator_calls:  # the generator's adversarial term
        np.testing.assert_allclose(condition, batch["inputs"], atol=0)
        np.testing.assert_allclose(image, prediction, atol=1e-6)
    for condition, image in disc_calls:  # real pairs first, then fake pairs
        np.testing.assert_allclose(condition, np.concatenate([batch["inputs"]] * 2), atol=0)
        np.testing.assert_allclose(image[:2], batch["targets"], atol=0)
        np.testing.assert_allclose(image[2:], prediction, atol=1e-6)


def test_one_discriminator_update_is_the_hand_gradient_and_separates_real_from_fake():
    state, new_state, step_metrics, batch, _ = one_step(1.0, 1.0, 0.0)
    x, p = numpy_parts(state, batch)
    t = np.asarray(batch["targets"], np.float64)
    real, fake = logits(x, t), logits(x, p)
    # loss 0.5 (mean (D_r - 1)^2 + mean D_f^2): d/dw = mean((D_r - 1) feature) + mean(D_f ...)
    grad_c = ((real - 1)[..., None] * x).mean(axis=(0, 1, 2)) + (fake[..., None] * x).mean(
        axis=(0, 1, 2))
    grad_x = ((real - 1)[..., None] * (t - 0.5)).mean(axis=(0, 1, 2)) + (
        fake[..., None] * (p - 0.5)).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(new_state.disc_params["w_condition"],
                               np.array(W_CONDITION) - DISC_LR * grad_c, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new_state.disc_params["w_image"],
                               np.array(W_IMAGE) - DISC_LR * grad_x, rtol=1e-5, atol=1e-7)
    assert float(step_metrics["disc_real_logit"]) == pytest.approx(real.mean(), abs=1e-5)
    assert float(step_metrics["disc_fake_logit"]) == pytest.approx(fake.mean(), abs=1e-5)
    # after the update: real logits up, fake logits down (same pairs, new weights)
    w_c, w_x = (np.asarray(new_state.disc_params[k], np.float64)
                for k in ("w_condition", "w_image"))
    assert (x @ w_c + (t - 0.5) @ w_x).mean() > real.mean() + 1e-3
    assert (x @ w_c + (p - 0.5) @ w_x).mean() < fake.mean() - 1e-3


def test_adversarial_generator_gradient_flows_only_through_the_prediction():
    state, new_state, step_metrics, batch, _ = one_step(0.0, 1.0, 0.0)
    x, p = numpy_parts(state, batch)
    expected = numpy_generator_gradient(state, batch, 0.0, 1.0)
    got = moved(state, new_state)
    for key in expected:
        assert np.abs(expected[key]).max() > 1e-4
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-7)
    assert float(step_metrics["adversarial"]) == pytest.approx(
        ((logits(x, p) - 1) ** 2).mean(), rel=1e-5)
    # and with the L1 term on, the two gradients add
    state, new_state, _, batch, _ = one_step(2.0, 1.0, 0.0)
    expected = numpy_generator_gradient(state, batch, 2.0, 1.0)
    for key, value in moved(state, new_state).items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-4, atol=1e-7)


def reference_ssim(prediction, target):
    """Mean SSIM over the valid region (the 11-tap window fully inside the image): the
    skimage-equal map of qsnet_jax.metrics cropped by 5 pixels, per image and channel."""
    to_planes = lambda a: jnp.transpose(a, (0, 3, 1, 2))  # NHWC -> N C H W
    ssim = metrics.ssim_map(to_planes(prediction), to_planes(target))
    return jnp.mean(ssim[..., 5:-5, 5:-5])


def test_ssim_term_gradient_with_adversarial_and_l1():
    l1_weight, adversarial_weight, ssim_weight = 1.0, 1.0, 3.0
    state, new_state, step_metrics, batch, _ = one_step(l1_weight, adversarial_weight,
                                                        ssim_weight)
    x, t = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
    w_c, w_x = jnp.asarray(W_CONDITION), jnp.asarray(W_IMAGE)

    def hand_loss(params):
        p = jax.nn.sigmoid(x @ params["kernel"] + params["bias"])
        fake = x @ w_c + (p - 0.5) @ w_x
        return (l1_weight * jnp.mean(jnp.abs(p - t))
                + adversarial_weight * jnp.mean((fake - 1.0) ** 2)
                + ssim_weight * (1.0 - reference_ssim(p, t)))

    params = state.gen_params["pixel"]
    expected = jax.grad(hand_loss)(params)
    got = moved(state, new_state)
    for key in ("kernel", "bias"):
        np.testing.assert_allclose(got[key], expected[key], rtol=2e-4, atol=1e-6)
    p = jax.nn.sigmoid(x @ params["kernel"] + params["bias"])
    assert float(step_metrics["ssim_loss"]) == pytest.approx(
        1.0 - float(reference_ssim(p, t)), abs=1e-5)
    # the SSIM term changes the step: it is not silently dropped
    without = numpy_generator_gradient(state, batch, l1_weight, adversarial_weight)
    assert np.abs(got["kernel"] - without["kernel"]).max() > 1e-3
