"""Whole-volume synthesis (qsnet_jax.inference) and the synthesize command."""

import os

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from configs import default
from qsnet_jax import inference, models
from workflow import synthesize
from workflow.errors import UserError

INPUTS = ("t1map", "t2map", "pdmap")
TARGETS = ("t1w", "t2w", "t1flair", "t2flair", "swi")


def _context_by_loops(volume, z, k):
    """The contract, written out: input-major channels, slices z-k..z+k, edges replicated."""
    num_z = volume.shape[2]
    channels = []
    for c in range(volume.shape[3]):
        for offset in range(-k, k + 1):
            channels.append(volume[:, :, min(max(z + offset, 0), num_z - 1), c])
    return np.stack(channels, axis=-1)


def test_stack_context_follows_the_pipeline_convention():
    rng = np.random.default_rng(0)
    volume = rng.random((5, 6, 4, 3)).astype(np.float32)
    for k in (0, 1, 2):
        batch = inference.stack_context(volume, np.arange(4), k)
        assert batch.shape == (4, 5, 6, 3 * (2 * k + 1))
        for z in range(4):
            np.testing.assert_array_equal(batch[z], _context_by_loops(volume, z, k))


@pytest.mark.parametrize("batch_size,context", [(4, 0), (3, 1), (16, 2), (1, 1)])
def test_synthesize_volume_equals_slice_by_slice(batch_size, context):
    rng = np.random.default_rng(1)
    volume = rng.random((7, 9, 10, 2)).astype(np.float32)
    weights = jnp.asarray(rng.standard_normal((2 * (2 * context + 1), 3)), jnp.float32)
    seen_batch_sizes = set()

    def predict_fn(batch):
        seen_batch_sizes.add(batch.shape[0])
        # a deterministic, spatially mixing function of the stacked channels
        mixed = jnp.tanh(jnp.asarray(batch) @ weights)
        return mixed + jnp.roll(mixed, 1, axis=1) * 0.5

    out = inference.synthesize_volume(predict_fn, volume, batch_size=batch_size,
                                      context_slices=context)
    assert out.shape == (7, 9, 10, 3) and out.dtype == np.float32
    assert seen_batch_sizes == {batch_size}  # one compiled shape serves the whole volume
    for z in range(10):
        expected = np.asarray(predict_fn(_context_by_loops(volume, z, context)[None]))[0]
        np.testing.assert_allclose(out[:, :, z], expected, rtol=1e-6, atol=1e-6)


