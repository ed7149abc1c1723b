"""Cohorts on disk: the manifest, NIfTI loading, validation and normalization.

A cohort is a folder ROOT holding `manifest.csv` (docs/interfaces.md):

    subject,group,site,split,t1map,t2map,pdmap,t1w,t2w,t1flair,t2flair,swi,brain_mask,labels

one row per subject; each modality column holds a NIfTI path relative to ROOT (absolute paths
work too). A user's cohort may have only some modality columns, and a cell may be empty when a
subject lacks that modality (`labels` for healthy subjects, `brain_mask` when a mask is to be
computed).

Volumes are loaded in canonical RAS orientation (`nib.as_closest_canonical`), so axial slice z
is `volume[:, :, z]`. Every modality of a subject must share the reference grid (the first
quantitative map present) within `AFFINE_TOLERANCE_MM`; `resample=True` resamples the others
onto it. Channels are normalized by `qsnet_jax.physics.channels.normalize_channel`, the single
normalization of docs/design.md section 3.

The MRF subspace (`mrf_subspace` column, docs/interfaces.md) is a 4D NIfTI [X, Y, Z, 2k]:
each voxel's fingerprint projected on the cohort's rank-k temporal basis, real parts then
imaginary parts of the k coefficients. The basis itself, complex [T, k] with orthonormal
columns, lies once in the root as `mrf_basis.npy`; a cohort that has a subspace column must
have it, and every subspace file must have 2k channels (the checker says which file does not).

Check a cohort from the shell (exit 0 when clean, 2 with one line per problem):

    python -m data_pipelines.cohort check DIR
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Iterable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from qsnet_jax.physics import subspace as subspace_lib
from qsnet_jax.physics.channels import (
    INPUT_CHANNELS,
    MULTI_PLANE_CHANNELS,
    QUANTITATIVE_CHANNELS,
    SUBSPACE_CHANNEL,
    normalize_channel,
)

MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("subject", "group", "site", "split")
MASK_COLUMN = "brain_mask"
LABELS_COLUMN = "labels"
MODALITY_COLUMNS = INPUT_CHANNELS + (MASK_COLUMN, LABELS_COLUMN)
BASIS_FILE = "mrf_basis.npy"  # the temporal basis of the mrf_subspace column, in the root
GROUPS = ("healthy", "gbm")
KNOWN_SPLITS = ("healthy_train", "healthy_test", "gbm_train", "gbm_test", "external_test")
SPLIT_PATTERN = re.compile(r"^[a-z0-9_]+$")
SUBJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SITE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LABEL_VALUES = (0, 1, 2, 3)  # background, necrosis, edema, enhancing
AFFINE_TOLERANCE_MM = 1e-3
# A brain median below these (in the file's unit) means the map was written in seconds.
SECONDS_THRESHOLDS = {"t1map": 10.0, "t2map": 1.0}


class CohortError(ValueError):
    """A cohort that cannot be read; the message names the subject, the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Problem:
    subject: str  # "-" when the problem is not about one subject
    file: str
    message: str

    def __str__(self):
        return f"{self.subject}: {self.file}: {self.message}"


@dataclasses.dataclass(frozen=True)
class SubjectRecord:
    """One manifest row. `files` maps modality column -> path (relative as written)."""

    subject: str
    group: str
    site: str
    split: str
    files: dict
    row: int  # 1-based line number in manifest.csv (the header is line 1)

    def path(self, root, modality):
        rel = self.files.get(modality, "")
        return os.path.join(os.fspath(root), rel) if rel else ""

    @property
    def channels(self):
        return tuple(c for c in INPUT_CHANNELS if self.files.get(c))

    @property
    def reference(self):
        """The modality whose grid the others must share: the first quantitative map."""
        return next((c for c in QUANTITATIVE_CHANNELS if self.files.get(c)),
                    (self.channels or ("",))[0])


