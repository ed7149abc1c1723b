"""End-to-end training on a tiny NIfTI cohort: the two-stage schedule and its work dir,
fine-tuning from stage 1's weights, NaN handling, and kill -9 + resume == uninterrupted."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_cohort import write_tiny_cohort

from configs import default
from qsnet_jax.train import checkpoints, load_generator, loop
from workflow import train_eval
from workflow.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBJECTS = (
    ("h0", "healthy", "A", "healthy_train", 6), ("h1", "healthy", "A", "healthy_train", 6),
    ("h2", "healthy", "B", "healthy_test", 6), ("g0", "gbm", "A", "gbm_train", 6),
    ("g1", "gbm", "B", "gbm_train", 6), ("g2", "gbm", "A", "gbm_test", 6),
)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cohort")
    write_tiny_cohort(str(root), subjects=SUBJECTS, shape=(16, 20))
    return str(root)


def smoke_config(cohort_dir, **stage_overrides):
    config = default.get_config("tiny")
    config.data.cohort_dir = cohort_dir
    config.eval.after_each_stage = False  # evaluation has its own tests
    for key, value in stage_overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def raw_state(step_dir):
    return ocp.StandardCheckpointer().restore(os.path.join(step_dir, "state"))


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_two_stage_work_dir_and_finetune_starts_from_stage_one(cohort_dir, tmp_path):
    # learning rate 0 in fine-tuning: its generator must stay exactly stage 1's weights
    config = smoke_config(cohort_dir, finetune__learning_rate=0.0)
    workdir = str(tmp_path / "run")
    results = train_eval.run(config, workdir)
    assert [r.stage for r in results] == ["pretrain", "finetune"]
    for name in ("config.json", "model_summary.json", "pretrain/done.json",
                 "finetune/done.json", "pretrain/checkpoints/6", "pretrain/checkpoints/3"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert any(f.startswith("events") for f in os.listdir(f"{workdir}/pretrain/tensorboard"))
    assert os.listdir(f"{workdir}/pretrain/checkpoints_best")
    assert 0.0 < results[0].last_scores["mean/ssim"] <= 1.0
    best = checkpoints.best_manager(f"{workdir}/pretrain")
    assert loop.recorded_best_score(best) == results[0].best_score == pytest.approx(
        results[0].last_scores["mean/ssim"])
    stage1 = raw_state(f"{workdir}/pretrain/checkpoints/6")
    stage2 = raw_state(f"{workdir}/finetune/checkpoints/6")
    assert_trees_equal(stage2["gen_params"], stage1["gen_params"])
    assert int(stage2["step"]) == 6  # fine-tuning ran its own 6 steps
    # the discriminator restarts fresh: it was trained in stage 1 but stage 2 has lr 0 too,
    # so its weights are the fresh initialization, not stage 1's
    assert not np.array_equal(jax.tree.leaves(stage2["disc_params"])[0],
                              jax.tree.leaves(stage1["disc_params"])[0])

    # a separate fine-tuning run from the work dir (configs/finetune.py) starts there too
    config = smoke_config(cohort_dir, finetune__learning_rate=0.0)
    config.stages = ("finetune",)
    config.init_from = workdir
    train_eval.run(config, str(tmp_path / "finetune_only"))
    stage2b = raw_state(f"{tmp_path}/finetune_only/finetune/checkpoints/6")
    assert_trees_equal(stage2b["gen_params"], stage1["gen_params"])

    # load_generator: work dir -> last stage's best; stage dir raw weights
    loaded_config, module, variables = load_generator(workdir)
    assert tuple(loaded_config.stages) == ("pretrain", "finetune")
    out = module.apply(variables, np.zeros((1, 16, 20, 3), np.float32), train=False)
    assert out.prediction.shape == (1, 16, 20, 5)
    _, _, raw = load_generator(f"{workdir}/pretrain/checkpoints/6", use_ema=False)
    assert_trees_equal(raw["params"], stage1["gen_params"])

    # re-running the finished command skips both stages
    assert train_eval.run(smoke_config(cohort_dir, finetune__learning_rate=0.0), workdir) == []


def test_missing_init_from_is_one_clear_line(cohort_dir, tmp_path):
    config = smoke_config(cohort_dir)
    config.stages = ("finetune",)
    config.init_from = str(tmp_path / "no_such_run")
    with pytest.raises(UserError, match="run configs/pretrain.py first or set "
                                        "--config.init_from"):
        train_eval.run(config, str(tmp_path / "w"))


def test_bad_batch_size_and_names_are_user_errors(cohort_dir, tmp_path):
    config = smoke_config(cohort_dir)
    config.stages = ("pretrain", "warmup")
    with pytest.raises(UserError, match="unknown stage 'warmup'"):
        train_eval.validate_config(config)
    config = smoke_config(cohort_dir)
    config.data.target_channels = ("t1w", "flair")
    with pytest.raises(UserError, match="flair"):
        train_eval.validate_config(config)
    config = smoke_config(cohort_dir)
    config.train.batch_size = 0
    with pytest.raises(UserError, match="batch_size=0 must be a multiple of"):
        train_eval.validate_config(config)


@pytest.mark.slow
def test_nan_stops_training_names_the_step_and_keeps_a_good_checkpoint(cohort_dir, tmp_path):
    config = smoke_config(cohort_dir, pretrain__steps=8)
    config.stages = ("pretrain",)
    config.train.inject_nan_at_step = 5
    workdir = str(tmp_path / "nan")
    with pytest.raises(UserError) as error:
        train_eval.run(config, workdir)
    message = str(error.value)
    assert "non-finite loss or gradient at step 5" in message
    assert "the last good checkpoint is" in message and message.endswith("/3")
    assert "\n" not in message
    steps = sorted(int(s) for s in os.listdir(f"{workdir}/pretrain/checkpoints") if s.isdigit())
    assert steps == [3]
    _, _, variables = load_generator(f"{workdir}/pretrain/checkpoints/3")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def _main_args(cohort_dir, workdir):
    return [sys.executable, "-m", "experiments.main", "--config=configs/default.py:tiny",
            f"--workdir={workdir}", f"--config.data.cohort_dir={cohort_dir}",
            "--config.stages=('pretrain',)", "--config.pretrain.steps=24",
            "--config.train.checkpoint_every_steps=4", "--config.train.log_every_steps=4",
            "--config.train.eval_every_steps=24", "--config.train.image_every_steps=24",
            "--config.eval.after_each_stage=False"]


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(cohort_dir, tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(_main_args(cohort_dir, reference), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(_main_args(cohort_dir, killed), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = killed / "pretrain" / "checkpoints" / "4"
    deadline = time.time() + 240
    while not first_checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    latest = checkpoints.latest_manager(str(killed / "pretrain")).latest_step()
    assert latest is not None and latest < 24, "the run ended before it could be killed"

    resumed = subprocess.run(_main_args(cohort_dir, killed), cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed}/pretrain/checkpoints/{latest}" in resumed.stdout
    assert_trees_equal(raw_state(f"{killed}/pretrain/checkpoints/24"),
                       raw_state(f"{reference}/pretrain/checkpoints/24"))



def test_stages_validate_on_their_validation_split_not_on_the_test_split(cohort_dir, tmp_path,
                                                                         monkeypatch, capsys):
    for size in ("tiny", "quick", "paper"):  # the GBM stage never picks on its test split
        finetune = default.get_config(size).finetune
        assert finetune.validation_split == "gbm_calib" != finetune.eval_split
    config = smoke_config(cohort_dir, pretrain__steps=2, pretrain__validation_split="gbm_test")
    config.stages = ("pretrain",)
    config.pointwise_prefit.steps = 0
    validated = []
    real_validator = train_eval.make_validator
    monkeypatch.setattr(train_eval, "make_validator", lambda config, root, split: (
        validated.append(split) or real_validator(config, root, split)))
    train_eval.run(config, str(tmp_path / "run"))
    assert validated == ["gbm_test"]  # not the stage's eval split, healthy_test
    assert os.listdir(tmp_path / "run" / "pretrain" / "checkpoints_best")
    # a split the cohort lacks (this one has no gbm_calib), or "": no validation, said once
    capsys.readouterr()
    assert train_eval.validation_split(config, "finetune", cohort_dir) == ""
    assert "no subject in the validation split 'gbm_calib'" in capsys.readouterr().out
    config.finetune.validation_split = ""
    assert train_eval.validation_split(config, "finetune", cohort_dir) == ""
