"""tf.data pipelines streaming slice batches from a prepared cohort (docs/interfaces.md).

The cohort is prepared once by the TFDS builder (`data_pipelines.tfds_builder`) into the
random-access array_record format, examples in (subject, slice) order. The pipelines here are
index based: a small Python generator decides *which* example goes where (shuffle, shard,
augmentation parameters, padding) and a parallel `tf.data` map reads and decodes the examples.
That makes three things exact and cheap:

- resume: training batch i depends only on (seed, process, i): the per-epoch permutation is
  seeded by (seed, process_index, epoch), so `start_step=i` computes the epoch and the offset
  and starts there, decoding nothing before it;
- sharding: process p of P owns a contiguous 1/P of the split's (filtered) slice indices
  (disjoint, together the whole split) and reads only those, plus their 2.5D neighbours;
- 2.5D context: the neighbours z-k .. z+k of a slice are read by index. Edge slices are
  padded by replicating the edge slice (z clipped to [0, Z-1]): a zero slice would look like
  the end of the head to the network, a replicated one keeps the tissue it sees plausible.

A named input channel gives one network channel per plane: one for a map or weighted image,
2k for the MRF subspace (`mrf_subspace`, its coefficient channels in the file's order). The
input-major order of docs/interfaces.md holds per plane: for each input channel, for each of
its planes, slices z-k .. z+k; this is `qsnet_jax.inference.stack_context` applied to the
channels stacked plane by plane, so training and whole-volume synthesis see the same layout.

Training batches: slices whose brain fraction is below `min_brain_fraction` are skipped; each
epoch is a permutation of the process's slices, cut into `len // batch_size` batches (the
remainder is dropped). Augmentation, fixed per (seed, process, epoch, position):
- left-right flip (probability 1/2) of inputs, targets, mask and labels together, along H:
  slices are [X, Y] in RAS and X is the left-right axis;
- a multiplicative gain in [1 - j, 1 + j] per qualitative (weighted) input channel, the same
  for its context slices, not clipped afterwards (it models the scale uncertainty of the
  percentile normalization of a weighted image); never applied to the quantitative maps
  (t1map, t2map in fixed physical units, and pdmap with them), whose values are what a
  model fed quantitative input is meant to trust.

Evaluation batches: the process's subjects (contiguous 1/P of the split's subjects), every
slice in order, no shuffle, no augmentation; the last batch is padded with `valid` = 0, and
processes with fewer batches add all-padding batches so every process runs the same number of
steps (multi-host jit needs it). `assemble_volumes` rebuilds the volumes.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from data_pipelines import tfds_builder  # hides the GPUs from TensorFlow
from qsnet_jax.physics import channels as channels_lib

PER_SLICE_KEYS = ("inputs", "targets", "brain_mask", "labels")
PATCH_DRAWS = 4  # uniform numbers per training item that place its patch (patch_origin)


def _get(data_config, key, default):
    if data_config is None:
        return default
    if isinstance(data_config, dict):
        return data_config.get(key, default)
    return getattr(data_config, key, default) if hasattr(data_config, key) else default


def stage_split(config, stage_name: str) -> tuple[str, str]:
    """(train split, eval split) of a stage of the schedule (`config.pretrain`, ...)."""
    if stage_name not in config or not hasattr(config[stage_name], "train_split"):
        raise KeyError(f"unknown stage '{stage_name}': the config has no "
                       f"{stage_name}.train_split; stages: {list(config.stages)}")
    stage = config[stage_name]
    return stage.train_split, stage.eval_split


def _process(process_index, process_count):
    if process_index is None or process_count is None:
        import jax  # only when not overridden: tests simulate processes without JAX

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return int(process_index), int(process_count)


@dataclasses.dataclass
class SplitView:
    """A prepared split with the channel layout a pipeline asks for."""

    source: object  # TFDS array_record data source (random access, numpy)
    split: str
    subjects: list  # metadata dicts: subject, group, site, offset, num_slices, ...
    input_channels: tuple
    target_channels: tuple
    context: int
    slice_shape: tuple
    patch_shape: tuple | None = None  # training on patches of this (H, W); None: whole slices
    tumor_patch_fraction: float = 0.0  # share of patches placed on a tumor voxel (when any)
    subspace_planes: int = 0  # 2k of the cohort's mrf_subspace (0: none)
    cache_bytes: int = 0  # decoded slices kept in memory up to this many bytes (0: none)

    def __post_init__(self):
        self._cache: dict = {}
        self._cached_bytes = 0
        n = len(self.source)
        self.example_subject = np.zeros(n, np.int32)
        self.example_slice = np.zeros(n, np.int32)
        for s, subject in enumerate(self.subjects):
            lo, nz = subject["offset"], subject["num_slices"]
            self.example_subject[lo:lo + nz] = s
            self.example_slice[lo:lo + nz] = np.arange(nz)
        self.subject_ids = np.array([s["subject"] for s in self.subjects] + [""], dtype=object)
        self.jitter_mask = np.array([c in channels_lib.WEIGHTED_CHANNELS
                                     for c in self.input_channels])
        self.planes = np.array([channels_lib.num_planes(c, self.subspace_planes)
                                for c in self.input_channels])

    @property
    def num_input_planes(self):
        return int(self.planes.sum()) * (2 * self.context + 1)

    @staticmethod
    def _planes(example, name):
        """A channel of one example as [X, Y, planes]."""
        value = example[name]
        return value[..., None] if value.ndim == 2 else value

    def _read(self, index):
        """The example's arrays this view uses, decoded; kept in memory while the cache has
        room (training reads every slice once per epoch: decoding all of an example's
        zlib-compressed channels, used or not, would otherwise bound the step rate)."""
        index = int(index)
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        example = self._decode(index)
        if self.cache_bytes > 0:
            keep = set(self.input_channels) | set(self.target_channels) | {"brain_mask",
                                                                           "labels"}
            example = {k: v for k, v in example.items() if k in keep}
            size = sum(np.asarray(v).nbytes for v in example.values())
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[index] = example
                self._cached_bytes += size
        return example

    def _decode(self, index):
        example = self.source[int(index)]
        s = self.example_subject[index]
        subject_id = example["subject_id"]
        subject_id = subject_id.decode() if isinstance(subject_id, bytes) else subject_id
        if subject_id != self.subjects[s]["subject"] or \
                int(example["slice_index"]) != self.example_slice[index]:
            raise RuntimeError(
                f"prepared data out of order at example {index} of split {self.split}: "
                f"found {subject_id} z={int(example['slice_index'])}, expected "
                f"{self.subjects[s]['subject']} z={self.example_slice[index]}; delete the "
                "prepared folder to prepare it again")
        return example

    def fetch(self, index, flip, gains, draw=None):
        """One slice, or with `self.patch_shape` one patch of it: (inputs, targets,
        brain_mask, labels, index, patch origin) as numpy float32/int32/int64/int32.
        `draw`: the four uniform numbers that place the patch (`patch_origin`)."""
        whole = self.fetch_slice(index, flip, gains)
        if self.patch_shape is None or int(index) < 0:
            return whole + (np.zeros(2, np.int32),)
        top, left = patch_origin(whole[2][..., 0], whole[3][..., 0], draw, self.patch_shape,
                                 self.tumor_patch_fraction)
        height, width = self.patch_shape
        crop = [np.ascontiguousarray(a[top:top + height, left:left + width]) for a in whole[:4]]
        return (*crop, whole[4], np.array([top, left], np.int32))

    def fetch_slice(self, index, flip, gains):
        """One whole slice: (inputs, targets, brain_mask, labels, index)."""
        x, y = self.slice_shape
        index = int(index)
        if index < 0:  # padding
            return (np.zeros((x, y, self.num_input_planes), np.float32),
                    np.zeros((x, y, len(self.target_channels)), np.float32),
                    np.zeros((x, y, 1), np.float32), np.zeros((x, y, 1), np.int32),
                    np.int64(index))
        example = self._read(index)
        planes = []
        if self.context:
            subject = self.subjects[self.example_subject[index]]
            z, nz, offset = self.example_slice[index], subject["num_slices"], subject["offset"]
            neighbours = {}
            for d in range(-self.context, self.context + 1):
                zz = min(max(z + d, 0), nz - 1)
                if zz not in neighbours:
                    neighbours[zz] = example if zz == z else self._read(offset + zz)
            span = [neighbours[min(max(z + d, 0), nz - 1)]
                    for d in range(-self.context, self.context + 1)]
            for c in self.input_channels:
                stacked = np.stack([self._planes(e, c) for e in span], axis=-1)  # [X,Y,P,2k+1]
                planes.append(stacked.reshape(stacked.shape[:2] + (-1,)))
            inputs = np.concatenate(planes, axis=-1)
            gain_per_plane = np.repeat(np.repeat(gains, self.planes), 2 * self.context + 1)
        else:
            inputs = np.concatenate([self._planes(example, c) for c in self.input_channels],
                                    axis=-1)
            gain_per_plane = np.repeat(gains, self.planes)
        inputs = inputs.astype(np.float32, copy=False)
        if np.any(gain_per_plane != 1):
            inputs = inputs * gain_per_plane.astype(np.float32)
        targets = np.stack([example[c] for c in self.target_channels], axis=-1)
        mask = example["brain_mask"].astype(np.float32)[..., None]
        labels = example["labels"].astype(np.int32)[..., None]
        if flip:
            inputs, targets, mask, labels = (a[::-1] for a in (inputs, targets, mask, labels))
        return (np.ascontiguousarray(inputs, np.float32),
                np.ascontiguousarray(targets, np.float32),
                np.ascontiguousarray(mask), np.ascontiguousarray(labels), np.int64(index))

    def to_batch(self, arrays):
        inputs, targets, mask, labels, index, origin = arrays
        valid = index >= 0
        subject = np.where(valid, self.example_subject[np.maximum(index, 0)], -1)
        return {
            "inputs": inputs, "targets": targets, "brain_mask": mask, "labels": labels,
            "subject_id": self.subject_ids[subject],
            "slice_index": np.where(valid, self.example_slice[np.maximum(index, 0)],
                                    -1).astype(np.int32),
            "valid": valid.astype(np.float32),
            "patch_origin": origin,
        }

    @property
    def item_shape(self):
        """(H, W) of one item: the patch shape when training on patches, else the slice's."""
        return self.patch_shape or self.slice_shape


