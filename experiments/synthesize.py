"""Synthesize weighted contrasts from quantitative maps with a trained generator.

One subject (one NIfTI per synthesized contrast, e.g. OUT/t1w.nii.gz, on the grid, affine
and header of the t1map file, in that file's orientation):

  python -m experiments.synthesize --workdir runs/default \
      --t1map T1.nii.gz --t2map T2.nii.gz --pdmap PD.nii.gz [--mask MASK.nii.gz] --out OUT

A whole cohort (OUT/<subject>/<contrast>.nii.gz for every manifest row):

  python -m experiments.synthesize --checkpoint runs/default/finetune \
      --manifest COHORT/manifest.csv --out OUT

Inputs are validated and normalized exactly as for training (data_pipelines.cohort; the
run's config says which inputs, how many context slices). The outputs are the normalized
synthesized intensities (the scale the model was trained on: 99.5th brain percentile = 1),
clipped to [0, 1], zero outside the brain mask. Bad input gives one line and exit code 2;
outputs are written into a temporary folder next to --out and renamed at the end, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from experiments import cli

FILE_SUFFIX = ".nii.gz"


# ------------------------------------------------------------------ the model


def load_model(path: str, *, use_ema: bool = True):
    """``(config, module, variables)`` of a work dir, stage dir or checkpoint; UserError if
    there is none."""
    if not os.path.exists(path):
        raise cli.UserError(f"{path}: no such work dir or checkpoint")
    from qsnet_jax import train  # noqa: PLC0415 (orbax and the models load only when needed)

    try:
        return train.load_generator(path, use_ema=use_ema)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise cli.UserError(f"{path}: cannot load a generator: "
                            f"{_one_line(str(error)) or type(error).__name__}") from None


def model_channels(config) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """(input channels, target channels, context slices) the model was trained with."""
    return (tuple(config.data.input_channels), tuple(config.data.target_channels),
            int(config.data.context_slices))


# ------------------------------------------------------------------ inputs


def _one_line(text: str) -> str:
    """A multi-problem message (data_pipelines.cohort lists one per line) on one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines)


def load_inputs(input_paths: Mapping[str, str], *, mask_path: str | None = None,
                channels: Sequence[str], convert_seconds: bool = False,
                resample: bool = False, subject: str = "input"):
    """Validate and normalize the input files of one subject (data_pipelines.cohort).

    ``input_paths``: channel name -> NIfTI path. Exactly ``channels`` must be given.
    Returns a ``data_pipelines.cohort.SubjectVolumes``; raises UserError.
    """
    from data_pipelines import cohort  # noqa: PLC0415

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
        raise cli.UserError(f"the model takes {len(channels)} input(s) ({wants}): "
                            + "; ".join(parts))
    files = {name: os.path.abspath(input_paths[name]) for name in channels}
    if mask_path:
        files[cohort.MASK_COLUMN] = os.path.abspath(mask_path)
    record = cohort.SubjectRecord(subject=subject, group="", site="", split="", files=files,
                                  row=0)
    return load_record("", record, channels=channels, convert_seconds=convert_seconds,
                       resample=resample)


def load_record(root, record, *, channels: Sequence[str], convert_seconds: bool = False,
                resample: bool = False):
    """``cohort.load_subject`` with its errors as one-line UserErrors."""
    from data_pipelines import cohort  # noqa: PLC0415

    try:
        return cohort.load_subject(root, record, channels, convert_seconds=convert_seconds,
                                   resample=resample)
    except cohort.CohortError as error:
        raise cli.UserError(_one_line(str(error))) from None


def stack_inputs(subject_volumes, channels: Sequence[str]) -> np.ndarray:
    from qsnet_jax.physics.channels import stack_planes  # noqa: PLC0415

    return stack_planes(subject_volumes.volumes, channels)


# ------------------------------------------------------------------ synthesis


def synthesize_subject(predict_fn: Callable, subject_volumes, *, input_channels,
                       context_slices: int, batch_size: int) -> np.ndarray:
    """Normalized prediction ``[X, Y, Z, C_out]`` (canonical RAS), clipped to [0, 1] and zero
    outside the brain mask."""
    from qsnet_jax import inference  # noqa: PLC0415

    volume = stack_inputs(subject_volumes, input_channels)
    prediction = inference.synthesize_volume(predict_fn, volume, batch_size=batch_size,
                                             context_slices=context_slices)
    prediction = np.clip(prediction, 0.0, 1.0)
    return np.where(subject_volumes.brain_mask[..., None] > 0, prediction, 0.0).astype(
        np.float32)


