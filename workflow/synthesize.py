"""Synthesize weighted contrasts from quantitative maps with a trained generator: volumes in,
volumes out, and NIfTI files on the input's grid.

Inputs are validated and normalized exactly as for training (data_pipelines.cohort; the run's
config says which inputs and how many context slices). The outputs are the normalized
synthesized intensities (the scale the model was trained on: 99.5th brain percentile = 1),
clipped to [0, 1], zero outside the brain mask. Output folders are built next to their final
place and renamed at the end (qsnet_jax.io.staged_dir): a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import nibabel as nib
import numpy as np

from data_pipelines import cohort
from qsnet_jax import inference, io, train, volume_rescale
from qsnet_jax.evaluation import contrast_title
from qsnet_jax.physics.channels import stack_planes
from workflow import cohorts
from workflow.errors import UserError, one_line

FILE_SUFFIX = ".nii.gz"


# ------------------------------------------------------------------ the model


def load_model(path: str, *, use_ema: bool = True):
    """``(config, module, variables)`` of a work dir, stage dir or checkpoint (every model,
    the physics baseline included, is an ordinary checkpoint); UserError if there is none."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such work dir or checkpoint")
    try:
        return train.load_generator(path, use_ema=use_ema)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise UserError(f"{path}: cannot load a generator: "
                        f"{one_line(error) or type(error).__name__}") from None


def model_channels(config) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """(input channels, target channels, context slices) the model was trained with."""
    return (tuple(config.data.input_channels), tuple(config.data.target_channels),
            int(config.data.context_slices))


# ------------------------------------------------------------------ volumes


def load_inputs(input_paths: Mapping[str, str], *, mask_path: str | None = None,
                channels: Sequence[str], convert_seconds: bool = False,
                resample: bool = False, subject: str = "input"):
    """Validate and normalize the input files of one subject (data_pipelines.cohort).

    ``input_paths``: channel name -> NIfTI path. Exactly ``channels`` must be given.
    Returns a ``data_pipelines.cohort.SubjectVolumes``; raises UserError.
    """
    given = [name for name, path in input_paths.items() if path]
    missing = [name for name in channels if name not in given]
    extra = [name for name in given if name not in channels]
    if missing or extra:
        wants = ", ".join(f"--{c}" for c in channels)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"--{c}" for c in missing))
        if extra:
            parts.append("unexpected " + ", ".join(f"--{c}" for c in extra))
        raise UserError(f"the model takes {len(channels)} input(s) ({wants}): "
                        + "; ".join(parts))
    files = {name: os.path.abspath(input_paths[name]) for name in channels}
    if mask_path:
        files[cohort.MASK_COLUMN] = os.path.abspath(mask_path)
    record = cohort.SubjectRecord(subject=subject, group="", site="", split="", files=files,
                                  row=0)
    return cohorts.load_record("", record, channels=channels, convert_seconds=convert_seconds,
                               resample=resample)


def stack_inputs(subject_volumes, channels: Sequence[str]) -> np.ndarray:
    """[X, Y, Z, planes]: one plane per channel, 2k for the MRF subspace, in `channels`
    order (the layout the input pipeline trains on)."""
    return stack_planes(subject_volumes.volumes, channels)


def synthesize_subject(predict_fn: Callable, subject_volumes, *, input_channels,
                       context_slices: int, batch_size: int, levels=None) -> np.ndarray:
    """Normalized prediction ``[X, Y, Z, C_out]`` (canonical RAS), clipped to [0, 1] and zero
    outside the brain mask; each contrast rescaled per volume to ``levels``
    (qsnet_jax.volume_rescale, fitted by workflow.rescale) when they are given."""
    volume = stack_inputs(subject_volumes, input_channels)
    prediction = inference.synthesize_volume(predict_fn, volume, batch_size=batch_size,
                                             context_slices=context_slices)
    prediction = np.clip(prediction, 0.0, 1.0)
    prediction = np.where(subject_volumes.brain_mask[..., None] > 0, prediction, 0.0)
    return volume_rescale.rescale_contrasts(prediction, subject_volumes.brain_mask, levels)


