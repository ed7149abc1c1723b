"""Writing a cohort: NIfTI files, manifest.csv, atomic build, and the cached `ensure_cohort`.

A cohort is built in a temporary sibling folder and renamed onto DIR only when complete
(qsnet_jax.io.staged_dir), so an interrupted build never leaves a folder that looks like a
cohort. Two processes racing to build the same cached cohort both finish; the first rename
wins and the loser uses the winner's result.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import sys
import time

import nibabel as nib
import numpy as np

from data_pipelines.phantom import simulate
from data_pipelines.phantom.presets import Preset, resolve_preset
from qsnet_jax.io import staged_dir

MANIFEST_COLUMNS = ("subject", "group", "site", "split", "t1map", "t2map", "pdmap", "t1w",
                    "t2w", "t1flair", "t2flair", "swi", "brain_mask", "labels")
FLOAT_VOLUMES = ("t1map", "t2map", "pdmap", "t1w", "t2w", "t1flair", "t2flair", "swi")
UNITS = {"t1map": "T1 ms", "t2map": "T2 ms", "pdmap": "PD relative", "brain_mask": "mask",
         "labels": "labels 1 necrosis 2 edema 3 enhancing"}


def subject_specs(preset: Preset, seed: int) -> list[simulate.SubjectSpec]:
    specs, number = [], 0
    for split, group, site, count in preset.splits:
        for _ in range(count):
            number += 1
            specs.append(simulate.SubjectSpec(f"sub-{number:03d}", group, site, split,
                                              (int(seed), number)))
    return specs


def nifti_bytes(volume, affine, descrip: str) -> bytes:
    """A .nii.gz with every header field set from the data (no time stamps), so the same
    volume always gives the same bytes."""
    image = nib.Nifti1Image(volume, affine)
    header = image.header
    header.set_data_dtype(volume.dtype)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = descrip.encode()[:79]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if volume.dtype != np.uint8:
        header["cal_min"], header["cal_max"] = 0.0, float(volume.max(initial=0.0))
    raw = image.to_bytes()
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="", compresslevel=4) as f:
        f.write(raw)
    return buffer.getvalue()


def write_subject(root: str, spec: simulate.SubjectSpec, volumes) -> dict:
    """Write one subject's files; returns its manifest row."""
    folder = os.path.join(root, spec.subject)
    os.makedirs(folder, exist_ok=True)
    row = {"subject": spec.subject, "group": spec.group, "site": spec.site,
           "split": spec.split, "labels": ""}
    names = list(FLOAT_VOLUMES) + ["brain_mask"]
    if volumes.get("labels") is not None:
        names.append("labels")
    for name in names:
        dtype = np.float32 if name in FLOAT_VOLUMES else np.uint8
        data = np.ascontiguousarray(volumes[name], dtype=dtype)
        relative = f"{spec.subject}/{name}.nii.gz"
        with open(os.path.join(root, relative), "wb") as f:
            f.write(nifti_bytes(data, volumes["affine"], UNITS.get(name, "a.u.")))
        row[name] = relative
    return row


def write_manifest(root: str, rows) -> None:
    with open(os.path.join(root, "manifest.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in MANIFEST_COLUMNS})


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def build_into(root: str, preset: Preset, seed: int, *, log=None) -> None:
    """Simulate every subject of `preset` and write the cohort into the (empty) folder."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    specs = subject_specs(preset, seed)
    start = time.perf_counter()
    model = simulate.model_for(preset)
    log(f"phantom {preset.name}: MRF dictionary of {model.dictionary.num_entries} entries x "
        f"{preset.num_trs} shots ready in {time.perf_counter() - start:.1f} s; "
        f"{len(specs)} subjects at {preset.voxel_mm} mm")
    rows = []
    for i, spec in enumerate(specs, 1):
        volumes = simulate.simulate_subject(spec, preset, model=model)
        rows.append(write_subject(root, spec, volumes))
        elapsed = time.perf_counter() - start
        eta = elapsed / i * (len(specs) - i)
        log(f"  [{i}/{len(specs)}] {spec.subject} {spec.group:7s} site {spec.site} "
            f"{spec.split:13s} {volumes['t1map'].shape}  elapsed {_format_seconds(elapsed)}"
            f"  eta {_format_seconds(eta)}")
    write_manifest(root, rows)


def build_cohort(out_dir: str, preset: Preset | str, seed: int = 0, *, overwrite=False,
                 log=None) -> str:
    """Build a cohort atomically at `out_dir` (qsnet_jax.io.staged_dir); returns its path.

    Raises FileExistsError when `out_dir` exists and is not empty, unless `overwrite`.
    """
    preset = resolve_preset(preset) if isinstance(preset, str) else preset
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    with staged_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        build_into(tmp, preset, seed, log=log)
    return out_dir


def _non_empty(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path)) or (
        os.path.exists(path) and not os.path.isdir(path))


def cohort_path(preset: str, seed: int, cache_dir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), f"{preset}-seed{seed}")


def ensure_cohort(preset: str, seed: int, cache_dir: str, *, log=None) -> str:
    """The phantom cohort `preset` with `seed` under `cache_dir` (cache_dir/<preset>-seed<seed>),
    built atomically the first time. Safe when several processes race: each builds into its
    own temporary folder, the first to finish wins, the others discard theirs."""
    path = cohort_path(preset, seed, cache_dir)
    if os.path.isfile(os.path.join(path, "manifest.csv")):
        return path
    with staged_dir(path, if_exists="keep") as tmp:
        build_into(tmp, resolve_preset(preset), seed, log=log)
    if not os.path.isfile(os.path.join(path, "manifest.csv")):
        raise FileExistsError(f"{path} exists but holds no manifest.csv: remove it")
    return path
