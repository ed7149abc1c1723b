"""TensorFlow's start-up notices are dropped on its first import through the project
(qsnet_jax.quiet_tensorflow), and nothing else written to stderr is lost."""

import os
import subprocess
import sys

import pytest

from qsnet_jax import quiet_tensorflow


def _stderr_of(code: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return done.stderr


def test_the_first_tensorflow_import_through_the_project_prints_no_notices():
    plain = _stderr_of("import tensorflow")
    if not quiet_tensorflow.NOTICES.search(plain):
        pytest.skip("this TensorFlow prints none of the notices at import")
    quiet = _stderr_of("import qsnet_jax, sys, importlib.util; "
                       "assert importlib.util.find_spec('tensorflow') is not None; "
                       "from clu import metric_writers; "
                       "import tensorflow as tf; assert tf.constant(2).numpy() == 2; "
                       "assert 'tensorflow' in sys.modules; print('after', file=sys.stderr)")
    assert quiet == "after\n"


def test_captured_lines_other_than_the_dropped_are_written_back_in_order(capfd):
    capfd.readouterr()
    with quiet_tensorflow.stderr_without(lambda line: "drop me" in line):
        os.write(2, b"kept 1\nplease drop me\nkept 2\n")
        os.write(2, b"drop me too\nkept 3 (no newline)")
    out, err = capfd.readouterr()
    assert out == "" and err == "kept 1\nkept 2\nkept 3 (no newline)"


def test_an_error_inside_the_block_restores_stderr_and_keeps_its_lines(capfd):
    capfd.readouterr()
    with pytest.raises(RuntimeError), quiet_tensorflow.stderr_without(lambda line: False):
        os.write(2, b"before the error\n")
        raise RuntimeError
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before the error\nafter\n"