def open_split(cohort_dir, split, data_config) -> SplitView:
    """Prepare the cohort if needed and open `split` with the config's channels."""
    inputs = tuple(_get(data_config, "input_channels", channels_lib.QUANTITATIVE_CHANNELS))
    targets = tuple(_get(data_config, "target_channels", channels_lib.WEIGHTED_CHANNELS))
    channels_lib.check_channel_names(inputs, what="input channel")
    channels_lib.check_channel_names(targets, allowed=channels_lib.ALL_CHANNELS,
                                     what="target channel")
    context = int(_get(data_config, "context_slices", 0))
    if context < 0:
        raise ValueError(f"context_slices must be >= 0, got {context}")
    builder = tfds_builder.prepare_cohort(
        cohort_dir, data_dir=_get(data_config, "tfds_data_dir", "") or None,
        convert_seconds=bool(_get(data_config, "convert_seconds", False)),
        resample=bool(_get(data_config, "resample", False)))
    subjects = tfds_builder.subject_index(builder, split)
    missing = {s["subject"]: [c for c in inputs + targets if c not in s["channels"]]
               for s in subjects}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        raise ValueError(f"split '{split}' of {cohort_dir}: subject(s) lack channel(s) the "
                         f"config asks for: {missing}")
    source = builder.as_data_source(split)
    cache_mb = float(_get(data_config, "cache_mb", 0))
    if cache_mb < 0:
        raise ValueError(f"config.data.cache_mb must be >= 0 (0 = no cache), got {cache_mb}")
    return SplitView(source=source, split=split, subjects=subjects, input_channels=inputs,
                     target_channels=targets, context=context,
                     slice_shape=tuple(builder.builder_config.slice_shape),
                     subspace_planes=builder.builder_config.subspace_planes,
                     cache_bytes=int(cache_mb * 2**20))