@dataclasses.dataclass
class SubjectVolumes:
    """A loaded subject: normalized float32 channels [X, Y, Z] on one grid."""

    subject: str
    volumes: dict  # channel name -> float32 [X, Y, Z], normalized
    brain_mask: np.ndarray  # uint8 [X, Y, Z], 0/1
    labels: np.ndarray  # uint8 [X, Y, Z], zeros when the manifest has none
    affine: np.ndarray  # 4x4, RAS
    header: nib.Nifti1Header
    mask_computed: bool = False

    @property
    def shape(self):
        return self.brain_mask.shape


# ------------------------------------------------------------------ manifest


def read_manifest(root) -> list[SubjectRecord]:
    """The manifest's rows; raises CohortError listing every manifest-level problem."""
    records, problems = _read_manifest(root)
    if problems:
        raise CohortError(_join(problems))
    return records


def _read_manifest(root):
    """(records, problems). Problems here are about the manifest itself and its values."""
    root = os.fspath(root)
    path = os.path.join(root, MANIFEST)
    if not os.path.isdir(root):
        return [], [Problem("-", root, "cohort folder does not exist")]
    if not os.path.isfile(path):
        return [], [Problem("-", path, "missing manifest.csv")]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return [], [Problem("-", path, f"cannot read the manifest: {e}")]
    if not rows:
        return [], [Problem("-", path, "the manifest is empty (no header)")]
    header = [h.strip() for h in rows[0]]
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        problems.append(Problem("-", path, f"missing required column(s) {missing}; "
                                f"the header is {header}"))
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        problems.append(Problem("-", path, f"duplicated column(s) {dupes}"))
    for h in header:
        if h in REQUIRED_COLUMNS or h in MODALITY_COLUMNS:
            continue
        close = difflib.get_close_matches(h, MODALITY_COLUMNS + REQUIRED_COLUMNS, 1, 0.75)
        if close:
            problems.append(Problem("-", path, f"unknown column '{h}' (did you mean "
                                    f"'{close[0]}'?)"))
    modalities = [h for h in header if h in MODALITY_COLUMNS]
    if not any(m in INPUT_CHANNELS for m in modalities) and not missing:
        problems.append(Problem("-", path, f"no modality column; expected some of "
                                f"{list(INPUT_CHANNELS)}"))
    if missing or dupes:
        return [], problems

    records = []
    seen = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            problems.append(Problem(row[0].strip() if row else "-", path,
                                    f"line {line} has {len(row)} fields, the header "
                                    f"{len(header)}"))
            continue
        cells = {h: c.strip() for h, c in zip(header, row, strict=True)}
        subject = cells["subject"]
        who = subject or f"line {line}"
        if not subject:
            problems.append(Problem(who, path, "empty subject id"))
        elif not SUBJECT_PATTERN.match(subject):
            problems.append(Problem(who, path, f"subject id '{subject}' must be letters, "
                                    "digits, '_', '.' or '-'"))
        if subject in seen:
            problems.append(Problem(who, path, f"duplicated subject id '{subject}' (lines "
                                    f"{seen[subject]} and {line})"))
        else:
            seen[subject] = line
        group, site, split = cells["group"], cells["site"], cells["split"]
        if group not in GROUPS:
            problems.append(Problem(who, path, f"group '{group}' is not one of {list(GROUPS)}"))
        if not SITE_PATTERN.match(site):
            problems.append(Problem(who, path, f"site '{site}' is empty or not letters, "
                                    "digits, '_', '.', '-'"))
        problems.extend(Problem(who, path, m) for m in _split_problems(split, group))
        files = {m: cells[m] for m in modalities if cells.get(m)}
        if not any(m in INPUT_CHANNELS for m in files):
            problems.append(Problem(who, path, "no modality file given for this subject"))
        records.append(SubjectRecord(subject, group, site, split, files, line))
    if not records and not problems:
        problems.append(Problem("-", path, "the manifest lists no subject"))
    return records, problems


