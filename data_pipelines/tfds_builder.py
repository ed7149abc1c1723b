"""A TFDS dataset builder over a cohort folder: one example per axial slice.

A cohort cannot be downloaded, so it follows the TFDS convention for such data: the cohort
root is the `manual_dir`. Since a cohort's in-plane shape and modalities vary, the builder's
features come from the cohort itself: `CohortConfig.from_cohort` reads the manifest and the
first subject's reference grid, and names the config by a hash of the manifest, of the sizes
and modification times of the files it lists, of the loading options and of the
normalization constants, so a changed cohort is prepared again into a new folder.

Each example holds `subject_id`, `slice_index`, `num_slices`, `group`, `site`,
`brain_fraction` (of the slice), every channel the manifest has (normalized float32 [X, Y],
or [X, Y, 2k] for the MRF subspace, whose basis rank enters the config; zeros where a subject
lacks it), `brain_mask` (uint8) and `labels` (uint8, zeros when absent).
Splits are the manifest's split names. Examples are written in (subject, slice) order
(`disable_shuffling`), in the random-access `array_record` format, so the input pipeline can
shuffle by index, resume exactly and gather neighbouring slices for 2.5D input; a subject
index (offsets, slice counts, brain fractions, channels present) is kept in the dataset's
metadata. Preparation goes subject by subject; TFDS buffers at most ~1 GB of serialized
examples before spilling to disk, a few paper-size subjects.

    builder = prepare_cohort("/data/cohort")       # prepares once, then reuses
    ds = builder.as_data_source("healthy_train")    # random access, numpy
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from data_pipelines import cohort as cohort_lib
from qsnet_jax.physics import channels as channels_lib

# TensorFlow only feeds data: JAX owns the accelerators. (Its log level is set where every
# project import starts, qsnet_jax/__init__.py.)
tf.config.set_visible_devices([], "GPU")
tf.get_logger().setLevel("ERROR")

# Bump when the example layout or the builder's logic changes: it enters the config hash.
LAYOUT_VERSION = "3"


class CohortConfig(tfds.core.BuilderConfig):
    """A config derived from one cohort: its channels, its slice shape and loading options."""

    def __init__(self, *, name, channels, slice_shape, splits, convert_seconds, resample,
                 fingerprint, subspace_planes=0, **kwargs):
        super().__init__(name=name, version="1.0.0", **kwargs)
        self.channels = tuple(channels)
        self.subspace_planes = int(subspace_planes)  # 2k of the mrf_subspace; 0: none
        self.slice_shape = tuple(int(s) for s in slice_shape)
        self.splits = tuple(splits)
        self.convert_seconds = bool(convert_seconds)
        self.resample = bool(resample)
        self.fingerprint = fingerprint

    def slice_feature_shape(self, name):
        """A channel's per-slice shape: [X, Y], or [X, Y, 2k] for the MRF subspace."""
        planes = channels_lib.num_planes(name, self.subspace_planes)
        return self.slice_shape + ((planes,) if name in channels_lib.MULTI_PLANE_CHANNELS
                                   else ())

    @classmethod
    def from_cohort(cls, cohort_dir, *, convert_seconds=False, resample=False):
        root = os.fspath(cohort_dir)
        records = cohort_lib.read_manifest(root)
        channels = [c for c in channels_lib.INPUT_CHANNELS if any(c in r.files for r in records)]
        subspace_planes = cohort_lib.subspace_planes(root, records) or 0
        slice_shape = cohort_lib.canonical_shape(records[0].path(root, records[0].reference))[:2]
        h = hashlib.sha256()
        with open(os.path.join(root, cohort_lib.MANIFEST), "rb") as f:
            h.update(f.read())
        for r in records:
            for column in sorted(r.files):
                st = os.stat(r.path(root, column))
                h.update(f"{r.subject}/{column}:{st.st_size}:{st.st_mtime_ns};".encode())
        if subspace_planes:
            basis = np.load(os.path.join(root, cohort_lib.BASIS_FILE), allow_pickle=False)
            h.update(np.ascontiguousarray(basis).tobytes())
        normalization = {k: (v.lo_ms, v.hi_ms) for k, v in channels_lib.TIMING_SCALES.items()}
        h.update(json.dumps([LAYOUT_VERSION, convert_seconds, resample, normalization,
                             channels_lib.PERCENTILE, list(slice_shape), subspace_planes,
                             channels_lib.SUBSPACE_NORMALIZATION]).encode())
        fingerprint = h.hexdigest()
        splits = sorted({r.split for r in records})
        return cls(name=f"c{fingerprint[:16]}", channels=channels, slice_shape=slice_shape,
                   splits=splits, convert_seconds=convert_seconds, resample=resample,
                   fingerprint=fingerprint, subspace_planes=subspace_planes,
                   description=f"cohort {root}: {len(records)} subjects, channels "
                               f"{channels}, slices {tuple(slice_shape)}")


