"""Fit, store and apply the per-voxel uncertainty of a trained generator, and the downstream
tumor segmenter (the file policy around qsnet_jax.uncertainty and models.segmenter).

  STAGE_DIR/uncertainty/scale_net.msgpack   the residual-scale network (method residual_net)
  STAGE_DIR/uncertainty/calibration.json    method, level, per-contrast conformal quantiles,
                                            calibration split and subjects, fit details
  SEGMENTER_DIR/segmenter.msgpack, segmenter.json   the BraSyn-style segmenter

The scale network learns the generator's |error| on the training split(s) of the stage; the
conformal quantiles come from the calibration split (config.uncertainty.calibration_split),
never the test split. Both are fitted once and reused by `evaluate` and `synthesize`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from qsnet_jax import inference, io, volume_rescale
from qsnet_jax import uncertainty as unc
from qsnet_jax.models import segmenter
from qsnet_jax.train import checkpoints
from workflow import cohorts, synthesize
from workflow.errors import UserError

# what the downstream segmenter is run on, as metrics.json and the reports name it
GROUND_TRUTH, SYNTHESIZED = "ground truth", "synthesized"

UNCERTAINTY_DIR = "uncertainty"
SCALE_NET_FILE = "scale_net.msgpack"
CALIBRATION_FILE = "calibration.json"
SEGMENTER_DIR = "segmenter"
SEGMENTER_FILE = "segmenter.msgpack"
SEGMENTER_META = "segmenter.json"
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"  # Orbax's, in every step dir


def section(config, name: str):
    """``config.<name>`` (uncertainty | segmentation), or None for a run whose stored config
    predates the section (it then gets neither)."""
    return config[name] if name in config else None


def enabled(config, name: str) -> bool:
    settings = section(config, name)
    return settings is not None and bool(settings.enabled)


def checkpoint_id(stage_dir: str, step_dir: str | None = None) -> str:
    """Which generator the fitted uncertainty belongs to ("" without a checkpoint): the
    step dir (default: the stage's best-or-latest) relative to the stage, and the commit
    time Orbax wrote inside it (a step dir without it: its mtime). A retrained stage gets
    another id, so its uncertainty is refitted; a copied or moved work dir keeps it."""
    if step_dir is None:
        try:
            step_dir = checkpoints.resolve_checkpoint(stage_dir, prefer_best=True)
        except FileNotFoundError:
            return ""
    try:
        with open(os.path.join(step_dir, CHECKPOINT_METADATA)) as f:
            stamp = str(json.load(f)["commit_timestamp_nsecs"])
    except (OSError, ValueError, KeyError, TypeError):
        stamp = f"{os.path.getmtime(step_dir):.0f}"
    return f"{os.path.relpath(step_dir, os.path.abspath(stage_dir))}@{stamp}"


def stage_dir_of(model_path: str) -> str:
    """The stage folder of a work dir, stage dir or checkpoint step dir (where the stage's
    uncertainty lives)."""
    step_dir = checkpoints.resolve_checkpoint(model_path, prefer_best=True)
    return os.path.dirname(os.path.dirname(step_dir))


@dataclasses.dataclass
class UncertaintyModel:
    """A fitted scale estimate plus its conformal quantiles; ``half_width`` applies both."""

    method: str
    level: float
    quantiles: dict[str, float]
    target_channels: tuple[str, ...]
    scale_fn: Callable | None = None  # the residual net, for residual_net and residual_gain
    meta: dict = dataclasses.field(default_factory=dict)
    levels: tuple[float, ...] | None = None  # the rescaling the calibrated synthesis had
    gains: dict[str, float] | None = None  # the gain term per contrast (method residual_gain)

    def scale(self, predict_fn, inputs, prediction, brain_mask, *, batch_size: int,
              context_slices: int = 0):
        sigma = compute_scale(self.method, predict_fn, self.scale_fn, inputs, prediction,
                              brain_mask, batch_size=batch_size, context_slices=context_slices,
                              levels=self.levels)
        if self.gains is None:
            return sigma
        return unc.with_gain(sigma, prediction, self.gains, self.target_channels)

    def half_width(self, predict_fn, inputs, prediction, brain_mask, *, batch_size: int,
                   context_slices: int = 0):
        sigma = self.scale(predict_fn, inputs, prediction, brain_mask, batch_size=batch_size,
                           context_slices=context_slices)
        half = unc.half_width(sigma, self.quantiles, self.target_channels)
        return np.where(np.asarray(brain_mask)[..., None] > 0, half, 0.0).astype(np.float32)


def compute_scale(method: str, predict_fn, scale_fn, inputs, prediction, brain_mask, *,
                  batch_size: int, context_slices: int = 0, levels=None) -> np.ndarray:
    """sigma ``[X, Y, Z, C]`` by ``method`` (the residual net's for residual_net and
    residual_gain, whose gain term ``UncertaintyModel.scale`` adds | flip | constant); the
    flipped synthesis is rescaled to ``levels`` like ``prediction`` was."""
    if method in unc.SCALE_NET_METHODS:
        return unc.predict_scale(scale_fn, inputs, prediction, brain_mask,
                                 batch_size=batch_size)
    if method == "flip":
        flipped = inference.synthesize_volume(predict_fn, np.ascontiguousarray(inputs[::-1]),
                                              batch_size=batch_size,
                                              context_slices=context_slices)
        flipped = np.clip(flipped[::-1], 0.0, 1.0)
        flipped = volume_rescale.rescale_contrasts(flipped, brain_mask, levels)
        return unc.flip_spread(prediction, flipped)
    if method == "constant":
        return unc.constant_scale(prediction)
    raise UserError(f"config.uncertainty.method={method!r}: use one of {list(unc.METHODS)}")


def split_subjects(config, root, split, predict_fn, *, levels=None, max_subjects: int = 0,
                   subjects=None):
    """``(record, inputs, target, prediction, subject)`` of each subject of ``split`` (or of
    its ``subjects``); the prediction rescaled to ``levels`` (workflow.rescale) when given."""
    inputs, targets, context = synthesize.model_channels(config)
    records = cohorts.split_records(root, split, subjects)
    if max_subjects:
        records = records[:max_subjects]
    for record in records:
        subject = cohorts.load_record(
            root, record, channels=inputs + targets,
            convert_seconds=bool(config.data.get("convert_seconds", False)),
            resample=bool(config.data.get("resample", False)))
        prediction = synthesize.synthesize_subject(
            predict_fn, subject, input_channels=inputs, context_slices=context,
            batch_size=int(config.eval.batch_size), levels=levels)
        yield (record, synthesize.stack_inputs(subject, inputs),
               synthesize.stack_inputs(subject, targets), prediction, subject)


def stage_train_splits(config, stage: str, chosen, *, key: str) -> tuple[str, ...]:
    """``chosen`` (the config value named ``key``), or when empty the stage's training
    split."""
    splits = tuple(chosen)
    if splits:
        return splits
    stage_config = config.get(stage)
    if stage_config is None or "train_split" not in stage_config:
        raise UserError(f"config.{key} is empty and config has no {stage}.train_split to "
                        "fall back on")
    return (str(stage_config.train_split),)


def fit_splits(config, stage: str) -> tuple[str, ...]:
    """The splits whose residuals teach the scale net: config.uncertainty.fit_splits, or the
    stage's training split."""
    return stage_train_splits(config, stage, section(config, "uncertainty").fit_splits,
                              key="uncertainty.fit_splits")


def selection_subjects(config, stage: str, root: str, split: str) -> list[str]:
    """The subjects of ``split`` that chose the stage's checkpoint: the first
    config.train.eval_max_subjects of its validation split (workflow.train_eval's validator),
    when that split is ``split`` of the run's own cohort and a best checkpoint is kept.

    Conformal calibration must not reuse them: the checkpoint was picked for doing well on
    them, so their residuals understate a new subject's and the intervals would cover less
    than the level says.
    """
    stage_config = config.get(stage)
    if stage_config is None or str(stage_config.get("validation_split", "")) != split or \
            not str(config.train.get("best_metric", "")):
        return []
    if os.path.abspath(root) != cohorts.run_cohort_path(config):
        return []  # another cohort (evaluate --cohort): nothing of it chose the checkpoint
    count = max(1, int(config.train.eval_max_subjects))
    return [r.subject for r in cohorts.split_records(root, split)[:count]]


def calibration_subjects(config, stage: str, root: str, split: str) -> tuple[list, list, str]:
    """``(subjects that calibrate, subjects left out, note)`` of the calibration split: every
    subject but those that chose the checkpoint (``selection_subjects``), unless that leaves
    none, in which case all of them, with a note saying so."""
    everyone = [r.subject for r in cohorts.split_records(root, split)]
    chosen_by = selection_subjects(config, stage, root, split)
    kept = [name for name in everyone if name not in chosen_by]
    if not kept:
        return everyone, [], (
            f"every subject of {split} also chose the checkpoint (validation during "
            "training): calibrated on them anyway, so coverage may fall short of the level; "
            "validate on fewer (config.train.eval_max_subjects) or on another split")
    return kept, [name for name in everyone if name in chosen_by], ""


def has_split(root: str, split: str) -> bool:
    return any(r.split == split for r in cohorts.read_records(root))


def fit_uncertainty(config, stage_dir: str, predict_fn: Callable, root: str, *,
                    levels=None, stream=sys.stderr,
                    folder: str = UNCERTAINTY_DIR) -> UncertaintyModel:
    """Fit the scale estimate and calibrate it on the synthesis rescaled to ``levels``
    (workflow.rescale; None: not rescaled); write STAGE_DIR/<folder>/ (replacing it)."""
    settings = section(config, "uncertainty")
    method = str(settings.method)
    level = float(settings.level)
    if not 0.0 < level < 1.0:
        raise UserError(f"config.uncertainty.level={level}: must lie in (0, 1)")
    calibration_split = str(settings.calibration_split)
    if not has_split(root, calibration_split):
        raise UserError(f"{root}: no subject in the calibration split {calibration_split!r} "
                        "(config.uncertainty.calibration_split)")
    stage = os.path.basename(os.path.normpath(stage_dir))
    targets = tuple(config.data.target_channels)
    batch_size = int(config.eval.batch_size)
    context = int(config.data.context_slices)
    calibrating, left_out, note = calibration_subjects(config, stage, root, calibration_split)
    if method == "residual_gain" and len(calibrating) < unc.MIN_GAIN_SUBJECTS:  # before fitting
        raise UserError(f"{root}: config.uncertainty.method=residual_gain chooses its gain "
                        f"term on >= {unc.MIN_GAIN_SUBJECTS} calibration subjects; "
                        f"{calibration_split} has {len(calibrating)} to calibrate with")
    meta = {"method": method, "calibration_split": calibration_split,
            "checkpoint": checkpoint_id(stage_dir), "cohort": os.path.abspath(root),
            "rescale_levels": _levels_record(levels), "selection_subjects_left_out": left_out,
            "calibration_note": note}
    scale_fn, state = None, None
    started = time.time()
    if method in unc.SCALE_NET_METHODS:
        pieces = []
        for split in fit_splits(config, stage):
            for _, inputs, target, prediction, subject in split_subjects(config, root, split,
                                                                    predict_fn, levels=levels):
                pieces.append(unc.residual_slices(
                    inputs, prediction, target, subject.brain_mask,
                    min_brain_fraction=float(config.data.min_brain_fraction)))
        features, errors, masks = (np.concatenate(p) for p in zip(*pieces, strict=True))
        fit = unc.fit_scale_net(features, errors, masks, steps=int(settings.steps),
                                batch_size=int(settings.batch_size),
                                learning_rate=float(settings.learning_rate),
                                width=int(settings.width), seed=int(config.seed),
                                on_step=step_progress(int(settings.steps), "scale-net step",
                                                      stream))
        scale_fn = unc.make_scale_fn(fit.module, fit.variables)
        state = unc.scale_net_state(fit)
        meta |= {"fit_splits": list(fit_splits(config, stage)), "fit_slices": len(features),
                 "scale_net": state["config"], "steps": int(settings.steps),
                 "loss_first": fit.losses[0] if fit.losses else None,
                 "loss_last": fit.losses[-1] if fit.losses else None}
    print(f"uncertainty: {method} scale fitted in {time.time() - started:.1f} s", file=stream,
          flush=True)
    preds, trues, scales, masks, names = [], [], [], [], []
    for record, inputs, target, prediction, subject in split_subjects(
            config, root, calibration_split, predict_fn, levels=levels, subjects=calibrating):
        preds.append(prediction)
        trues.append(target)
        masks.append(subject.brain_mask)
        names.append(record.subject)
        scales.append(compute_scale(method, predict_fn, scale_fn, inputs, prediction,
                                    subject.brain_mask, batch_size=batch_size,
                                    context_slices=context, levels=levels))
    gains = None
    if method == "residual_gain":
        chosen = unc.choose_gains(preds, trues, scales, masks, level=level,
                                  channel_names=targets)
        gains = chosen["gains"]
        scales = [unc.with_gain(s, p, gains, targets) for s, p in zip(scales, preds,
                                                                       strict=True)]
        meta |= {"gains": gains, "gain_choice": chosen}
    calibration = unc.calibrate(preds, trues, scales, masks, level=level,
                                channel_names=targets, subject_names=names)
    meta |= {"level": level, "quantiles": calibration["quantiles"],
             "calibration_subjects": names, "calibration_voxels": calibration["num_voxels"],
             "held_out_coverage": calibration.get("held_out_coverage"),
             "target_channels": list(targets), "convention": unc.CONVENTION}
    with io.staged_dir(os.path.join(stage_dir, folder), if_exists="replace") as out:
        if state is not None:
            io.write_bytes(os.path.join(out, SCALE_NET_FILE), state["params"])
        io.write_json(os.path.join(out, CALIBRATION_FILE), meta)
    return UncertaintyModel(method=method, level=level, quantiles=calibration["quantiles"],
                            target_channels=targets, scale_fn=scale_fn, meta=meta,
                            levels=levels, gains=gains)


def load_uncertainty(stage_dir: str, folder: str = UNCERTAINTY_DIR) -> UncertaintyModel | None:
    """The fitted uncertainty of a stage (in STAGE_DIR/<folder>/), or None when it has none."""
    folder = os.path.join(stage_dir, folder)
    path = os.path.join(folder, CALIBRATION_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
        scale_fn = None
        if meta["method"] in unc.SCALE_NET_METHODS:
            with open(os.path.join(folder, SCALE_NET_FILE), "rb") as f:
                module, variables = unc.scale_net_from_state(meta["scale_net"], f.read())
            scale_fn = unc.make_scale_fn(module, variables)
        quantiles = {k: float("inf") if v is None else float(v)
                     for k, v in meta["quantiles"].items()}
        return UncertaintyModel(method=meta["method"], level=float(meta["level"]),
                                quantiles=quantiles,
                                target_channels=tuple(meta["target_channels"]),
                                scale_fn=scale_fn, meta=meta,
                                levels=_levels_from_record(meta.get("rescale_levels")),
                                gains=_gains_from_record(meta))
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{folder}: unreadable uncertainty model ({error})") from None


def stage_uncertainty(model_path: str):
    """The fitted uncertainty of the model's stage, or None (a note on stderr)."""
    try:
        stage_dir = stage_dir_of(model_path)
    except (FileNotFoundError, ValueError):
        return None
    model = load_uncertainty(stage_dir)
    if model is None:
        print(f"note: {stage_dir} has no fitted uncertainty (run experiments.evaluate on it "
              "with a cohort holding config.uncertainty.calibration_split): no "
              "*_uncertainty files", file=sys.stderr, flush=True)
    return model


def uncertainty_for(config, stage_dir: str, predict_fn: Callable, root: str, *,
                    levels=None, stream=sys.stderr,
                    folder: str = UNCERTAINTY_DIR) -> tuple[UncertaintyModel | None, str]:
    """The stage's uncertainty in STAGE_DIR/<folder>/ (fitted on first use when the config
    asks for it, and again when the synthesis it was calibrated on was rescaled otherwise
    than ``levels`` say), and a note saying why there is none."""
    settings = section(config, "uncertainty")
    if settings is None:
        return None, "no uncertainty: the run's config has no uncertainty section"
    if not bool(settings.enabled):
        return None, "uncertainty off (config.uncertainty.enabled = False)"
    model = load_uncertainty(stage_dir, folder)
    if model is not None and _fitted_for(model, config, stage_dir, root, levels):
        return model, ""
    split = str(settings.calibration_split)
    if not has_split(root, split):
        return None, (f"no uncertainty: the cohort has no calibration split {split!r} "
                      "(config.uncertainty.calibration_split)")
    return fit_uncertainty(config, stage_dir, predict_fn, root, levels=levels,
                           stream=stream, folder=folder), ""


def method_override(config, method: str) -> tuple[str, str]:
    """``(uncertainty folder, eval folder suffix)`` for scoring a trained run with another
    uncertainty ``method`` than its config's (``experiments.evaluate --uncertainty``), and
    ``config.uncertainty`` set to it. Another method fits beside the run's own
    (STAGE_DIR/uncertainty-<method>/, scores in eval/<split>-uncertainty-<method>/), so the
    intervals that ``synthesize`` writes and the run's report stay as they were."""
    if method not in unc.METHODS:
        raise UserError(f"--uncertainty {method!r}: use one of {list(unc.METHODS)}")
    settings = section(config, "uncertainty")
    if settings is None:
        raise UserError("--uncertainty: the run's config has no uncertainty section (it "
                        "predates per-voxel intervals)")
    if bool(settings.enabled) and method == str(settings.method):
        return UNCERTAINTY_DIR, ""  # the run's own intervals
    settings.enabled = True  # a run trained without intervals gets them beside its report
    settings.method = method
    return f"{UNCERTAINTY_DIR}-{method}", f"-{UNCERTAINTY_DIR}-{method}"


def _fitted_for(model: UncertaintyModel, config, stage_dir: str, root: str, levels) -> bool:
    """Whether a stored uncertainty was fitted with these settings, for this checkpoint, on
    this synthesis (``levels``) and this cohort's splits (intervals fitted before the cohort
    was recorded are kept); another cohort (evaluate --cohort) is refitted on its own fit and
    calibration splits."""
    settings = section(config, "uncertainty")
    meta = model.meta
    split = str(settings.calibration_split)
    return (model.method == str(settings.method) and model.level == float(settings.level)
            and meta.get("calibration_split") == split
            and meta.get("checkpoint") == checkpoint_id(stage_dir)
            and meta.get("rescale_levels") == _levels_record(levels)
            and meta.get("cohort", os.path.abspath(root)) == os.path.abspath(root)
            and meta.get("selection_subjects_left_out") == calibration_subjects(
                config, os.path.basename(os.path.normpath(stage_dir)), root, split)[1])


def _levels_record(levels):
    """How calibration.json records the rescaling levels (None: not rescaled)."""
    return None if levels is None else [float(v) for v in levels]


def _levels_from_record(record):
    return None if record is None else tuple(float(v) for v in record)


def _gains_from_record(meta) -> dict[str, float] | None:
    """The gain terms a residual_gain calibration.json holds (None for other methods)."""
    if meta["method"] != "residual_gain":
        return None
    return {name: float(meta["gains"][name]) for name in meta["target_channels"]}


# ------------------------------------------------------------------ downstream segmenter


def segmenter_dir(config, stage_dir: str) -> str:
    """config.segmentation.dir, or one segmenter per run: it depends on the cohort, the
    targets and its own settings, not on the generator."""
    chosen = str(section(config, "segmentation").get("dir", "") or "")
    return chosen or os.path.join(os.path.dirname(os.path.abspath(stage_dir)), SEGMENTER_DIR)


def _segmenter_key(config, root: str, splits) -> dict:
    """What a stored segmenter must match to be reused."""
    settings = section(config, "segmentation")
    return {"target_channels": list(config.data.target_channels), "cohort": root,
            "train_splits": list(splits), "steps": int(settings.steps),
            "batch_size": int(settings.batch_size),
            "learning_rate": float(settings.learning_rate), "seed": int(config.seed),
            "config": {"width": int(settings.width), "levels": int(settings.levels)}}


def fit_or_load_segmenter(config, folder: str, root: str, *, stream=sys.stderr):
    """``(segment_fn, meta)``: the segmenter in ``folder``, trained first when absent;
    ``(None, {"note": why})`` when the cohort has none of its training splits or no labels
    in them."""
    settings = section(config, "segmentation")
    targets = tuple(config.data.target_channels)
    present = {r.split for r in cohorts.read_records(root)}
    splits = tuple(s for s in settings.train_splits if s in present)
    if not splits:
        return None, {"note": f"no downstream segmentation: none of "
                      f"config.segmentation.train_splits {list(settings.train_splits)} is in "
                      "the cohort"}
    key = _segmenter_key(config, root, splits)
    meta_path = os.path.join(folder, SEGMENTER_META)
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if all(meta.get(k) == v for k, v in key.items()):
            print(f"segmenter: reusing {folder}", file=stream, flush=True)
            with open(os.path.join(folder, SEGMENTER_FILE), "rb") as f:
                module, variables = segmenter.segmenter_from_state(meta["config"], f.read())
            return segmenter.make_segment_fn(module, variables), meta
    images, labels, masks = [], [], []
    for split in splits:
        for record in cohorts.split_records(root, split):
            subject = cohorts.load_record(root, record, channels=targets)
            keep = subject.brain_mask.mean(axis=(0, 1)) >= float(config.data.min_brain_fraction)
            volume = synthesize.stack_inputs(subject, targets)
            images.append(np.moveaxis(volume, 2, 0)[keep])
            labels.append(np.moveaxis(subject.labels, 2, 0)[keep])
            masks.append(np.moveaxis(subject.brain_mask, 2, 0)[keep])
    if not any(np.any(volume > 0) for volume in labels):
        return None, {"note": "no downstream segmentation: the training splits "
                      f"{list(splits)} hold no tumor labels"}
    started = time.time()
    fit = segmenter.fit_segmenter(np.concatenate(images), np.concatenate(labels),
                                  np.concatenate(masks), steps=int(settings.steps),
                                  batch_size=int(settings.batch_size),
                                  learning_rate=float(settings.learning_rate),
                                  width=int(settings.width), levels=int(settings.levels),
                                  seed=int(config.seed),
                                  on_step=step_progress(int(settings.steps), "segmenter step",
                                                        stream))
    seconds = time.time() - started
    print(f"segmenter: trained {int(settings.steps)} steps in {seconds:.1f} s", file=stream,
          flush=True)
    state = segmenter.segmenter_state(fit)
    meta = key | {"config": state["config"], "train_seconds": seconds,
                  "loss_first": fit.losses[0] if fit.losses else None,
                  "loss_last": fit.losses[-1] if fit.losses else None,
                  "convention": segmenter.DICE_CONVENTION}
    with io.staged_dir(folder, if_exists="replace") as out:
        io.write_bytes(os.path.join(out, SEGMENTER_FILE), state["params"])
        io.write_json(os.path.join(out, SEGMENTER_META), meta)
    return segmenter.make_segment_fn(fit.module, fit.variables), meta


def downstream_dice(segment_fn, target, prediction, brain_mask, labels, *,
                    batch_size: int) -> dict[str, dict[str, float]]:
    """``{GROUND_TRUTH: dice, SYNTHESIZED: dice}`` of one subject."""
    scores = {}
    for source, volume in ((GROUND_TRUTH, target), (SYNTHESIZED, prediction)):
        predicted = segmenter.segment_volume(segment_fn, volume, brain_mask,
                                             batch_size=batch_size)
        scores[source] = segmenter.dice_scores(predicted, labels, brain_mask)
    return scores



def step_progress(total: int, label: str, stream) -> Callable[[int, float], None]:
    """A fit's on_step callback: a progress line with ETA at every tenth of `total` steps."""
    started = time.time()
    every = max(total // 10, 1)

    def report(step: int, loss: float):
        if step % every == 0 or step == total:
            synthesize.progress(step, total, started, f"{label} (loss {loss:.4g})", stream)

    return report
