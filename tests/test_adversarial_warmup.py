"""loss.adversarial_start_step: an L1-only warm-up, then the GAN term and the discriminator.

During the warm-up a step must equal the step of a pure-L1 run (no discriminator at all),
and the discriminator must stay as initialized; from the start step on, both train."""

import jax
import numpy as np
from test_train_steps import build, make_batch, make_config


def max_change(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_warm_up_is_pure_l1_then_the_adversary_joins():
    config = make_config(adversarial_weight=1.0, adversarial_start_step=2)
    state, step, _, _ = build(config)
    reference_config = make_config(adversarial_weight=1.0)
    reference, reference_step, _, _ = build(reference_config, with_discriminator=False)
    initial_disc = state.disc_params
    for batch_seed in (0, 1):  # steps 0 and 1: warm-up
        batch = make_batch(batch_seed)
        state, metrics = step(state, batch)
        reference, _ = reference_step(reference, batch)
        assert float(metrics["adversarial"]) == 0.0
        assert float(metrics["discriminator_loss"]) == 0.0
        assert max_change(state.disc_params, initial_disc) == 0.0
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                     state.gen_params, reference.gen_params)
    batch = make_batch(2)  # step 2: the adversary joins
    state, metrics = step(state, batch)
    reference, _ = reference_step(reference, batch)
    assert float(metrics["adversarial"]) > 0.0
    assert float(metrics["discriminator_loss"]) > 0.0
    assert max_change(state.disc_params, initial_disc) > 1e-6
    assert max_change(state.gen_params, reference.gen_params) > 1e-7


def test_start_step_zero_is_the_adversarial_step_from_the_first_step():
    batch = make_batch(0)
    state, step, _, _ = build(make_config(adversarial_weight=1.0))
    state_at_1, step_at_1, _, _ = build(make_config(adversarial_weight=1.0,
                                                    adversarial_start_step=1))
    after, metrics = step(state, batch)
    assert float(metrics["adversarial"]) > 0.0
    _, metrics_at_1 = step_at_1(state_at_1, batch)
    assert float(metrics_at_1["adversarial"]) == 0.0
    assert max_change(after.disc_params, state.disc_params) > 1e-6