class QsnetCohort(tfds.core.GeneratorBasedBuilder):
    """Axial slices of a QS-Net cohort (manifest.csv + NIfTI), one example per slice."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One example per axial slice, array_record, ordered."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    A QS-Net cohort is not downloadable. Point `manual_dir` at the cohort root: the folder
    holding manifest.csv (subject,group,site,split and one column per modality: t1map, t2map,
    pdmap, t1w, t2w, t1flair, t2flair, swi, brain_mask, labels, each a NIfTI path relative to
    the root). `python -m data_pipelines.cohort check ROOT` validates it first. The digital
    phantom cohort (data_pipelines.phantom) writes this layout.
    """
    BUILDER_CONFIGS = []

    def __init__(self, *, cohort_dir, convert_seconds=False, resample=False, data_dir=None,
                 file_format="array_record", **kwargs):
        self.cohort_dir = os.path.abspath(os.path.expanduser(os.fspath(cohort_dir)))
        config = CohortConfig.from_cohort(self.cohort_dir, convert_seconds=convert_seconds,
                                          resample=resample)
        if data_dir is None:
            data_dir = os.path.join(self.cohort_dir, "tfds")
        super().__init__(data_dir=os.path.expanduser(os.fspath(data_dir)), config=config,
                         file_format=file_format, **kwargs)

    def _info(self):
        cfg = self.builder_config
        shape = cfg.slice_shape
        zlib = tfds.features.Encoding.ZLIB
        features = {
            "subject_id": tfds.features.Text(),
            "group": tfds.features.Text(),
            "site": tfds.features.Text(),
            "slice_index": tfds.features.Scalar(np.int32),
            "num_slices": tfds.features.Scalar(np.int32),
            "brain_fraction": tfds.features.Scalar(np.float32),
            "brain_mask": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=zlib),
            "labels": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=zlib),
        }
        for name in cfg.channels:
            features[name] = tfds.features.Tensor(shape=cfg.slice_feature_shape(name),
                                                  dtype=np.float32, encoding=zlib)
        return self.dataset_info_from_configs(
            description="Axial slices of a QS-Net cohort: normalized quantitative maps and "
                        "weighted contrasts (docs/design.md section 3), brain mask, tumor labels.",
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(),
            # Examples keep the generation order, (subject, slice): the pipeline indexes them.
            disable_shuffling=True,
            homepage="https://doi.org/10.1002/mp.70435",
        )

    def _split_generators(self, dl_manager):
        manual = os.path.abspath(os.fspath(dl_manager.manual_dir))
        records = cohort_lib.read_manifest(manual)
        if os.path.realpath(manual) != os.path.realpath(self.cohort_dir):
            raise cohort_lib.CohortError(
                f"manual_dir {manual} is not the cohort this builder was configured from "
                f"({self.cohort_dir})")
        by_split = {}
        for r in records:
            by_split.setdefault(r.split, []).append(r)
        self._problems = []
        self.info.metadata["subjects"] = {}
        self.info.metadata["channels"] = list(self.builder_config.channels)
        self.info.metadata["subspace_planes"] = self.builder_config.subspace_planes
        self.info.metadata["slice_shape"] = list(self.builder_config.slice_shape)
        self.info.metadata["cohort_dir"] = self.cohort_dir
        names = sorted(by_split)
        self._later = {split: [r for n in names[i + 1:] for r in by_split[n]]
                       for i, split in enumerate(names)}
        return {split: self._generate_examples(manual, split, by_split[split],
                                               last=(split == names[-1]))
                for split in names}

    def _generate_examples(self, root, split, records, *, last):
        cfg = self.builder_config
        index = []
        key = 0
        for record in records:
            try:
                subject = cohort_lib.load_subject(root, record, convert_seconds=cfg.convert_seconds,
                                                  resample=cfg.resample)
            except cohort_lib.CohortError as e:
                self._problems.append(str(e))
                continue
            if subject.shape[:2] != cfg.slice_shape:
                self._problems.append(
                    f"{record.subject}: {record.path(root, record.channels[0])}: slice shape "
                    f"{subject.shape[:2]} differs from the cohort's {cfg.slice_shape} (all "
                    "subjects of a cohort need one in-plane shape)")
                continue
            nz = subject.shape[2]
            mask = subject.brain_mask
            fractions = mask.reshape(-1, nz).mean(axis=0).astype(np.float32)
            index.append({"subject": record.subject, "group": record.group,
                          "site": record.site, "offset": key, "num_slices": nz,
                          "channels": sorted(subject.volumes),
                          "brain_fraction": [round(float(f), 6) for f in fractions]})
            for z in range(nz):
                example = {
                    "subject_id": record.subject, "group": record.group, "site": record.site,
                    "slice_index": z, "num_slices": nz, "brain_fraction": fractions[z],
                    "brain_mask": np.ascontiguousarray(mask[:, :, z]),
                    "labels": np.ascontiguousarray(subject.labels[:, :, z]),
                }
                for name in cfg.channels:
                    vol = subject.volumes.get(name)
                    example[name] = (np.zeros(cfg.slice_feature_shape(name), np.float32)
                                     if vol is None else np.ascontiguousarray(vol[:, :, z]))
                yield key, example
                key += 1
            del subject
        self.info.metadata["subjects"][split] = index
        if self._problems and not index and not last:
            # TFDS stops at a split without examples: check the later splits' subjects now,
            # so that the report still holds every problem of the cohort
            for record in self._later[split]:
                try:
                    cohort_lib.load_subject(root, record, convert_seconds=cfg.convert_seconds,
                                            resample=cfg.resample)
                except cohort_lib.CohortError as e:
                    self._problems.append(str(e))
        if self._problems and (last or not index):
            raise cohort_lib.CohortError(
                f"cannot prepare {self.cohort_dir}: {len(self._problems)} subject(s) with "
                "problems:\n" + "\n".join(self._problems))


