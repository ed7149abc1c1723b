"""Checkpoints of a stage: the whole training state survives save + restore leaf for leaf, a
resumed run asks its data stream for the right position and ends where an uninterrupted run
ends, and with several checkpoints kept "latest" and "best" each name the right step.

The runs are qsnet_jax.train.train_stage on the smoke config's tiny models, fed by a
synthetic stream whose batch i depends only on i (no cohort, no tf.data).
"""

import os
import shutil

import jax
import numpy as np
import pytest

from configs import default
from qsnet_jax.train import checkpoints, load_generator, loop, train_stage

# validation score of each step: step 2 is the best, step 4 the latest
SCORES = {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.6}
STEPS = 4
KEEP = 3


def stage_config(steps):
    config = default.get_config("tiny")
    config.stages = ("pretrain",)
    config.pretrain.steps = steps
    config.optim.lr_schedule = "constant"  # the same step whatever the total
    config.train.batch_size = 2
    config.train.checkpoint_every_steps = 1
    config.train.max_checkpoints_to_keep = KEEP
    config.train.log_every_steps = 1
    config.train.eval_every_steps = 1
    config.train.image_every_steps = 1000
    return config


class Recorder:
    """The data stream and the validation callback of train_stage, recording what they see."""

    def __init__(self):
        self.start_steps = []
        self.ema_at = {}

    def batches(self, start_step):
        self.start_steps.append(start_step)
        step = start_step
        while True:
            rng = np.random.default_rng(step)
            yield {"inputs": rng.uniform(size=(2, 16, 16, 3)).astype(np.float32),
                   "targets": rng.uniform(size=(2, 16, 16, 5)).astype(np.float32)}
            step += 1

    def validate(self, predict, step):
        self.ema_at[step] = jax.device_get(predict.variables["params"])
        return {"mean/ssim": SCORES[step]}


def run(stage_dir, steps):
    recorder = Recorder()
    result = train_stage(stage_config(steps), stage="pretrain", stage_dir=stage_dir,
                         train_batches=recorder.batches, validate=recorder.validate,
                         log=lambda line: None)
    return result, recorder


def assert_trees_equal(got, expected):
    got_leaves, got_tree = jax.tree.flatten(got)
    expected_leaves, expected_tree = jax.tree.flatten(expected)
    assert got_tree == expected_tree
    for a, b in zip(got_leaves, expected_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    stage_dir = str(tmp_path_factory.mktemp("run") / "pretrain")
    result, recorder = run(stage_dir, STEPS)
    return stage_dir, result, recorder


def test_restore_latest_equals_the_whole_state_in_memory(trained):
    stage_dir, result, _ = trained
    state = result.state
    manager = checkpoints.latest_manager(stage_dir)
    assert manager.all_steps() == [2, 3, 4] and manager.latest_step() == 4
    abstract = jax.eval_shape(lambda: state)
    shardings = jax.tree.map(lambda leaf: leaf.sharding, state)
    restored, meta = checkpoints.restore_state(manager, 4, abstract, shardings)
    assert meta["step"] == 4 and int(restored.step) == 4
    # every part of the state, compared leaf by leaf (optimizer moments included)
    for part in ("step", "rng", "gen_params", "gen_state", "gen_opt_state", "ema_params",
                 "disc_params", "disc_state", "disc_opt_state", "first_bad_step"):
        assert_trees_equal(getattr(restored, part), getattr(state, part))
    assert_trees_equal(restored, state)
    # the parts compared are not trivially equal: trained Adam moments, EMA != raw weights
    moments = [leaf for leaf in jax.tree.leaves(state.gen_opt_state) if np.ndim(leaf) > 0]
    assert moments and all(np.abs(np.asarray(m)).max() > 0 for m in moments)
    disc_moments = [leaf for leaf in jax.tree.leaves(state.disc_opt_state) if np.ndim(leaf) > 0]
    assert disc_moments and all(np.abs(np.asarray(m)).max() > 0 for m in disc_moments)
    assert not np.array_equal(jax.tree.leaves(state.ema_params)[0],
                              jax.tree.leaves(state.gen_params)[0])


def test_latest_and_best_each_restore_their_step(trained):
    stage_dir, result, recorder = trained
    latest = checkpoints.resolve_checkpoint(stage_dir, prefer_best=False)
    best = checkpoints.resolve_checkpoint(stage_dir, prefer_best=True)
    assert latest == os.path.join(stage_dir, "checkpoints", "4")
    assert best == os.path.join(stage_dir, "checkpoints_best", "2")
    assert checkpoints.read_meta(latest)["step"] == 4
    assert checkpoints.read_meta(best)["step"] == 2
    assert checkpoints.read_meta(best)["best_score"] == SCORES[2]
    # load_generator of the stage: the best step's EMA weights, as validation saw them
    _, _, variables = load_generator(stage_dir)
    assert_trees_equal(variables["params"], recorder.ema_at[2])
    assert not np.array_equal(jax.tree.leaves(recorder.ema_at[2])[0],
                              jax.tree.leaves(recorder.ema_at[4])[0])
    # the latest checkpoint: the last raw and EMA weights
    _, _, raw = load_generator(latest, use_ema=False)
    assert_trees_equal(raw["params"], result.state.gen_params)
    _, _, ema = load_generator(latest)
    assert_trees_equal(ema["params"], result.state.ema_params)
    assert_trees_equal(loop.final_generator_variables(stage_dir)["params"],
                       result.state.gen_params)


def test_resume_continues_from_the_latest_of_several_and_equals_the_uninterrupted_run(
        trained, tmp_path):
    stage_dir, result, recorder = trained
    assert recorder.start_steps == [0]
    # the run as if killed after step 3: checkpoints 2 and 3 on disk
    interrupted = str(tmp_path / "pretrain")
    shutil.copytree(stage_dir, interrupted)
    shutil.rmtree(os.path.join(interrupted, "checkpoints", "4"))
    assert checkpoints.latest_manager(interrupted).all_steps() == [2, 3]
    resumed, resumed_recorder = run(interrupted, STEPS)
    assert resumed_recorder.start_steps == [3]  # the data stream resumes at batch 3
    assert sorted(resumed_recorder.ema_at) == [4]  # only step 4 was trained again
    assert_trees_equal(resumed.state, result.state)
