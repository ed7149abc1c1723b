"""The phantom's realism report (data_pipelines.phantom.realism): its scores against cases
with a known answer, and its command line."""

import subprocess
import sys

import numpy as np
import pytest

from data_pipelines.phantom import realism
from qsnet_jax.physics import signal

ROOT = __file__.rsplit("/tests/", 1)[0]


def _subject(rng, shape=(24, 20, 6)):
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 1:-1] = True
    t1 = rng.uniform(600.0, 4000.0, shape)
    t2 = rng.uniform(40.0, 300.0, shape)
    pd = rng.uniform(0.6, 1.0, shape)
    protocol = signal.site_protocols("A")["t2w"]
    # T2w exactly as the textbook spin echo (NumPy, float64): the baseline must reproduce it
    spin_echo = pd * (1 - np.exp(-protocol.tr_ms / t1)) * np.exp(-protocol.te_ms / t2)
    # the rest: a smooth function of T1 and PD that no signal equation makes
    other = pd / (1 + np.exp(-(t1 - 1500.0) / 300.0))
    subject = {"subject": "s", "split": "x", "site": "A", "mask": mask,
               "pure": rng.random(shape) < 0.5, "t1map": t1, "t2map": t2, "pdmap": pd,
               "t2w": spin_echo}
    for name in ("t1w", "t1flair", "t2flair", "swi"):
        subject[name] = other
    return subject


def test_baseline_is_exact_where_the_truth_is_its_own_equation_and_voxelwise_wins_elsewhere():
    rng = np.random.default_rng(0)
    subject = _subject(rng)
    scores = realism.score([subject], [subject], signal.site_protocols)
    for key in ("pure", "mixed", "all"):
        assert scores["t2w"]["baseline"][key] < 1e-4, scores["t2w"]
    # T1w truth is no spin echo: the baseline is far off, a regression of the maps is close
    assert scores["t1w"]["baseline"]["all"] > 0.05
    assert scores["t1w"]["voxelwise_best"]["all"] < 0.5 * scores["t1w"]["baseline"]["all"]
    assert scores["t1w"]["voxelwise_best"]["method"] in ("polynomial", "binned_lookup")


def test_nrmse_is_rms_error_over_rms_target():
    target = np.array([3.0, 4.0, 0.0, 5.0])
    prediction = np.array([3.0, 2.0, 1.0, 5.0])
    select = np.array([True, True, True, False])
    # rms error sqrt((0 + 4 + 1) / 3), rms target sqrt((9 + 16 + 0) / 3)
    assert realism._nrmse(prediction, target, select) == pytest.approx(np.sqrt(5 / 25))
    assert realism._nrmse(prediction, target, np.zeros(4, bool)) is None


def test_cli_unknown_preset_is_one_line_exit_2():
    done = subprocess.run([sys.executable, "-m", "data_pipelines.phantom", "realism",
                           "--preset", "nope"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "nope" in done.stderr
    assert done.stdout == ""  # no half-written report
