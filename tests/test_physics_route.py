"""The physics baseline is an ordinary model: workflow.train_eval.run fits its per-contrast
scales in closed form and saves them as a generator checkpoint that load_generator,
evaluation and synthesis read like any other (one route, one model)."""

import json
import os

import numpy as np
import pytest

from configs import physics
from data_pipelines import input_pipeline
from qsnet_jax.physics import channels, signal
from qsnet_jax.train import load_generator
from workflow import train_eval


def reference_scales(config, cohort_dir, splits):
    """Least squares s_c = sum(m r t) / sum(m r^2) over every brain voxel of every slice of
    the splits, with r the site protocol's signal equation evaluated here in NumPy."""
    protocols = signal.site_protocols(config.model.physics_site)
    names = list(config.data.input_channels)
    numerator = denominator = 0.0
    for split in splits:
        for batch in input_pipeline.make_eval_iterator(cohort_dir, split, config.data,
                                                       batch_size=16):
            x = np.asarray(batch["inputs"], np.float64)
            t1 = np.asarray(channels.TIMING_SCALES["t1map"].inverse(x[..., names.index("t1map")]))
            t2 = np.asarray(channels.TIMING_SCALES["t2map"].inverse(x[..., names.index("t2map")]))
            pd = x[..., names.index("pdmap")]
            raw = np.stack([np.asarray(signal.synthesize(protocols[c], pd, t1, t2), np.float64)
                            for c in config.data.target_channels], -1)
            raw = np.where(x[..., names.index("t1map"), None] > 0, raw, 0.0)
            mask = (np.asarray(batch["brain_mask"]) > 0) & \
                (np.asarray(batch["valid"]) > 0)[:, None, None, None]
            target = np.asarray(batch["targets"], np.float64)
            numerator = numerator + (mask * raw * target).sum(axis=(0, 1, 2))
            denominator = denominator + (mask * raw * raw).sum(axis=(0, 1, 2))
    return numerator / denominator


@pytest.mark.slow
def test_physics_fit_is_an_ordinary_checkpoint(tmp_path, tiny_cohort, capsys):
    config = physics.get_config("tiny")
    config.data.cohort_dir = str(tiny_cohort)
    workdir = tmp_path / "physics"
    assert train_eval.run(config, str(workdir)) == []  # nothing trained by gradient
    stage_dir = workdir / "finetune"
    assert not (workdir / "pretrain").exists() and not (stage_dir / "tensorboard").exists()

    loaded_config, module, variables = load_generator(str(workdir))
    assert loaded_config.model.name == "physics"
    expected = reference_scales(config, str(tiny_cohort), ["healthy_train", "gbm_train"])
    np.testing.assert_allclose(np.asarray(variables["params"]["contrast_scale"]), expected,
                               rtol=1e-4)
    assert not np.allclose(expected, 1.0)  # the fit moved the scales

    # evaluated after the fit like a trained stage, and skipped when run again
    with open(stage_dir / "eval" / "gbm_test" / "metrics.json") as f:
        assert json.load(f)["model"] == "physics"
    capsys.readouterr()
    assert train_eval.run(config, str(workdir)) == []
    assert "already fitted" in capsys.readouterr().out
    assert sorted(os.listdir(stage_dir / "checkpoints")) == ["0"]

    # a fit interrupted after its checkpoint (no done.json) is redone over it
    os.remove(stage_dir / "done.json")
    assert train_eval.run(config, str(workdir)) == []
    _, _, refitted = load_generator(str(workdir))
    np.testing.assert_allclose(np.asarray(refitted["params"]["contrast_scale"]), expected,
                               rtol=1e-4)
