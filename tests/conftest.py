"""Test set-up: quiet TensorFlow, keep it off GPUs, small thread pools on 2 cores."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Path of the `tiny` phantom cohort (seed 0), built once per test session."""
    from data_pipelines.phantom import ensure_cohort

    return ensure_cohort("tiny", 0, str(tmp_path_factory.mktemp("phantom_cache")))