def _split_problems(split, group):
    if not SPLIT_PATTERN.match(split):
        return [f"unknown split name '{split}': split names are [a-z0-9_]+, e.g. "
                f"{list(KNOWN_SPLITS)}"]
    if split in KNOWN_SPLITS:
        prefix = split.split("_")[0]
        if prefix in GROUPS and group in GROUPS and prefix != group:
            return [f"split '{split}' is for {prefix} subjects but the group is '{group}'"]
        return []
    close = difflib.get_close_matches(split, KNOWN_SPLITS, 1, 0.8)
    if close:
        return [f"unknown split name '{split}' (did you mean '{close[0]}'?)"]
    return []


# ------------------------------------------------------------------ volumes


def _read_nifti(path, *, what):
    """(canonical image, data float32 or uint8-ready float32). Raises CohortError.

    3D, except for a multi-plane channel (mrf_subspace): 4D [X, Y, Z, planes]."""
    if not os.path.exists(path):
        raise CohortError(f"{path}: missing file ({what})")
    try:
        image = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel, gzip, zlib and EOF errors all mean: unreadable
        raise CohortError(f"{path}: cannot read NIfTI ({what}): {type(e).__name__}: "
                          f"{e}") from None
    if what in MULTI_PLANE_CHANNELS:
        if data.ndim != 4:
            raise CohortError(f"{path}: a {data.ndim}D volume of shape {data.shape}; {what} "
                              "is a 4D volume [X, Y, Z, 2k]")
        return image, data
    if data.ndim > 3:
        if all(s == 1 for s in data.shape[3:]):
            data = data.reshape(data.shape[:3])
        else:
            raise CohortError(f"{path}: a {data.ndim}D volume of shape {data.shape}; a 3D "
                              f"volume is required ({what})")
    if data.ndim != 3:
        raise CohortError(f"{path}: a {data.ndim}D volume of shape {data.shape}; a 3D "
                          f"volume is required ({what})")
    return image, data


def canonical_shape(path):
    """The RAS-canonical shape of a NIfTI file from its header alone (no voxel read)."""
    try:
        image = nib.load(path)
        ornt = nib.io_orientation(image.affine)
    except Exception as e:
        raise CohortError(f"{path}: cannot read NIfTI header: {type(e).__name__}: {e}") from None
    shape = [0, 0, 0]
    for axis in range(3):
        shape[int(ornt[axis, 0])] = int(image.shape[axis])
    return tuple(shape)


def _resample(data, affine, ref_shape, ref_affine, *, order):
    """`data` (on `affine`) sampled on the reference grid: scipy.ndimage, linear or nearest."""
    if data.ndim == 4:  # each plane of a multi-plane channel on its own
        return np.stack([_resample(data[..., p], affine, ref_shape, ref_affine, order=order)
                         for p in range(data.shape[3])], axis=-1)
    ref_to_src = np.linalg.inv(affine) @ ref_affine
    return ndimage.affine_transform(
        data, ref_to_src[:3, :3], offset=ref_to_src[:3, 3], output_shape=tuple(ref_shape),
        order=order, mode="constant", cval=0.0).astype(np.float32)


def compute_brain_mask(volumes: dict) -> np.ndarray:
    """A brain mask from the quantitative maps (or the first volume): Otsu threshold on PD
    (or T1, T2), voxels where every quantitative map is positive, the largest connected
    component, holes filled. uint8 0/1."""
    order = ("pdmap", "t1map", "t2map") + tuple(k for k in volumes if k not in ("pdmap",
                                                                                "t1map", "t2map"))
    base_name = next(k for k in order if k in volumes)
    base = np.nan_to_num(volumes[base_name])
    positive = base[base > 0]
    if positive.size == 0:
        return np.zeros(base.shape, np.uint8)
    mask = base > _otsu(positive)
    for name in QUANTITATIVE_CHANNELS:
        if name in volumes:
            mask &= np.nan_to_num(volumes[name]) > 0
    mask = ndimage.binary_opening(mask, iterations=1)
    labeled, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(base.shape, np.uint8)
    sizes = ndimage.sum_labels(np.ones_like(labeled), labeled, index=np.arange(1, n + 1))
    mask = labeled == (1 + int(np.argmax(sizes)))
    mask = ndimage.binary_fill_holes(mask)
    return mask.astype(np.uint8)


