"""loss.adversarial_start_step: the warm-up step is the pure-L1 step (the step of a run
without any discriminator), leaves the discriminator as it is and reports zeros for the
adversarial metrics under the full step's keys; the full step trains both."""

import jax
import numpy as np
from test_train_steps import TinyDiscriminator, build, make_batch, make_config

from qsnet_jax.train import optim, steps


def max_change(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_warm_up_is_pure_l1_then_the_adversary_joins():
    config = make_config(adversarial_weight=1.0, adversarial_start_step=2)
    state, full_step, gen_opt, generator = build(config)
    schedule = optim.make_lr_schedule(config.optim, 1e-2, 100)
    warmup_step = jax.jit(steps.make_train_step(
        config, generator, TinyDiscriminator(), gen_opt,
        optim.make_optimizer(config.optim, schedule), schedule, warmup=True))
    reference, reference_step, _, _ = build(make_config(adversarial_weight=1.0),
                                            with_discriminator=False)
    initial_disc = state.disc_params
    _, full_metrics = full_step(state, make_batch(0))
    for batch_seed in (0, 1):  # steps 0 and 1: warm-up
        batch = make_batch(batch_seed)
        state, metrics = warmup_step(state, batch)
        reference, _ = reference_step(reference, batch)
        assert sorted(metrics) == sorted(full_metrics)
        assert float(metrics["adversarial"]) == 0.0
        assert float(metrics["discriminator_loss"]) == 0.0
        assert max_change(state.disc_params, initial_disc) == 0.0
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                     state.gen_params, reference.gen_params)
    batch = make_batch(2)  # step 2: the adversary joins
    state, metrics = full_step(state, batch)
    reference, _ = reference_step(reference, batch)
    assert float(metrics["adversarial"]) > 0.0
    assert float(metrics["discriminator_loss"]) > 0.0
    assert max_change(state.disc_params, initial_disc) > 1e-6
    assert max_change(state.gen_params, reference.gen_params) > 1e-7
