"""The per-voxel pre-fit (issue 12): a QS-Net seeded with a per-voxel MLP predicts exactly
that MLP (NumPy re-computation), mismatches are refused, and the workflow trains the MLP
first, once, and starts the first stage from it."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import default
from data_pipelines import input_pipeline
from qsnet_jax import models
from qsnet_jax.train import loop
from workflow import train_eval
from workflow.errors import UserError

INPUTS = ("t1map", "t2map", "pdmap")
TARGETS = ("t1w", "t2w", "t1flair", "t2flair", "swi")


def init(model_config, seed, shape=(2, 16, 16, 3)):
    module = models.build_generator(model_config, input_channels=INPUTS,
                                    target_channels=TARGETS)
    x = np.asarray(jax.random.uniform(jax.random.key(seed), shape))
    return module, module.init(jax.random.key(seed + 1), x), x


def tiny_models(pointwise_width=8, pointwise_layers=2):
    config = default.get_config("tiny")
    config.model.pointwise_width, config.model.pointwise_layers = (pointwise_width,
                                                                   pointwise_layers)
    mlp = config.model.copy_and_resolve_references()
    mlp.name, mlp.pervoxel_width, mlp.pervoxel_layers = "pervoxel", 8, 2
    return config.model, mlp


def test_seeded_network_predicts_the_per_voxel_mlp(numpy_mlp):
    qsnet_config, mlp_config = tiny_models()
    qsnet, variables, x = init(qsnet_config, seed=0)
    _, mlp_variables, _ = init(mlp_config, seed=10)
    seeded = models.seed_pointwise_path(variables, mlp_variables["params"])
    expected = 1.0 / (1.0 + np.exp(-numpy_mlp(mlp_variables["params"], x)))
    got = np.asarray(qsnet.apply(seeded, x).prediction)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the auxiliary heads and the U-Net keep their own weights
    for name in ("decoder_1_head", "stem", "encoder_0_block_0"):
        assert jax.tree.all(jax.tree.map(np.array_equal, seeded["params"][name],
                                         variables["params"][name]))


def test_mismatches_are_refused():
    qsnet_config, mlp_config = tiny_models()
    _, mlp_variables, _ = init(mlp_config, seed=10)
    no_path = qsnet_config.copy_and_resolve_references()
    no_path.pointwise_width = 0
    _, variables, _ = init(no_path, seed=0)
    with pytest.raises(ValueError, match="no per-voxel path"):
        models.seed_pointwise_path(variables, mlp_variables["params"])
    for changes, message in (((16, 2), "shape"), ((8, 3), "do not match")):
        other, _ = tiny_models(*changes)
        _, variables, _ = init(other, seed=0)
        with pytest.raises(ValueError, match=message):
            models.seed_pointwise_path(variables, mlp_variables["params"])


def tiny_run_config(prefit_steps):
    config = default.get_config("tiny")
    config.model.pointwise_width, config.model.pointwise_layers = 8, 2
    config.pointwise_prefit.steps = prefit_steps
    config.uncertainty.enabled = config.segmentation.enabled = False
    config.eval.after_each_stage = False
    config.stages = ("pretrain",)
    config.pretrain.steps = 2
    config.train.checkpoint_every_steps = 1
    return config


def test_workflow_prefits_once_and_starts_the_first_stage_from_it(tiny_cohort, tmp_path,
                                                                 capsys):
    config = tiny_run_config(prefit_steps=3)
    config.data.cohort_dir = tiny_cohort
    config.pretrain.steps = 1  # the first stage's step-1 checkpoint is one update away
    config.optim.warmup_steps = 0
    train_eval.run(config, str(tmp_path))
    prefit_dir = tmp_path / train_eval.PREFIT_STAGE
    assert json.loads((prefit_dir / train_eval.STAGE_DONE).read_text())["steps"] == 3
    mlp = loop.final_generator_variables(str(prefit_dir))["params"]
    first = loop.final_generator_variables(str(tmp_path / "pretrain"))["params"]
    # one Adam step moves a weight by at most about the learning rate: the path starts
    # from the MLP, the full-resolution head from zero
    lr = float(config.pretrain.learning_rate)
    for name, layer in mlp.items():
        for leaf, value in layer.items():
            moved = np.abs(np.asarray(first["pointwise_" + name][leaf]) - np.asarray(value))
            assert moved.max() <= 1.5 * lr, (name, leaf)
    assert np.abs(np.asarray(first["decoder_0_head"]["kernel"])).max() <= 1.5 * lr
    capsys.readouterr()
    train_eval.run(config, str(tmp_path))  # a rerun finds both done
    assert "already trained" in capsys.readouterr().out
    # The finished stages name their cohort; the same work dir on another cohort is refused
    # (it would reuse models of other data), before anything is trained or written.
    recorded = json.loads((prefit_dir / train_eval.STAGE_DONE).read_text())["cohort"]
    assert recorded == os.path.abspath(tiny_cohort)
    other = tmp_path.parent / "another_cohort"
    other.mkdir()
    (other / "manifest.csv").write_text((Path(tiny_cohort) / "manifest.csv").read_text())
    config.data.cohort_dir = str(other)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for attempt in (lambda: train_eval.is_trained(config, str(tmp_path)),
                    lambda: train_eval.run(config, str(tmp_path))):
        with pytest.raises(UserError, match="was trained on the cohort .*tiny"):
            attempt()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_prefit_is_skipped_without_a_per_voxel_path_or_with_init_from(tiny_cohort, tmp_path):
    config = tiny_run_config(prefit_steps=3)
    assert train_eval.prefit_config(config).model.name == "pervoxel"
    config.init_from = str(tmp_path)
    assert train_eval.prefit_config(config) is None
    config.init_from = ""
    config.data.cohort_dir = tiny_cohort
    config.model.pointwise_width = 0
    train_eval.run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / train_eval.PREFIT_STAGE)


def test_every_nth_voxel_keeps_voxels_0_n_2n_of_each_slice():
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.random((2, 7, 9, 3)), "targets": rng.random((2, 7, 9, 5)),
             "brain_mask": rng.random((2, 7, 9, 1)), "labels": rng.integers(0, 4, (2, 7, 9, 1)),
             "valid": np.ones(2)}
    (got,) = input_pipeline.every_nth_voxel(iter([batch]), 3)
    rows, cols = np.array([0, 3, 6]), np.array([0, 3, 6])
    for key in ("inputs", "targets", "brain_mask", "labels"):
        np.testing.assert_array_equal(got[key], batch[key][:, rows][:, :, cols])
    np.testing.assert_array_equal(got["valid"], batch["valid"])
    (same,) = input_pipeline.every_nth_voxel(iter([batch]), 1)
    assert same["inputs"] is batch["inputs"]
    with pytest.raises(ValueError, match="stride"):
        next(input_pipeline.every_nth_voxel(iter([batch]), 0))