def _dataset(view: SplitView, plan: Iterable, *, batch_size, drop_remainder, prefetch):
    """tf.data: plan of (index, flip, gains, draw) -> parallel read -> batch -> prefetch."""
    c_in = len(view.input_channels)
    x, y = view.item_shape
    ds = tf.data.Dataset.from_generator(
        lambda: plan, output_signature=(tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.bool),
                                        tf.TensorSpec((c_in,), tf.float32),
                                        tf.TensorSpec((PATCH_DRAWS,), tf.float32)))

    def read(index, flip, gains, draw):
        out = tf.numpy_function(view.fetch, [index, flip, gains, draw],
                                [tf.float32, tf.float32, tf.float32, tf.int32, tf.int64,
                                 tf.int32], stateful=False)
        out[0].set_shape((x, y, view.num_input_planes))
        out[1].set_shape((x, y, len(view.target_channels)))
        out[2].set_shape((x, y, 1))
        out[3].set_shape((x, y, 1))
        out[4].set_shape(())
        out[5].set_shape((2,))
        return tuple(out)

    ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.prefetch(max(int(prefetch), 1))
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    return ds


def patch_origin(brain_mask, labels, draw, patch_shape, tumor_fraction=0.0):
    """(top, left) of a training patch that holds brain: a voxel is chosen among the
    slice's brain voxels (among its tumor voxels instead, with probability `tumor_fraction`,
    when the slice has any) and the patch is placed so that this voxel lies at a random
    position inside it, clipped to the slice. A slice without brain (possible only with
    min_brain_fraction 0) gets a patch anywhere.

    draw: four uniform numbers in [0, 1): which voxel, its row and column inside the patch,
    and whether to aim at the tumor. They come from the seeded epoch plan, so the patch is a
    pure function of (seed, process, step) like the slice order.
    """
    pick_voxel, row_in_patch, col_in_patch, aim_at_tumor = (float(d) for d in draw)
    candidates = brain_mask > 0
    tumor = labels > 0
    if aim_at_tumor < tumor_fraction and tumor.any():
        candidates = tumor
    if not candidates.any():
        candidates = np.ones(brain_mask.shape, bool)
    rows, cols = np.nonzero(candidates)
    k = min(int(pick_voxel * len(rows)), len(rows) - 1)
    height, width = patch_shape
    top = int(np.clip(rows[k] - int(row_in_patch * height), 0, brain_mask.shape[0] - height))
    left = int(np.clip(cols[k] - int(col_in_patch * width), 0, brain_mask.shape[1] - width))
    return top, left