def test_synthesize_volume_rejects_bad_arguments():
    with pytest.raises(ValueError, match="volume"):
        inference.synthesize_volume(lambda b: b, np.zeros((4, 4, 4)), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        inference.synthesize_volume(lambda b: b, np.zeros((4, 4, 4, 1)), batch_size=0)
    with pytest.raises(ValueError, match="returned shape"):
        inference.synthesize_volume(lambda b: b[:1], np.zeros((4, 4, 4, 1)), batch_size=2)


def _tiny_model(context=0, shape=(20, 24)):
    config = default.get_config("tiny")
    config.data.context_slices = context
    module = models.build_generator(config.model, input_channels=INPUTS,
                                    target_channels=TARGETS, context_slices=context)
    x = jnp.zeros((1, *shape, len(INPUTS) * (2 * context + 1)), jnp.float32)
    variables = module.init(jax.random.PRNGKey(0), x, train=False)
    return config, module, variables


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_model(context=1)


def test_real_generator_synthesis_equals_per_slice_apply(tiny_model):
    _, module, variables = tiny_model
    rng = np.random.default_rng(2)
    volume = rng.random((20, 24, 5, 3)).astype(np.float32)
    predict_fn = inference.make_predict_fn(module, variables)
    out = inference.synthesize_volume(predict_fn, volume, batch_size=2, context_slices=1)
    assert out.shape == (20, 24, 5, 5)
    for z in range(5):
        single = module.apply(variables, _context_by_loops(volume, z, 1)[None], train=False)
        np.testing.assert_allclose(out[:, :, z], np.asarray(single.prediction[0]),
                                   rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the command


def _write(path, data, affine, dtype=np.float32):
    image = nib.Nifti1Image(np.asarray(data, dtype), affine)
    image.header["descrip"] = b"test"
    nib.save(image, path)
    return str(path)


def _subject_files(folder, *, shape=(20, 24, 6), seconds=False):
    """Quantitative maps in ms on a non-canonical (LPS) grid, and a brain mask."""
    rng = np.random.default_rng(3)
    os.makedirs(folder, exist_ok=True)
    affine = np.array([[-2.0, 0, 0, 30], [0, -2.0, 0, 40], [0, 0, 2.5, -10], [0, 0, 0, 1]])
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    brain = (np.linalg.norm(grid / [0.8, 0.8, 1.3], axis=-1) < 1).astype(np.uint8)
    t1 = np.where(brain, rng.uniform(700, 1600, shape), 0.0)
    t2 = np.where(brain, rng.uniform(50, 120, shape), 0.0)
    pd = np.where(brain, rng.uniform(0.6, 1.0, shape), 0.0)
    scale = 1e-3 if seconds else 1.0
    files = {"t1map": _write(folder / "t1.nii.gz", t1 * scale, affine),
             "t2map": _write(folder / "t2.nii.gz", t2 * scale, affine),
             "pdmap": _write(folder / "pd.nii.gz", pd, affine)}
    mask = _write(folder / "mask.nii.gz", brain, affine, np.uint8)
    return files, mask, affine


def test_synthesize_files_writes_the_prediction_on_the_input_grid(tmp_path, tiny_model):
    config, module, variables = tiny_model
    files, mask, affine = _subject_files(tmp_path / "in")
    out = tmp_path / "out"
    written = synthesize.synthesize_files(config, module, variables, files, str(out),
                                          mask_path=mask, batch_size=4)
    assert sorted(os.listdir(out)) == sorted(f"{c}.nii.gz" for c in TARGETS)
    # the in-memory prediction, computed independently in canonical orientation
    subject = synthesize.load_inputs(files, mask_path=mask, channels=INPUTS)
    volume = np.stack([subject.volumes[c] for c in INPUTS], -1)
    predict_fn = inference.make_predict_fn(module, variables)
    expected = inference.synthesize_volume(predict_fn, volume, batch_size=3, context_slices=1)
    expected = np.where(subject.brain_mask[..., None] > 0, np.clip(expected, 0, 1), 0)
    reference = nib.load(files["t1map"])
    for c, name in enumerate(TARGETS):
        image = nib.load(written[name])
        np.testing.assert_array_equal(image.affine, reference.affine)
        np.testing.assert_array_equal(image.affine, affine)
        assert image.shape == reference.shape and image.get_data_dtype() == np.float32
        # the file is in the input's (LPS) voxel order: canonicalize to compare
        data = np.asarray(nib.as_closest_canonical(image).dataobj, np.float32)
        np.testing.assert_allclose(data, expected[..., c], atol=1e-5)
        # and raw voxel (i, j, k) of the output is voxel (i, j, k) of the input grid
        raw = np.asarray(image.dataobj)
        np.testing.assert_allclose(raw[::-1, ::-1, :], expected[..., c], atol=1e-5)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def _fake_loader(model):
    def load(path, *, use_ema=True):
        return model
    return load


def _command(files, out, model, **options):
    """synthesize_command as experiments.synthesize calls it, with the model given."""
    return synthesize.synthesize_command("unused", files, str(out),
                                         model_loader=_fake_loader(model), **options)


def _user_error(files, out, model, **options) -> str:
    with pytest.raises(UserError) as error:
        _command(files, out, model, **options)
    return str(error.value)


@pytest.mark.parametrize("problem", ["missing", "shape", "nan", "seconds", "inputs",
                                     "corrupt", "affine"])
def test_bad_input_one_line_and_nothing_written(tmp_path, tiny_model, problem):
    files, mask, affine = _subject_files(tmp_path / "in", seconds=problem == "seconds")
    if problem == "missing":
        files["t2map"] = str(tmp_path / "in" / "nope.nii.gz")
    elif problem == "shape":
        files["pdmap"] = _write(tmp_path / "in" / "pd_small.nii.gz", np.ones((20, 24, 5)),
                                affine)
    elif problem == "nan":
        data = np.asarray(nib.load(files["t2map"]).dataobj, np.float32)
        data[10, 12, 3] = np.nan
        files["t2map"] = _write(tmp_path / "in" / "t2_nan.nii.gz", data, affine)
    elif problem == "inputs":
        del files["pdmap"]
    elif problem == "corrupt":
        broken = tmp_path / "in" / "broken.nii.gz"
        broken.write_bytes(open(files["pdmap"], "rb").read()[:200])
        files["pdmap"] = str(broken)
    elif problem == "affine":
        shifted = affine.copy()
        shifted[0, 3] += 4.0
        data = np.asarray(nib.load(files["pdmap"]).dataobj, np.float32)
        files["pdmap"] = _write(tmp_path / "in" / "pd_shifted.nii.gz", data, shifted)
    out = tmp_path / "out"
    err = _user_error(files, out, tiny_model, mask_path=mask)
    assert len(err.splitlines()) == 1
    expected_words = {"missing": "missing file", "shape": "shape mismatch", "nan": "NaN",
                      "seconds": "seconds", "inputs": "missing --pdmap",
                      "corrupt": "cannot read", "affine": "affine mismatch"}[problem]
    assert expected_words in err
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_convert_seconds_flag_and_existing_output(tmp_path, tiny_model):
    files, mask, _ = _subject_files(tmp_path / "in", seconds=True)
    out = tmp_path / "new" / "parents" / "out"  # missing parents are created
    written = _command(files, out, tiny_model, mask_path=mask, convert_seconds=True)
    assert sorted(written) == sorted(TARGETS)
    ms_files, _, _ = _subject_files(tmp_path / "ms")
    ms_written = synthesize.synthesize_files(*tiny_model, ms_files, str(tmp_path / "ms_out"),
                                             mask_path=mask)
    for name in TARGETS:  # seconds x 1000 gives the same synthesis as milliseconds
        np.testing.assert_allclose(np.asarray(nib.load(written[name]).dataobj),
                                   np.asarray(nib.load(ms_written[name]).dataobj), atol=1e-5)
    err = _user_error(files, out, tiny_model, mask_path=mask, convert_seconds=True)
    assert "--overwrite" in err  # --out now exists and is not empty
    assert [p for p in os.listdir(out.parent) if p.startswith(".")] == []