def _otsu(values, bins=256):
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def _subject_problems(root, record, channels, *, convert_seconds=False, resample=False,
                      subspace_planes=None):
    """Every problem of one subject's files (all of them, not the first), and the raw
    volumes/grid when readable: (problems, raw dict, mask, labels, image of reference).
    `subspace_planes`: the channel count an mrf_subspace file must have (2 x the basis rank;
    None: any even count)."""
    problems = []
    subject = record.subject
    wanted = [c for c in (channels or record.channels) if record.files.get(c)]
    for c in channels or ():
        if not record.files.get(c):
            problems.append(Problem(subject, MANIFEST, f"no '{c}' file given"))
    raw, grids = {}, {}
    for name in wanted + [m for m in (MASK_COLUMN, LABELS_COLUMN) if record.files.get(m)]:
        path = record.path(root, name)
        try:
            image, data = _read_nifti(path, what=name)
        except CohortError as e:
            problems.append(Problem(subject, path, str(e).split(": ", 1)[1]))
            continue
        raw[name] = data
        grids[name] = (data.shape[:3], image.affine, image)
        if name == SUBSPACE_CHANNEL:
            problems.extend(Problem(subject, path, m)
                            for m in _subspace_shape_problems(data.shape, subspace_planes))
    if not wanted:
        problems.append(Problem(subject, MANIFEST, "no channel file to load"))
    if not raw:
        return problems, None
    ref_name = next((c for c in QUANTITATIVE_CHANNELS if c in raw),
                    next(iter(raw)))
    ref_shape, ref_affine, ref_image = grids[ref_name]
    for name, (shape, affine, _) in grids.items():
        if name == ref_name:
            continue
        same_shape = tuple(shape) == tuple(ref_shape)
        same_affine = same_shape and np.allclose(affine, ref_affine, rtol=0,
                                                 atol=AFFINE_TOLERANCE_MM)
        if resample and not (same_shape and same_affine):
            order = 0 if name in (MASK_COLUMN, LABELS_COLUMN) else 1
            raw[name] = _resample(raw[name], affine, ref_shape, ref_affine, order=order)
            continue
        path = record.path(root, name)
        if not same_shape:
            problems.append(Problem(subject, path, f"shape mismatch: {tuple(shape)} vs "
                                    f"{tuple(ref_shape)} of {ref_name} (pass resample=True "
                                    "to resample onto the reference grid)"))
        elif not same_affine:
            err = float(np.max(np.abs(affine - ref_affine)))
            problems.append(Problem(subject, path, f"affine mismatch with {ref_name}: max "
                                    f"difference {err:.4g} mm > {AFFINE_TOLERANCE_MM} mm "
                                    "(pass resample=True to resample onto the reference "
                                    "grid)"))
    bad_grid = {p.file for p in problems}
    for name, data in raw.items():
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            n_inf = int((~finite).sum()) - n_nan
            problems.append(Problem(subject, record.path(root, name),
                                    f"{n_nan} NaN and {n_inf} inf values"))
        if name in QUANTITATIVE_CHANNELS and np.any(data[finite] < 0):
            problems.append(Problem(subject, record.path(root, name),
                                    f"{int((data[finite] < 0).sum())} negative values in a "
                                    f"{name} (T1/T2 in ms and PD must be >= 0)"))
    if LABELS_COLUMN in raw:
        values = np.unique(np.nan_to_num(raw[LABELS_COLUMN]))
        bad = [v for v in values if v not in LABEL_VALUES]
        if bad:
            problems.append(Problem(subject, record.path(root, LABELS_COLUMN),
                                    f"label values {bad[:5]} outside {list(LABEL_VALUES)}"))
    # The brain mask: given, else computed from what is on the reference grid.
    on_grid = {k: v for k, v in raw.items()
               if record.path(root, k) not in bad_grid and k in INPUT_CHANNELS}
    if SUBSPACE_CHANNEL in on_grid:  # a computed mask sees |c_1|, the amplitude (as PD)
        planes = on_grid.pop(SUBSPACE_CHANNEL)
        if not _subspace_shape_problems(planes.shape, None):
            first = subspace_lib.channels_to_coefficients(planes)[..., 0]
            on_grid[SUBSPACE_CHANNEL] = np.abs(first)
    if MASK_COLUMN in raw and record.path(root, MASK_COLUMN) not in bad_grid:
        mask = (np.nan_to_num(raw[MASK_COLUMN]) > 0.5).astype(np.uint8)
        mask_file = record.path(root, MASK_COLUMN)
    elif MASK_COLUMN in record.files:
        mask, mask_file = None, record.path(root, MASK_COLUMN)
    elif on_grid:
        mask = compute_brain_mask(on_grid)
        mask_file = f"{MASK_COLUMN} (computed from {', '.join(sorted(on_grid))})"
    else:
        mask, mask_file = None, MANIFEST
    if mask is not None and not mask.any():
        problems.append(Problem(subject, mask_file, "empty brain mask"))
        mask = None
    # Units: a brain median below the threshold means seconds.
    for name, threshold in SECONDS_THRESHOLDS.items():
        if name not in on_grid:
            continue
        data = on_grid[name]
        inside = data[(mask > 0) & np.isfinite(data)] if mask is not None else \
            data[np.isfinite(data) & (data > 0)]
        if inside.size == 0:
            continue
        median = float(np.median(inside))
        if median < threshold:
            if convert_seconds:
                raw[name] = raw[name] * 1000.0
            else:
                problems.append(Problem(subject, record.path(root, name),
                                        f"{name} brain median is {median:.4g}: the map is in "
                                        "seconds, milliseconds are required (pass "
                                        "convert_seconds=True / --convert-seconds to "
                                        "multiply by 1000)"))
    return problems, dict(raw=raw, mask=mask, ref_image=ref_image, ref_name=ref_name)