def progress(done: int, total: int, started: float, label: str, stream=sys.stderr):
    elapsed = time.time() - started
    eta = elapsed / done * (total - done) if done else float("nan")
    width = 24
    filled = int(round(width * done / total)) if total else width
    bar = "#" * filled + "-" * (width - filled)
    print(f"[{bar}] {done}/{total} {label}  elapsed {elapsed:.1f} s  ETA {eta:.1f} s",
          file=stream, flush=True)


# ------------------------------------------------------------------ NIfTI files


def to_reference_orientation(canonical_volume, reference_path: str):
    """``(data, image)``: a canonical-RAS volume put back into the reference file's voxel
    order, and the reference image (its affine and header describe the result)."""
    reference = nib.load(reference_path)
    canonical = nib.as_closest_canonical(reference)
    transform = nib.orientations.ornt_transform(nib.io_orientation(canonical.affine),
                                                nib.io_orientation(reference.affine))
    data = nib.orientations.apply_orientation(np.asarray(canonical_volume), transform)
    if data.shape[:3] != tuple(reference.shape[:3]):
        raise ValueError(f"volume {data.shape} does not fit the reference {reference.shape}")
    return np.ascontiguousarray(data, dtype=np.float32), reference


def write_contrasts(prediction, target_channels: Sequence[str], reference_path: str,
                    out_dir: str) -> dict[str, str]:
    """One NIfTI per contrast in ``out_dir`` (a staging folder), affine and header of the
    reference file. Returns ``{contrast: path}``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for c, name in enumerate(target_channels):
        data, reference = to_reference_orientation(prediction[..., c], reference_path)
        header = reference.header.copy()
        header.set_data_dtype(np.float32)
        image = nib.Nifti1Image(data, reference.affine, header)
        image.header.set_slope_inter(np.nan, np.nan)  # float data: no scaling
        image.header["cal_min"], image.header["cal_max"] = 0.0, 1.0
        image.header["descrip"] = f"synthesized {contrast_title(name)}, a.u. (normalized)"
        path = os.path.join(out_dir, name + FILE_SUFFIX)
        nib.save(image, path)
        paths[name] = path
    return paths


UNCERTAINTY_SUFFIX = "_uncertainty"


def write_uncertainty(half_width, target_channels: Sequence[str], reference_path: str,
                      out_dir: str, *, level: float) -> dict[str, str]:
    """``<contrast>_uncertainty.nii.gz`` per contrast: the half-width of the calibrated
    ``level`` interval around the synthesized value, in the same normalized units."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for c, name in enumerate(target_channels):
        data, reference = to_reference_orientation(half_width[..., c], reference_path)
        header = reference.header.copy()
        header.set_data_dtype(np.float32)
        image = nib.Nifti1Image(data, reference.affine, header)
        image.header.set_slope_inter(np.nan, np.nan)
        image.header["cal_min"], image.header["cal_max"] = 0.0, float(np.max(data))
        # descrip holds 80 bytes: the level and the unit
        image.header["descrip"] = f"{contrast_title(name)} {level:.0%} interval half-width, a.u."
        path = os.path.join(out_dir, name + UNCERTAINTY_SUFFIX + FILE_SUFFIX)
        nib.save(image, path)
        paths[name + UNCERTAINTY_SUFFIX] = path
    return paths


def _write_subject(prediction, subject, volume, predict_fn, unc_model, *, target_channels,
                   reference_path, out_dir, batch_size, context):
    write_contrasts(prediction, target_channels, reference_path, out_dir)
    if unc_model is not None:
        half = unc_model.half_width(predict_fn, volume, prediction, subject.brain_mask,
                                    batch_size=batch_size, context_slices=context)
        write_uncertainty(half, target_channels, reference_path, out_dir,
                          level=unc_model.level)


