"""qsnet_jax.io: atomic files and staged folders leave nothing half-written."""

import json
import os

import pytest

from qsnet_jax import io


def test_write_json_creates_parents_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "b" / "x.json"
    io.write_json(str(path), {"v": 1.5})
    assert json.loads(path.read_text()) == {"v": 1.5}
    assert os.listdir(path.parent) == ["x.json"]


def test_staged_file_keeps_old_content_on_failure(tmp_path):
    path = tmp_path / "img.nii.gz"
    path.write_text("old")
    with pytest.raises(RuntimeError), io.staged_file(str(path)) as tmp:
        assert tmp.endswith(".nii.gz")
        open(tmp, "w").write("half")
        raise RuntimeError("writer died")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["img.nii.gz"]


def test_staged_dir_error_replace_keep(tmp_path):
    out = tmp_path / "out"
    with io.staged_dir(str(out)) as tmp:
        open(os.path.join(tmp, "f"), "w").write("1")
    assert (out / "f").read_text() == "1"
    with pytest.raises(FileExistsError), io.staged_dir(str(out)):
        pass
    with io.staged_dir(str(out), if_exists="keep") as tmp:
        open(os.path.join(tmp, "f"), "w").write("2")
    assert (out / "f").read_text() == "1"
    with io.staged_dir(str(out), if_exists="replace") as tmp:
        open(os.path.join(tmp, "g"), "w").write("3")
    assert sorted(os.listdir(out)) == ["g"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_staged_dir_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyError), io.staged_dir(str(out)) as tmp:
        open(os.path.join(tmp, "f"), "w").write("1")
        raise KeyError("x")
    assert os.listdir(tmp_path) == []