def _subspace_shape_problems(shape, planes):
    if len(shape) != 4 or shape[3] % 2:
        return [f"{SUBSPACE_CHANNEL} of shape {tuple(shape)}: 2k channels expected (the real "
                "parts of the k coefficients, then their imaginary parts)"]
    if planes is not None and shape[3] != planes:
        return [f"{SUBSPACE_CHANNEL} has {shape[3]} channels but the cohort's {BASIS_FILE} "
                f"has rank {planes // 2} ({planes} channels expected: real and imaginary "
                "parts of each coefficient)"]
    return []


def read_basis(root) -> np.ndarray:
    """The cohort's temporal basis, complex64 [T, k]; CohortError naming the file."""
    path = os.path.join(os.fspath(root), BASIS_FILE)
    if not os.path.isfile(path):
        raise CohortError(f"{path}: missing file (a cohort with an {SUBSPACE_CHANNEL} column "
                          "needs the temporal basis [T, k] of its subspace)")
    try:
        basis = np.load(path, allow_pickle=False)
        return subspace_lib.check_basis(basis)
    except (OSError, ValueError) as e:
        raise CohortError(f"{path}: not a usable temporal basis: {e}") from None


def subspace_planes(root, records) -> int | None:
    """2 x the basis rank when some subject has an mrf_subspace, else None (CohortError when
    the basis is missing or broken)."""
    if not any(r.files.get(SUBSPACE_CHANNEL) for r in records):
        return None
    return 2 * int(read_basis(root).shape[1])


def check_cohort(root, channels: Sequence[str] | None = None, *, convert_seconds=False,
                 resample=False) -> list[Problem]:
    """Every problem of the cohort in one pass: manifest, the subspace basis, then each
    subject's files (one subject in memory at a time). `channels`: those that must be
    present (default: any)."""
    records, problems = _read_manifest(root)
    planes = None
    try:
        planes = subspace_planes(root, records)
    except CohortError as e:
        path, message = str(e).split(": ", 1)
        problems.append(Problem("-", path, message))
    for record in records:
        sub_problems, _ = _subject_problems(root, record, channels,
                                            convert_seconds=convert_seconds,
                                            resample=resample, subspace_planes=planes)
        problems.extend(sub_problems)
    # a duplicated subject row pointing at the same files would repeat the same problems
    return list(dict.fromkeys(problems))