def training_patch_shape(data_config, slice_shape) -> tuple | None:
    """(H, W) of the training patches from `data.patch_size` (0: None, whole slices); a
    size larger than the slice is cut to it (a small cohort trains on whole slices)."""
    size = int(_get(data_config, "patch_size", 0))
    if size < 0:
        raise ValueError(f"config.data.patch_size must be >= 0 (0 = whole slices), got {size}")
    fraction = float(_get(data_config, "tumor_patch_fraction", 0.0))
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"config.data.tumor_patch_fraction must be in [0, 1], got {fraction}")
    if size == 0:
        return None
    return min(size, int(slice_shape[0])), min(size, int(slice_shape[1]))


def training_indices(view: SplitView, min_brain_fraction, process_index, process_count):
    """The example indices process p trains on: slices with enough brain, its 1/P part."""
    kept = [s["offset"] + z for s in view.subjects
            for z, fraction in enumerate(s["brain_fraction"]) if fraction >= min_brain_fraction]
    return np.array_split(np.asarray(kept, np.int64), process_count)[process_index]


def every_nth_voxel(batches, stride: int):
    """`batches` with each per-slice array cut to every `stride`-th voxel along both in-plane
    axes (from voxel 0). For a model without spatial context (the per-voxel MLP) this is a
    voxel subsample that costs stride**2 less per step; for any other model it is wrong."""
    if stride < 1:
        raise ValueError(f"voxel stride must be >= 1, got {stride}")
    for batch in batches:
        if stride > 1:
            batch = {**batch, **{key: batch[key][:, ::stride, ::stride]
                                 for key in PER_SLICE_KEYS if key in batch}}
        yield batch


def make_train_iterator(cohort_dir, split, data_config, *, batch_size, seed, start_step=0,
                        process_index=None, process_count=None) -> Iterator[dict]:
    """Infinite iterator of training batches (per process); batch i is the same whether the
    iterator started at 0 and advanced i times or started at `start_step=i`."""
    p, count = _process(process_index, process_count)
    view = open_split(cohort_dir, split, data_config)
    indices = training_indices(view, float(_get(data_config, "min_brain_fraction", 0.0)),
                               p, count)
    n = len(indices)
    if n == 0:
        raise ValueError(f"split '{split}' of {cohort_dir} has no training slice for process "
                         f"{p} of {count} (min_brain_fraction "
                         f"{_get(data_config, 'min_brain_fraction', 0.0)})")
    flip_lr = bool(_get(data_config, "flip_lr", False))
    jitter = float(_get(data_config, "intensity_jitter", 0.0))
    c_in = len(view.input_channels)
    view.patch_shape = training_patch_shape(data_config, view.slice_shape)
    view.tumor_patch_fraction = float(_get(data_config, "tumor_patch_fraction", 0.0))

    def epoch_plan(epoch):
        rng = np.random.default_rng([int(seed), p, epoch])
        order = indices[rng.permutation(n)]
        flips = rng.random(n) < 0.5 if flip_lr else np.zeros(n, bool)
        gains = np.ones((n, c_in), np.float32)
        if jitter:
            draw = rng.uniform(1 - jitter, 1 + jitter, (n, c_in)).astype(np.float32)
            gains = np.where(view.jitter_mask[None], draw, 1.0).astype(np.float32)
        # drawn last, so a whole-slice stream is the same with or without this option
        places = (rng.random((n, PATCH_DRAWS)).astype(np.float32) if view.patch_shape
                  else np.zeros((n, PATCH_DRAWS), np.float32))
        return order, flips, gains, places

    batches_per_epoch = n // batch_size

    def plan():
        cached = {}

        def epoch_data(epoch):
            if epoch not in cached:
                cached.clear()
                cached[epoch] = epoch_plan(epoch)
            return cached[epoch]

        for step in itertools.count(int(start_step)):
            if batches_per_epoch:  # drop each epoch's remainder
                epoch, j = divmod(step, batches_per_epoch)
                positions = [(epoch, j * batch_size + b) for b in range(batch_size)]
            else:  # a split smaller than a batch: epochs run on into each other
                positions = [divmod(step * batch_size + b, n) for b in range(batch_size)]
            for epoch, pos in positions:
                order, flips, gains, places = epoch_data(epoch)
                yield order[pos], flips[pos], gains[pos], places[pos]

    ds = _dataset(view, plan(), batch_size=batch_size, drop_remainder=True,
                  prefetch=_get(data_config, "prefetch", 2))
    return (view.to_batch(arrays) for arrays in ds.as_numpy_iterator())