def _output_names(target_channels, unc_model) -> list[str]:
    names = list(target_channels)
    if unc_model is not None:
        names += [name + UNCERTAINTY_SUFFIX for name in target_channels]
    return names


def check_output(out_dir: str, *, overwrite: bool) -> str:
    """The output folder, refused (UserError) when it is a file, or not empty without
    `overwrite`. Missing parents are fine: they are created."""
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a folder")
    if not overwrite and io.is_non_empty(out_dir):
        raise UserError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")
    return out_dir


def staged_output(out_dir: str, *, overwrite: bool):
    """``io.staged_dir`` for an output folder, checked before the block starts."""
    return io.staged_dir(check_output(out_dir, overwrite=overwrite),
                         if_exists="replace" if overwrite else "error")


# ------------------------------------------------------------------ one subject, a cohort


def synthesize_files(config, module, variables, input_paths: Mapping[str, str],
                     out_dir: str, *, mask_path: str | None = None,
                     convert_seconds: bool = False, resample: bool = False,
                     batch_size: int | None = None, overwrite: bool = False,
                     predict_fn: Callable | None = None,
                     uncertainty_model=None, levels=None) -> dict[str, str]:
    """Synthesize one subject from files into ``out_dir`` (missing parents are created);
    returns ``{contrast: path}`` (and ``{contrast}_uncertainty: path`` with an
    ``uncertainty_model``, a ``workflow.uncertainty.UncertaintyModel``); ``levels``: the
    stage's rescaling levels (workflow.rescale), None for none.

    ``input_paths``: channel name -> NIfTI path; exactly the model's input channels. The
    reference grid (affine, header, orientation of the outputs) is the first input file.
    Raises UserError for bad input; on any error ``out_dir`` is left as it was.
    """
    input_channels, target_channels, context = model_channels(config)
    subject = load_inputs(input_paths, mask_path=mask_path, channels=input_channels,
                          convert_seconds=convert_seconds, resample=resample)
    batch_size = int(batch_size or config.eval.batch_size)
    with staged_output(out_dir, overwrite=overwrite) as staging:
        predict_fn = predict_fn or inference.make_predict_fn(module, variables)
        prediction = synthesize_subject(
            predict_fn, subject, input_channels=input_channels, context_slices=context,
            batch_size=batch_size, levels=levels)
        _write_subject(prediction, subject, stack_inputs(subject, input_channels), predict_fn,
                       uncertainty_model, target_channels=target_channels,
                       reference_path=input_paths[input_channels[0]], out_dir=staging,
                       batch_size=batch_size, context=context)
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    return {name: os.path.join(out_dir, name + FILE_SUFFIX)
            for name in _output_names(target_channels, uncertainty_model)}


def manifest_records(manifest_path: str, subjects: Sequence[str] | None = None):
    """``(root, records)`` of a cohort manifest, optionally only ``subjects``."""
    root = os.path.dirname(os.path.abspath(manifest_path))
    if os.path.basename(manifest_path) != cohort.MANIFEST or not os.path.isfile(manifest_path):
        raise UserError(f"{manifest_path}: not a cohort {cohort.MANIFEST}")
    records = cohorts.read_records(root)
    if subjects:
        unknown = sorted(set(subjects) - {r.subject for r in records})
        if unknown:
            raise UserError(f"{manifest_path}: no subject(s) {unknown}")
        records = [r for r in records if r.subject in set(subjects)]
    if not records:
        raise UserError(f"{manifest_path}: no subjects")
    return root, records


