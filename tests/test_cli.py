"""The entry point's contract: bad input gives one clear line and exit code 2."""

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
    result = run_main("--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "w").exists()  # nothing written for a rejected command


def test_missing_config_file(tmp_path):
    result = run_main("--config=configs/no_such_file.py", f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == "main.py: error: config file not found: configs/no_such_file.py"


def test_missing_workdir_parent(tmp_path):
    result = run_main("--config=configs/smoke.py", f"--workdir={tmp_path}/missing/run")
    assert result.returncode == 2
    assert f"the parent of --workdir does not exist: {tmp_path}/missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