def to_reference_orientation(canonical_volume, reference_path: str):
    """``(data, image)``: a canonical-RAS volume put back into the reference file's voxel
    order, and the reference image (its affine and header describe the result)."""
    import nibabel as nib  # noqa: PLC0415

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
    """One NIfTI per contrast in ``out_dir`` (which must exist), affine and header of the
    reference file. Returns ``{contrast: path}``."""
    import nibabel as nib  # noqa: PLC0415

    from qsnet_jax.evaluation import contrast_title  # noqa: PLC0415

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


# ------------------------------------------------------------------ atomic output folders


def make_staging_dir(out_dir: str, *, overwrite: bool) -> str:
    """A temporary folder next to ``out_dir`` (same file system, so the rename is atomic)."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise cli.UserError(f"{out_dir}: the parent folder does not exist")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise cli.UserError(f"{out_dir}: exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise cli.UserError(f"{out_dir}: exists and is not empty (pass --overwrite to "
                            "replace it)")
    return tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)


def publish(staging_dir: str, out_dir: str):
    """Move the finished staging folder to ``out_dir`` (replacing an old one)."""
    out_dir = os.path.abspath(out_dir)
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-",
                               dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.rename(out_dir, old)
    os.rename(staging_dir, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ the commands


def _progress(done: int, total: int, started: float, label: str, stream=sys.stderr):
    elapsed = time.time() - started
    eta = elapsed / done * (total - done) if done else float("nan")
    width = 24
    filled = int(round(width * done / total)) if total else width
    bar = "#" * filled + "-" * (width - filled)
    print(f"[{bar}] {done}/{total} {label}  elapsed {elapsed:.1f} s  ETA {eta:.1f} s",
          file=stream, flush=True)


def synthesize_files(config, module, variables, input_paths: Mapping[str, str],
                     out_dir: str, *, mask_path: str | None = None,
                     convert_seconds: bool = False, resample: bool = False,
                     batch_size: int | None = None, overwrite: bool = False,
                     predict_fn: Callable | None = None) -> dict[str, str]:
    """Synthesize one subject from files into ``out_dir``; returns ``{contrast: path}``.

    ``input_paths``: channel name -> NIfTI path; exactly the model's input channels. The
    reference grid (affine, header, orientation of the outputs) is the first input file.
    Raises UserError for bad input; on any error ``out_dir`` is left as it was.
    """
    from qsnet_jax import inference  # noqa: PLC0415

    input_channels, target_channels, context = model_channels(config)
    subject = load_inputs(input_paths, mask_path=mask_path, channels=input_channels,
                          convert_seconds=convert_seconds, resample=resample)
    staging = make_staging_dir(out_dir, overwrite=overwrite)
    try:
        predict_fn = predict_fn or inference.make_predict_fn(module, variables)
        prediction = synthesize_subject(
            predict_fn, subject, input_channels=input_channels, context_slices=context,
            batch_size=int(batch_size or config.eval.batch_size))
        write_contrasts(prediction, target_channels, input_paths[input_channels[0]], staging)
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out_dir = os.path.abspath(out_dir)
    return {name: os.path.join(out_dir, name + FILE_SUFFIX) for name in target_channels}


def synthesize_manifest(config, module, variables, manifest_path: str, out_dir: str, *,
                        convert_seconds: bool = False, resample: bool = False,
                        batch_size: int | None = None, overwrite: bool = False,
                        subjects: Sequence[str] | None = None,
                        predict_fn: Callable | None = None,
                        stream=sys.stderr) -> dict[str, dict[str, str]]:
    """Synthesize every subject of a cohort manifest into ``out_dir/<subject>/``.

    Every selected subject's files are checked first (``cohort.check_cohort``); a problem
    stops the run with a UserError before anything is written.
    Returns ``{subject: {contrast: path}}``.
    """
    from data_pipelines import cohort  # noqa: PLC0415
    from qsnet_jax import inference  # noqa: PLC0415

    root = os.path.dirname(os.path.abspath(manifest_path))
    if os.path.basename(manifest_path) != cohort.MANIFEST or not os.path.isfile(manifest_path):
        raise cli.UserError(f"{manifest_path}: not a cohort {cohort.MANIFEST}")
    try:
        records = cohort.read_manifest(root)
    except cohort.CohortError as error:
        raise cli.UserError(_one_line(str(error))) from None
    if subjects:
        unknown = sorted(set(subjects) - {r.subject for r in records})
        if unknown:
            raise cli.UserError(f"{manifest_path}: no subject(s) {unknown}")
        records = [r for r in records if r.subject in set(subjects)]
    if not records:
        raise cli.UserError(f"{manifest_path}: no subjects")
    input_channels, target_channels, context = model_channels(config)
    # every subject's files are checked before any synthesis (minutes) starts
    selected = {r.subject for r in records}
    problems = [p for p in cohort.check_cohort(root, input_channels,
                                               convert_seconds=convert_seconds,
                                               resample=resample)
                if p.subject in selected or p.subject == "-"]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise cli.UserError(f"{problems[0]}{more}")
    staging = make_staging_dir(out_dir, overwrite=overwrite)
    started = time.time()
    try:
        predict_fn = predict_fn or inference.make_predict_fn(module, variables)
        for i, record in enumerate(records):
            subject = load_record(root, record, channels=input_channels,
                                  convert_seconds=convert_seconds, resample=resample)
            prediction = synthesize_subject(
                predict_fn, subject, input_channels=input_channels, context_slices=context,
                batch_size=int(batch_size or config.eval.batch_size))
            subject_dir = os.path.join(staging, record.subject)
            os.makedirs(subject_dir)
            write_contrasts(prediction, target_channels,
                            record.path(root, input_channels[0]), subject_dir)
            _progress(i + 1, len(records), started, record.subject, stream=stream)
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out_dir = os.path.abspath(out_dir)
    return {r.subject: {name: os.path.join(out_dir, r.subject, name + FILE_SUFFIX)
                        for name in target_channels} for r in records}


def build_parser() -> argparse.ArgumentParser:
    from qsnet_jax.physics.channels import INPUT_CHANNELS  # noqa: PLC0415

    parser = cli.OneLineArgumentParser(prog="python -m experiments.synthesize",
                     description="Synthesize weighted MRI contrasts from quantitative maps.")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--workdir", help="a training work dir (its last stage's best model)")
    model.add_argument("--checkpoint", help="a stage dir or a checkpoint step dir")
    for name in INPUT_CHANNELS:
        parser.add_argument(f"--{name}", default="", metavar="PATH",
                            help=f"{name} NIfTI (the model's inputs: see its config)")
    parser.add_argument("--mask", default="", metavar="PATH",
                        help="brain mask NIfTI (default: computed from the maps)")
    parser.add_argument("--manifest", default="", metavar="CSV",
                        help="a cohort manifest.csv: synthesize every subject into OUT/<subject>")
    parser.add_argument("--subjects", default="", help="comma-separated subset of --manifest")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--convert-seconds", action="store_true",
                        help="T1/T2 maps are in seconds: multiply by 1000")
    parser.add_argument("--resample", action="store_true",
                        help="resample inputs on another grid onto the first input's grid")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="slices per model call (default: the config's eval.batch_size)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA weights")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser


def run(args, *, model_loader: Callable = load_model) -> dict:
    from qsnet_jax.physics.channels import INPUT_CHANNELS  # noqa: PLC0415

    given = {name: getattr(args, name) for name in INPUT_CHANNELS if getattr(args, name)}
    if args.manifest and (given or args.mask):
        raise cli.UserError("--manifest synthesizes a cohort; do not also pass input files")
    if not args.manifest and not given:
        raise cli.UserError("give the input maps (--t1map, --t2map, ...) or --manifest")
    if args.batch_size < 0:
        raise cli.UserError(f"--batch-size must be positive, got {args.batch_size}")
    for path in list(given.values()) + ([args.mask] if args.mask else []):
        if not os.path.isfile(path):
            raise cli.UserError(f"{path}: missing file")
    config, module, variables = model_loader(args.workdir or args.checkpoint,
                                             use_ema=not args.no_ema)
    if args.manifest:
        subjects = [s for s in args.subjects.split(",") if s]
        return synthesize_manifest(config, module, variables, args.manifest, args.out,
                                   convert_seconds=args.convert_seconds,
                                   resample=args.resample, batch_size=args.batch_size or None,
                                   overwrite=args.overwrite, subjects=subjects)
    started = time.time()
    paths = synthesize_files(config, module, variables, given, args.out,
                             mask_path=args.mask or None,
                             convert_seconds=args.convert_seconds, resample=args.resample,
                             batch_size=args.batch_size or None, overwrite=args.overwrite)
    _progress(1, 1, started, "subject")
    return paths


def main(argv: Sequence[str] | None = None, *, model_loader: Callable = load_model):
    args = build_parser().parse_args(argv)
    cli.quiet_tensorflow()  # orbax / the input pipeline import TF: keep it quiet, off GPUs
    try:
        written = run(args, model_loader=model_loader)
    except cli.UserError as error:
        cli.fail(str(error))
    count = sum(len(v) if isinstance(v, dict) else 1 for v in written.values())
    print(f"wrote {count} file(s) into {os.path.abspath(args.out)}", flush=True)
    return written


if __name__ == "__main__":
    main()
