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


def _numpy_mlp(params: dict, x, prefix: str = ""):
    """The pre-activation output of a per-voxel MLP (`{prefix}hidden_i`, `{prefix}head`
    1x1 layers with silu between) on every voxel of `x` [..., C], in float64 NumPy."""
    import numpy as np

    h = np.asarray(x, np.float64)
    hidden = sorted((k for k in params if k.startswith(f"{prefix}hidden_")),
                    key=lambda k: int(k.rsplit("_", 1)[1]))
    for name in hidden:
        h = h @ np.asarray(params[name]["kernel"], np.float64)[0, 0] + np.asarray(
            params[name]["bias"], np.float64)
        h = h / (1.0 + np.exp(-h))  # silu
    head = params[f"{prefix}head"]
    return h @ np.asarray(head["kernel"], np.float64)[0, 0] + np.asarray(head["bias"],
                                                                         np.float64)


@pytest.fixture
def numpy_mlp():
    """`numpy_mlp(params, x, prefix="")`: a per-voxel MLP recomputed in NumPy."""
    return _numpy_mlp