def load_subject(root, record: SubjectRecord, channels: Sequence[str] | None = None, *,
                 convert_seconds=False, resample=False) -> SubjectVolumes:
    """Load, validate and normalize one subject. `channels` default: every channel the
    manifest gives for it. Raises CohortError naming the subject, file and every problem.
    An mrf_subspace must match the basis in `root` (when `root` holds one: a subject loaded
    from loose files has no cohort basis to compare with)."""
    planes = None
    if SUBSPACE_CHANNEL in (channels or record.channels) and root and \
            os.path.isfile(os.path.join(os.fspath(root), MANIFEST)):
        planes = subspace_planes(root, [record])
    problems, loaded = _subject_problems(root, record, channels,
                                         convert_seconds=convert_seconds, resample=resample,
                                         subspace_planes=planes)
    if problems:
        raise CohortError(_join(problems))
    raw, mask = loaded["raw"], loaded["mask"]
    names = [c for c in (channels or record.channels)]
    volumes = {}
    for name in names:
        try:
            volumes[name] = normalize_channel(name, raw[name], mask)
        except ValueError as e:
            raise CohortError(f"{record.subject}: {record.path(root, name)}: cannot "
                              f"normalize: {e}") from None
    if LABELS_COLUMN in raw:
        labels = np.rint(raw[LABELS_COLUMN]).astype(np.uint8)
    else:
        labels = np.zeros(mask.shape, np.uint8)
    ref = loaded["ref_image"]
    return SubjectVolumes(subject=record.subject, volumes=volumes, brain_mask=mask,
                          labels=labels, affine=np.asarray(ref.affine, np.float64),
                          header=ref.header.copy(),
                          mask_computed=MASK_COLUMN not in record.files)


def _join(problems: Iterable[Problem]) -> str:
    problems = list(problems)
    head = f"{len(problems)} problem(s):" if len(problems) > 1 else ""
    lines = [str(p) for p in problems]
    return "\n".join([head] + lines) if head else lines[0]


# ------------------------------------------------------------------ report / CLI


def summary_table(records: Sequence[SubjectRecord]) -> str:
    """Subjects per group, site and split, as a fixed-width text table."""
    counts = collections.Counter((r.split, r.group, r.site) for r in records)
    rows = [("split", "group", "site", "subjects")]
    rows += [(s, g, t, str(n)) for (s, g, t), n in sorted(counts.items())]
    rows.append(("total", "", "", str(len(records))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.cohort",
                                     description="Validate a QS-Net cohort folder.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="report every problem of a cohort in one pass")
    check.add_argument("root", help="cohort folder holding manifest.csv")
    check.add_argument("--channels", default="", help="comma-separated channels that must "
                       "be present for every subject (default: any)")
    check.add_argument("--convert-seconds", action="store_true",
                       help="T1/T2 maps in seconds are converted, not reported")
    check.add_argument("--resample", action="store_true",
                       help="grids that differ are resampled, not reported")
    args = parser.parse_args(argv)
    channels = [c for c in args.channels.split(",") if c] or None
    if channels:
        unknown = [c for c in channels if c not in INPUT_CHANNELS]
        if unknown:
            print(f"-: --channels: unknown channel(s) {unknown}; known: "
                  f"{list(INPUT_CHANNELS)}")
            return 2
    problems = check_cohort(args.root, channels, convert_seconds=args.convert_seconds,
                            resample=args.resample)
    records, _ = _read_manifest(args.root)
    for p in problems:
        print(p)
    if records:
        print(("\n" if problems else "") + summary_table(records))
    if problems:
        print(f"\n{len(problems)} problem(s) in {args.root}", file=sys.stderr)
        return 2
    print(f"\n{args.root}: clean ({len(records)} subjects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