def prepare_cohort(cohort_dir, *, data_dir=None, convert_seconds=False, resample=False):
    """The builder of `cohort_dir`, prepared (once: later calls reuse the prepared data)."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    # TFDS warns "Using custom data configuration" and "no dataset_info.json" on every
    # new cohort config: that is this builder's normal way of working
    absl_logger.setLevel(logging.ERROR)
    try:
        return _prepare(cohort_dir, data_dir, convert_seconds, resample)
    finally:
        absl_logger.setLevel(level)


def _prepare(cohort_dir, data_dir, convert_seconds, resample):
    builder = QsnetCohort(cohort_dir=cohort_dir, data_dir=data_dir or None,
                          convert_seconds=convert_seconds, resample=resample)
    if not builder.is_prepared():
        # TFDS prints "Downloading and preparing dataset ..." to stdout, which is wrong for
        # a local cohort, and per-split progress bars (ANSI redraws, useless in logs): both
        # are dropped; one line of our own says what happens.
        print(f"preparing the TFDS data of {builder.cohort_dir} in {builder.data_dir} "
              "(once per cohort and normalization)", file=sys.stderr, flush=True)
        was_active = tqdm_utils._active  # TFDS has no getter
        tfds.display_progress_bar(False)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(manual_dir=builder.cohort_dir))
        except OSError:
            # another process (a second host on a shared disk) finished the same config
            # first and its rename won: use its data
            builder = QsnetCohort(cohort_dir=cohort_dir, data_dir=data_dir or None,
                                  convert_seconds=convert_seconds, resample=resample)
            if not builder.is_prepared():
                raise
        finally:
            tfds.display_progress_bar(was_active)
    return builder


def subject_index(builder, split):
    """The split's subjects in example order: dicts with subject, group, site, offset,
    num_slices, channels, brain_fraction (list per slice)."""
    subjects = builder.info.metadata.get("subjects", {})
    if split not in subjects:
        raise KeyError(f"split '{split}' is not in cohort {builder.cohort_dir}; its splits: "
                       f"{sorted(subjects)}")
    return subjects[split]
