"""The entry point's contract: bad input gives one clear line and exit code 2."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
    return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["--config.no_such_key=1"], "unknown config key 'config.no_such_key'"),
    (["--config.model.no_such=3"], "unknown config key 'config.model.no_such'"),
    (["--config.model.depth=abc"], "config.model.depth=abc"),
])
def test_bad_override_is_one_line_exit_2(tmp_path, args, expected):
    result = run_main("--config=configs/default.py:tiny", f"--workdir={tmp_path / 'w'}", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "w").exists()  # nothing written for a rejected command


def test_missing_config_file(tmp_path):
    result = run_main("--config=configs/no_such_file.py", f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == "main.py: error: config file not found: configs/no_such_file.py"


def test_unknown_size_is_one_line(tmp_path):
    result = run_main("--config=configs/default.py:huge", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown config size 'huge'; known: tiny, quick, paper" in \
        lines[0], result.stderr
    assert not (tmp_path / "w").exists()


def test_missing_workdir_parent(tmp_path):
    result = run_main("--config=configs/default.py:tiny", f"--workdir={tmp_path}/missing/run")
    assert result.returncode == 2
    assert f"the parent of --workdir does not exist: {tmp_path}/missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def run_in(cwd, module, *args):
    """An entry point as a user types it in another folder (relative paths are theirs)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_finetune_without_its_pretrain_run_says_what_to_run_first(tmp_path):
    # configs/finetune.py as typed, no --workdir: it starts from runs/pretrain_tiny, which is
    # missing; the check comes before the cohort is built (the cache stays empty)
    cache = tmp_path / "cache"
    result = run_in(tmp_path, "experiments.main", f"--config={ROOT}/configs/finetune.py:tiny",
                    f"--config.data.phantom_cache_dir={cache}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "config.init_from=runs/pretrain_tiny does not exist" in lines[0]
    assert "run configs/pretrain.py first" in lines[0]
    assert not cache.exists() and not (tmp_path / "runs").exists()


def test_physics_is_fitted_into_the_default_workdir(tmp_path, tiny_cohort):
    # --config.model.name=physics fits the scales in closed form (no training steps) into
    # runs/<config name>, as an ordinary checkpoint that experiments.evaluate loads
    result = run_in(tmp_path, "experiments.main", f"--config={ROOT}/configs/default.py:tiny",
                    "--config.model.name=physics", "--config.discriminator.name=none",
                    f"--config.data.cohort_dir={tiny_cohort}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "physics baseline: scales fitted on healthy_train, gbm_train" in result.stdout
    assert "step 1/" not in result.stdout  # no gradient step was taken
    workdir = tmp_path / "runs" / "default_tiny"
    report = workdir / "finetune" / "eval" / "gbm_test" / "report.md"
    assert report.is_file()
    assert f"  report   {report}" in result.stdout.splitlines()  # the run says where it is
    assert not (workdir / "pretrain").exists()
    result = run_in(tmp_path, "experiments.evaluate", f"--workdir={workdir}",
                    "--split=healthy_test")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Model `physics`, split `healthy_test`" in result.stdout
    # --uncertainty scores another interval method beside the run's own: the run's intervals
    # and report stay byte for byte; a constant sigma gives intervals of one width, 2 q
    own = {path: path.read_bytes() for path in (
        workdir / "finetune" / "uncertainty" / "calibration.json",
        report, report.parent / "metrics.json")}
    result = run_in(tmp_path, "experiments.evaluate", f"--workdir={workdir}",
                    "--split=gbm_test", "--uncertainty=constant")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(path.read_bytes() == data for path, data in own.items())
    fitted = json.loads((workdir / "finetune" / "uncertainty-constant" /
                         "calibration.json").read_text())
    scored = json.loads((workdir / "finetune" / "eval" / "gbm_test-uncertainty-constant" /
                         "metrics.json").read_text())
    assert fitted["method"] == "constant" and scored["uncertainty"]["method"] == "constant"
    for per_contrast in scored["uncertainty"]["per_subject"].values():
        for name, row in per_contrast.items():
            assert row["width"] == pytest.approx(200 * fitted["quantiles"][name], rel=1e-5)
    result = run_in(tmp_path, "experiments.evaluate", f"--workdir={workdir}",
                    "--uncertainty=ensemble")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'ensemble'" in result.stderr