def eval_subjects(view: SplitView, process_count, subjects=None) -> list[list[dict]]:
    """The split's subjects (or the named ones) cut into `process_count` contiguous parts."""
    chosen = [s for s in view.subjects if subjects is None or s["subject"] in subjects]
    if subjects is not None:
        unknown = sorted(set(subjects) - {s["subject"] for s in chosen})
        if unknown:
            raise ValueError(f"subject(s) {unknown} are not in split '{view.split}'")
    parts = np.array_split(np.arange(len(chosen)), process_count)
    return [[chosen[i] for i in part] for part in parts]


def make_eval_iterator(cohort_dir, split, data_config, *, batch_size, process_index=None,
                       process_count=None, subjects: Sequence[str] | None = None
                       ) -> Iterator[dict]:
    """Finite iterator over whole subjects in slice order (this process's subjects), no
    shuffle, no augmentation, the last batch padded with `valid` = 0; every process yields
    the same number of batches. `subjects`: only these (e.g. a validation subset)."""
    p, count = _process(process_index, process_count)
    view = open_split(cohort_dir, split, data_config)
    parts = eval_subjects(view, count, subjects)
    num_batches = max(-(-sum(s["num_slices"] for s in part) // batch_size) for part in parts)
    mine = [s["offset"] + z for s in parts[p] for z in range(s["num_slices"])]
    mine += [-1] * (num_batches * batch_size - len(mine))
    no_gain = np.ones(len(view.input_channels), np.float32)
    no_draw = np.zeros(PATCH_DRAWS, np.float32)
    plan = ((np.int64(i), False, no_gain, no_draw) for i in mine)
    ds = _dataset(view, plan, batch_size=batch_size, drop_remainder=False,
                  prefetch=_get(data_config, "prefetch", 2))
    return (view.to_batch(arrays) for arrays in ds.as_numpy_iterator())


def assemble_volumes(batches: Iterable[dict]) -> dict:
    """{subject_id: {key: [X, Y, Z, C]}} from evaluation batches, for every per-slice array
    of the batches ([B, H, W, C]: inputs, targets, brain_mask, labels, and extra keys such as
    predictions added by the caller). Padding (`valid` = 0) is ignored. Raises ValueError when
    a subject's slices are not exactly 0 .. Z-1."""
    slices: dict = {}
    for batch in batches:
        valid = np.asarray(batch["valid"]) > 0
        size = valid.shape[0]
        keys = [k for k, v in batch.items()
                if k not in ("subject_id", "slice_index", "valid")
                and getattr(v, "ndim", 0) == 4 and v.shape[0] == size]
        for b in np.flatnonzero(valid):
            subject = str(batch["subject_id"][b])
            z = int(batch["slice_index"][b])
            per_subject = slices.setdefault(subject, {})
            if z in per_subject:
                raise ValueError(f"subject {subject}: slice {z} appears twice")
            per_subject[z] = {k: np.asarray(batch[k][b]) for k in keys}
    volumes = {}
    for subject, per_subject in slices.items():
        zs = sorted(per_subject)
        if zs != list(range(len(zs))):
            missing = sorted(set(range(zs[-1] + 1)) - set(zs))
            raise ValueError(f"subject {subject}: slices {missing} missing; evaluation "
                             "batches must hold whole subjects")
        keys = per_subject[0].keys()
        volumes[subject] = {k: np.stack([per_subject[z][k] for z in zs], axis=2)
                            for k in keys}
    return volumes
