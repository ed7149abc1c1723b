"""Writing a cohort: NIfTI files, manifest.csv, the MRF subspace basis, a parallel build into
a staged folder (qsnet_jax.io.staged_dir), and the cached `ensure_cohort`.

A cohort is built in a temporary sibling folder and renamed onto DIR only when complete
(qsnet_jax.io.staged_dir), so an interrupted build never leaves a folder that looks like a
cohort. Two processes racing to build the same cached cohort both finish; the first rename
wins and the loser uses the winner's result.

Subjects are simulated in worker processes (`jobs`, default every core). Each subject draws
from its own seed (cohort seed, subject number) and the MRF model is built once by the parent
and handed to the workers, so the files are byte-identical whatever the number of jobs.
Workers are spawned, not forked: the parent has JAX's thread pools running.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import gzip
import io
import multiprocessing
import os
import sys
import time

import nibabel as nib
import numpy as np

from data_pipelines.phantom import simulate
from data_pipelines.phantom.presets import Preset, resolve_preset
from qsnet_jax.io import staged_dir, write_json

MANIFEST_COLUMNS = ("subject", "group", "site", "split", "t1map", "t2map", "pdmap", "t1w",
                    "t2w", "t1flair", "t2flair", "swi", "brain_mask", "labels", "mrf_subspace")
# Bumped whenever the files a seed produces change meaning; part of the cache path so that a
# cache of an older phantom is never mistaken for the current one.
# v2.1: MRF to reference precision (the EPG states each tissue needs, matching refined
# between dictionary entries).
COHORT_FORMAT = "v2.1"
# The gzip level of every .nii.gz: the files' bytes depend on it, their voxels do not (so a
# cache written at another level holds the same cohort and COHORT_FORMAT stays).
GZIP_LEVEL = 1
BASIS_FILE = "mrf_basis.npy"
BASIS_INFO_FILE = "mrf_basis.json"
FLOAT_VOLUMES = ("t1map", "t2map", "pdmap", "t1w", "t2w", "t1flair", "t2flair", "swi")
UNITS = {"t1map": "T1 ms", "t2map": "T2 ms", "pdmap": "PD relative", "brain_mask": "mask",
         "labels": "labels 1 necrosis 2 edema 3 enhancing",
         "mrf_subspace": "MRF rank-k coefficients: k real then k imaginary"}


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
    # Level 1: a quick GBM subject's eleven volumes compress in 0.96 s against 1.83 s at level
    # 4 (the previous setting), for 1.3% more bytes (README, Benchmarks).
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="",
                       compresslevel=GZIP_LEVEL) as f:
        f.write(raw)
    return buffer.getvalue()


def write_subject(root: str, spec: simulate.SubjectSpec, volumes) -> dict:
    """Write one subject's files; returns its manifest row."""
    folder = os.path.join(root, spec.subject)
    os.makedirs(folder, exist_ok=True)
    row = {"subject": spec.subject, "group": spec.group, "site": spec.site,
           "split": spec.split, "labels": ""}
    names = list(FLOAT_VOLUMES) + ["brain_mask", "mrf_subspace"]
    if volumes.get("labels") is not None:
        names.append("labels")
    for name in names:
        dtype = np.uint8 if name in ("brain_mask", "labels") else np.float32
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


def subspace_channels(coefficients):
    """Complex coefficients [X, Y, Z, k] -> float32 [X, Y, Z, 2k]: real parts, then imaginary
    parts. The projection of a complex fingerprint onto the temporal basis is complex, and
    its phase carries the sign of the signal (an inverted, not yet recovered train is
    negative): a magnitude alone would lose it."""
    return np.concatenate([coefficients.real, coefficients.imag], axis=-1).astype(np.float32)


def write_basis(root: str, model, preset: Preset) -> None:
    """The dictionary's temporal basis (complex64 [T, k]) and its description."""
    basis = np.asarray(model.dictionary.basis).astype(np.complex64)
    with open(os.path.join(root, BASIS_FILE), "wb") as f:
        np.save(f, basis, allow_pickle=False)
    write_json(os.path.join(root, BASIS_INFO_FILE), {
        "file": BASIS_FILE, "dtype": "complex64", "shape": list(basis.shape),
        "rank": int(basis.shape[1]), "num_trs": int(basis.shape[0]),
        "what": "orthonormal temporal basis (top right singular vectors) of the B1-free "
                "FISP-MRF matching dictionary; the fingerprint of a voxel is approximated "
                "by basis @ coefficients",
        "schedule": f"qsnet_jax.physics.mrf.fisp_schedule({preset.num_trs})",
        "dictionary_step": preset.dictionary_step,
        "subject_file": "mrf_subspace.nii.gz: float32 [X, Y, Z, 2k]; channels 0..k-1 are "
                        "the real parts and k..2k-1 the imaginary parts of the coefficients "
                        "basis^H @ fingerprint of the simulated scanner fingerprint (receive "
                        "field and phase, B1, partial volume and noise included). Complex "
                        "because the receive phase rotates the signed signal; a magnitude "
                        "would lose the sign.",
        "energy_kept": float(model.dictionary.energy_kept)})


