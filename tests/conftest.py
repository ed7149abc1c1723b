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


COHORT_COLUMNS = ("t1map", "t2map", "pdmap", "t1w", "t2w", "t1flair", "t2flair", "swi",
                  "brain_mask", "labels")


def _write_nifti_cohort(root, rng, subjects, *, shape=(20, 24, 6)):
    """A cohort folder of random maps and contrasts inside an ellipsoid brain, written as
    NIfTI with its manifest. ``subjects``: ``(name, group, split, labels or None)`` in order;
    each draws T1, T2, PD and the five contrasts from ``rng`` in that order."""
    import nibabel as nib
    import numpy as np

    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    brain = (np.linalg.norm(grid / [0.8, 0.8, 1.3], axis=-1) < 1).astype(np.uint8)
    lines = ["subject,group,site,split," + ",".join(COHORT_COLUMNS)]
    for subject, group, split, labels in subjects:
        os.makedirs(root / subject)
        data = {"t1map": rng.uniform(700, 1600, shape), "t2map": rng.uniform(50, 120, shape),
                "pdmap": rng.uniform(0.6, 1.0, shape), "brain_mask": brain}
        for c in COHORT_COLUMNS[3:8]:
            data[c] = rng.uniform(0.1, 1.0, shape)
        if labels is not None:
            data["labels"] = labels
        cells = []
        for c in COHORT_COLUMNS:
            if c not in data:
                cells.append("")
                continue
            values = np.where(brain, data[c], 0) if c != "brain_mask" else data[c]
            dtype = np.uint8 if c in ("brain_mask", "labels") else np.float32
            nib.save(nib.Nifti1Image(values.astype(dtype), affine), root / subject / f"{c}.nii.gz")
            cells.append(f"{subject}/{c}.nii.gz")
        lines.append(f"{subject},{group},A,{split}," + ",".join(cells))
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def write_nifti_cohort():
    """`write_nifti_cohort(root, rng, subjects, shape=...)`: a small NIfTI cohort on disk."""
    return _write_nifti_cohort


@pytest.fixture
def numpy_mlp():
    """`numpy_mlp(params, x, prefix="")`: a per-voxel MLP recomputed in NumPy."""
    return _numpy_mlp
