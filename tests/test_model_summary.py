"""model_summary and its table (workflow.reports) on the tiny config's models."""

import jax
import jax.numpy as jnp

from configs import default
from qsnet_jax import models
from workflow import reports


def test_summary_rows_count_params_and_flops():
    config = default.get_config("tiny")
    rows = reports.model_summary_rows(config, ["qsnet", "physics"], 32, 40)
    names = [row[0] for row in rows]
    assert names == ["qsnet", "physics", "discriminator: multiscale_patchgan"]
    qsnet = models.build_generator(config.model, input_channels=3, target_channels=5)
    variables = jax.eval_shape(lambda: qsnet.init(jax.random.key(0), jnp.zeros((1, 32, 40, 3))))
    assert rows[0][1] == models.count_params(variables)
    assert rows[1][1] == 5  # one scale per contrast
    # a conv net of this size costs far more than the 5-scale signal equations
    assert rows[0][2] > 1e6 > rows[1][2] > 0
    table = reports.model_summary_table(rows, 32, 40)
    assert "qsnet" in table and f"{rows[0][1]:,d}" in table


def test_model_summary_flops_scale_with_the_slice_area():
    config = default.get_config("tiny")
    qsnet = models.build_generator(config.model, input_channels=3, target_channels=5)
    small = models.model_summary(qsnet, (32, 32, 3))
    large = models.model_summary(qsnet, (2, 64, 64, 3))  # per slice: batch divided out
    assert small["params"] == large["params"]
    assert 3.5 < large["flops_per_slice"] / small["flops_per_slice"] < 4.5