def select_specs(preset: Preset, seed: int, subjects=None):
    """The subjects of the preset, or only those named in `subjects` (ValueError if unknown)."""
    specs = subject_specs(preset, seed)
    if not subjects:
        return specs
    known = {s.subject for s in specs}
    unknown = [name for name in subjects if name not in known]
    if unknown:
        raise ValueError(f"--subjects: {unknown[0]!r} is not in preset {preset.name} "
                         f"(sub-001 .. sub-{len(specs):03d})")
    return [s for s in specs if s.subject in set(subjects)]


_WORKER = {}

# BLAS libraries' thread-count variables (numpy/scipy wheels ship OpenBLAS).
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# glibc malloc, read at process start: every array comes from the heap (no mmap), which is
# neither trimmed nor grown by less than 256 MiB at a time.
_WORKER_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 31),
                  "MALLOC_TOP_PAD_": str(256 << 20)}


def worker_environment(jobs: int) -> dict:
    """The variables a build worker starts with on top of this process's environment; those
    the user has set are left alone. Both were measured on the quick build with 2 workers
    on 2 cores (experiments/bench_phantom.py):

    - BLAS threads: the cores shared out between the workers. OpenBLAS's idle threads spin,
      and two workers with a 2-thread BLAS each on 2 cores spent ~7% of the build's CPU time
      spinning.
    - glibc malloc keeps freed memory: a subject allocates and frees hundreds of arrays of a
      few MiB (at 1 mm, of a few GiB), which glibc by default maps afresh or trims away, and
      the kernel zero-fills every page again on first touch (a seventh of the quick build
      and a third of a 1 mm subject's time was system time). A worker's memory goes back to
      the system when it exits; its peak is unchanged.
    """
    threads = str(max(1, available_cores() // max(1, jobs)))
    wanted = {name: threads for name in _BLAS_THREAD_VARIABLES} | _WORKER_MALLOC
    return {name: value for name, value in wanted.items() if name not in os.environ}


@contextlib.contextmanager
def _environment(updates: dict):
    """os.environ with `updates` inside the block (what spawned children inherit)."""
    os.environ.update(updates)
    try:
        yield
    finally:
        for name in updates:
            os.environ.pop(name, None)


def _init_worker(preset, model):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _WORKER.update(preset=preset, model=model)


def _build_one(job):
    root, spec = job
    start = time.perf_counter()
    volumes = simulate.simulate_subject(spec, _WORKER["preset"], model=_WORKER["model"])
    row = write_subject(root, spec, volumes)
    return row, volumes["t1map"].shape, time.perf_counter() - start


def run_parallel(fn, items, preset, model, jobs=None, *, lazy=False):
    """fn(item) for every item, in order, in `jobs` spawned worker processes that hold the
    preset and the MRF model (module global _WORKER); jobs 1 runs in this process. With
    `lazy`, a generator (results as they come, in order)."""
    jobs = max(1, min(int(jobs or default_jobs(preset)), len(items)))
    _WORKER.update(preset=preset, model=model)
    if jobs == 1:
        results = map(fn, items)
        return results if lazy else list(results)

    def generate():
        with _environment(worker_environment(jobs)):
            pool = multiprocessing.get_context("spawn").Pool(
                jobs, initializer=_init_worker, initargs=(preset, simulate.picklable(model)))
        try:
            yield from pool.imap(fn, items)
        finally:
            pool.terminate()
            pool.join()
    return generate() if lazy else list(generate())


def available_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


# Peak memory of one build worker: measured (max RSS) at 2.7 GiB on the quick preset and
# 6.7 GiB on the paper one, and modelled, on the generous side, as a fixed part (the 1 mm
# template, JAX, the MRF model) plus a part per acquisition voxel (the anatomy and k-space
# grids are finer than the acquisition), with at most X slices.
_WORKER_FIXED_BYTES = 2 << 30
_WORKER_BYTES_PER_VOXEL = 768


def worker_memory_bytes(preset: Preset) -> int:
    x, y = preset.in_plane
    return _WORKER_FIXED_BYTES + _WORKER_BYTES_PER_VOXEL * x * y * x


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_jobs(preset: Preset | None = None) -> int:
    """Every core, but no more workers than the available memory holds for `preset` (a
    1 mm worker peaks near 7 GiB: a 32-core workstation with 64 GiB gets 8, not 32)."""
    cores = available_cores()
    memory = available_memory_bytes() if preset is not None else None
    if memory is None:
        return cores
    return max(1, min(cores, memory // worker_memory_bytes(preset)))


def _memory_note(preset, asked, jobs, num_subjects) -> str:
    """Why the default build uses fewer workers than cores, if it does."""
    cores = available_cores()
    if asked or jobs >= min(cores, num_subjects):
        return ""
    return (f" (not {min(cores, num_subjects)}: a {preset.voxel_mm} mm worker needs about "
            f"{worker_memory_bytes(preset) / 2**30:.1f} GiB and "
            f"{(available_memory_bytes() or 0) / 2**30:.1f} GiB are available; --jobs overrides)")


def build_into(root: str, preset: Preset, seed: int, *, jobs=None, subjects=None,
               log=None) -> dict:
    """Simulate the subjects of `preset` (all, or those named) and write the cohort into the
    (empty) folder. Returns {subject: seconds} (each subject's own build time)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    specs = select_specs(preset, seed, subjects)
    chosen_jobs = jobs
    jobs = max(1, min(int(jobs or default_jobs(preset)), len(specs)))
    start = time.perf_counter()
    model = simulate.model_for(preset)
    write_basis(root, model, preset)
    log(f"phantom {preset.name} ({COHORT_FORMAT}): MRF dictionary of "
        f"{model.dictionary.num_entries} entries x {preset.num_trs} shots ready in "
        f"{time.perf_counter() - start:.1f} s; {len(specs)} subjects at {preset.voxel_mm} mm, "
        f"{jobs} job(s){_memory_note(preset, chosen_jobs, jobs, len(specs))}; "
        f"effects: {', '.join(sorted(preset.effects)) or 'none'}")
    rows, seconds = [], {}
    results = run_parallel(_build_one, [(root, spec) for spec in specs], preset, model, jobs,
                           lazy=True)
    for i, (spec, (row, shape, took)) in enumerate(zip(specs, results, strict=True), 1):
        rows.append(row)
        seconds[spec.subject] = took
        elapsed = time.perf_counter() - start
        eta = elapsed / i * (len(specs) - i)
        log(f"  [{i}/{len(specs)}] {spec.subject} {spec.group:7s} site {spec.site} "
            f"{spec.split:13s} {shape}  {took:.1f} s  elapsed "
            f"{_format_seconds(elapsed)}  eta {_format_seconds(eta)}")
    write_manifest(root, rows)
    return seconds


def build_cohort(out_dir: str, preset: Preset | str, seed: int = 0, *, overwrite=False,
                 jobs=None, subjects=None, log=None) -> str:
    """Build a cohort atomically at `out_dir`; returns its path.

    Raises FileExistsError when `out_dir` exists and is not empty, unless `overwrite`.
    """
    preset = resolve_preset(preset) if isinstance(preset, str) else preset
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    with staged_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        build_into(tmp, preset, seed, jobs=jobs, subjects=subjects, log=log)
    return out_dir


def _non_empty(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path)) or (
        os.path.exists(path) and not os.path.isdir(path))


def cohort_path(preset: str, seed: int, cache_dir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)),
                        f"{preset}-{COHORT_FORMAT}-seed{seed}")


def design_counts(preset: Preset) -> collections.Counter:
    """{(split, group, site): subjects} of a preset's design."""
    counts = collections.Counter()
    for split, group, site, count in preset.splits:
        counts[(split, group, site)] += count
    return counts


def manifest_counts(root: str) -> collections.Counter:
    """{(split, group, site): subjects} of a written cohort's manifest.csv."""
    with open(os.path.join(root, "manifest.csv"), newline="") as f:
        return collections.Counter((row.get("split"), row.get("group"), row.get("site"))
                                   for row in csv.DictReader(f))


def ensure_cohort(preset: str, seed: int, cache_dir: str, *, jobs=None, log=None) -> str:
    """The phantom cohort `preset` with `seed` under `cache_dir`
    (cache_dir/<preset>-<format>-seed<seed>), built atomically the first time. Safe when
    several processes race: the first to finish publishes, the others discard theirs.

    A cached cohort whose subjects do not match the preset's design (built by an earlier
    version of the preset, e.g. the quick preset before it had 6 calibration subjects) is
    rebuilt and swapped in whole, never used silently."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    path = cohort_path(preset, seed, cache_dir)
    resolved = resolve_preset(preset)
    if_exists = "keep"
    if os.path.isfile(os.path.join(path, "manifest.csv")):
        if manifest_counts(path) == design_counts(resolved):
            return path
        log(f"{path}: built by an earlier version of preset {preset!r} (subjects per split "
            f"differ from the preset's design); rebuilding it")
        if_exists = "replace"
    with staged_dir(path, if_exists=if_exists) as tmp:
        build_into(tmp, resolved, seed, jobs=jobs, log=log)
    if not os.path.isfile(os.path.join(path, "manifest.csv")):
        raise FileExistsError(f"{path} exists but holds no manifest.csv: remove it")
    return path