def synthesize_manifest(config, module, variables, manifest_path: str, out_dir: str, *,
                        convert_seconds: bool = False, resample: bool = False,
                        batch_size: int | None = None, overwrite: bool = False,
                        subjects: Sequence[str] | None = None,
                        predict_fn: Callable | None = None, uncertainty_model=None,
                        levels=None, stream=sys.stderr) -> dict[str, dict[str, str]]:
    """Synthesize every subject of a cohort manifest into ``out_dir/<subject>/``.

    Every selected subject's files are checked first (``cohort.check_cohort``); a problem
    stops the run with a UserError before anything is written.
    Returns ``{subject: {contrast: path}}``.
    """
    root, records = manifest_records(manifest_path, subjects)
    input_channels, target_channels, context = model_channels(config)
    selected = {r.subject for r in records}
    problems = [p for p in cohort.check_cohort(root, input_channels,
                                               convert_seconds=convert_seconds,
                                               resample=resample)
                if p.subject in selected or p.subject == "-"]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}")
    started = time.time()
    with staged_output(out_dir, overwrite=overwrite) as staging:
        predict_fn = predict_fn or inference.make_predict_fn(module, variables)
        for i, record in enumerate(records):
            subject = cohorts.load_record(root, record, channels=input_channels,
                                          convert_seconds=convert_seconds, resample=resample)
            size = int(batch_size or config.eval.batch_size)
            prediction = synthesize_subject(
                predict_fn, subject, input_channels=input_channels, context_slices=context,
                batch_size=size, levels=levels)
            _write_subject(prediction, subject, stack_inputs(subject, input_channels),
                           predict_fn, uncertainty_model, target_channels=target_channels,
                           reference_path=record.path(root, input_channels[0]),
                           out_dir=os.path.join(staging, record.subject), batch_size=size,
                           context=context)
            progress(i + 1, len(records), started, record.subject, stream=stream)
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    names = _output_names(target_channels, uncertainty_model)
    return {r.subject: {name: os.path.join(out_dir, r.subject, name + FILE_SUFFIX)
                        for name in names} for r in records}


def synthesize_command(model_path: str, input_paths: Mapping[str, str], out_dir: str, *,
                       mask_path: str = "", manifest: str = "", subjects: Sequence[str] = (),
                       convert_seconds: bool = False, resample: bool = False,
                       batch_size: int = 0, use_ema: bool = True, overwrite: bool = False,
                       uncertainty_loader: Callable | None = None,
                       rescale_loader: Callable | None = None,
                       model_loader: Callable = load_model) -> dict:
    """What `experiments.synthesize` does: check the arguments (before loading anything),
    load the model, synthesize one subject's files or a whole manifest. With
    an ``uncertainty_loader`` (workflow.uncertainty.stage_uncertainty) and a stage whose
    uncertainty is fitted (evaluate fits it), each contrast gets its
    ``<contrast>_uncertainty.nii.gz``; with a ``rescale_loader``
    (workflow.rescale.stage_rescale) the stage's rescaling levels apply."""
    given = {name: path for name, path in input_paths.items() if path}
    if manifest and (given or mask_path):
        raise UserError("--manifest synthesizes a cohort; do not also pass input files")
    if not manifest and not given:
        raise UserError("give the input maps (--t1map, --t2map, ...) or --manifest")
    if batch_size < 0:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    for path in list(given.values()) + ([mask_path] if mask_path else []):
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing file")
    if manifest:
        manifest_records(manifest, subjects)
    check_output(out_dir, overwrite=overwrite)
    config, module, variables = model_loader(model_path, use_ema=use_ema)
    options = {"convert_seconds": convert_seconds, "resample": resample,
               "batch_size": batch_size or None, "overwrite": overwrite,
               "uncertainty_model": uncertainty_loader(model_path) if uncertainty_loader
               else None,
               "levels": rescale_loader(model_path, config) if rescale_loader else None}
    if manifest:
        return synthesize_manifest(config, module, variables, manifest, out_dir,
                                   subjects=subjects, **options)
    started = time.time()
    paths = synthesize_files(config, module, variables, given, out_dir,
                             mask_path=mask_path or None, **options)
    progress(1, 1, started, "subject")
    return paths
