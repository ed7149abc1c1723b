"""Which cohort a run uses, and its subjects as the workflow reads them (one-line errors)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections

from data_pipelines import cohort, phantom
from workflow.errors import UserError, one_line


def get_cohort(config: ml_collections.ConfigDict) -> str:
    """config.data.cohort_dir, or the phantom cohort (built into the cache the first time)."""
    if config.data.cohort_dir:
        return check_cohort_dir(config.data.cohort_dir, what="config.data.cohort_dir")
    cache_dir = os.path.abspath(os.path.expanduser(config.data.phantom_cache_dir))
    return str(phantom.ensure_cohort(config.data.phantom_preset, config.data.phantom_seed,
                                     cache_dir))


def run_cohort_path(config: ml_collections.ConfigDict) -> str:
    """Where the run's own cohort is (config.data.cohort_dir, or the phantom cache folder its
    preset and seed name), without building or checking it."""
    if config.data.cohort_dir:
        return os.path.abspath(os.path.expanduser(config.data.cohort_dir))
    return phantom.cohort_path(str(config.data.phantom_preset), int(config.data.phantom_seed),
                               str(config.data.phantom_cache_dir))


def check_cohort_dir(path: str, *, what: str = "--cohort") -> str:
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(os.path.join(root, cohort.MANIFEST)):
        raise UserError(f"{what}={path} holds no {cohort.MANIFEST} (not a cohort folder)")
    return root


def resolve_cohort(config, cohort_dir: str | None = None) -> str:
    """The cohort root: the argument, else the run's (config.data.cohort_dir, or the phantom
    cohort built into its cache when absent)."""
    if cohort_dir:
        return check_cohort_dir(cohort_dir)
    return get_cohort(config)


def read_records(root: str):
    try:
        return cohort.read_manifest(root)
    except cohort.CohortError as error:
        raise UserError(one_line(error)) from None


def split_records(root: str, split: str, subjects: Sequence[str] | None = None):
    """The manifest rows of `split` (optionally only `subjects`), in manifest order."""
    records = read_records(root)
    chosen = [r for r in records if r.split == split]
    if not chosen:
        splits = sorted({r.split for r in records})
        raise UserError(f"{root}: no subject in split {split!r} (splits: {splits})")
    if subjects:
        unknown = sorted(set(subjects) - {r.subject for r in chosen})
        if unknown:
            raise UserError(f"split {split!r} of {root} has no subject(s) {unknown}")
        chosen = [r for r in chosen if r.subject in set(subjects)]
    return chosen


def load_record(root, record, *, channels: Sequence[str], convert_seconds: bool = False,
                resample: bool = False):
    """`cohort.load_subject` with its errors as one-line UserErrors."""
    try:
        return cohort.load_subject(root, record, channels, convert_seconds=convert_seconds,
                                   resample=resample)
    except cohort.CohortError as error:
        raise UserError(one_line(error)) from None
