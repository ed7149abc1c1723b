"""Evaluate a trained generator on a cohort split: scores, tables and figures.

Writes into WORKDIR/<stage>/eval/<split>/ (replacing an earlier evaluation at once):
  metrics.json   per-subject scores, the aggregate (mean, sample std, n) and the convention;
                 ``uncertainty``: interval coverage / width / Spearman per region, the
                 conformal quantiles and the time against synthesis; ``segmentation``: the
                 downstream Dice on ground-truth and synthesized contrasts
  metrics.csv    one row per subject x contrast x region (brain, tumor, healthy)
  report.md      the paper-style table (rows contrasts; MAE / SSIM / PSNR, mean ± std;
                 whole brain, tumor, healthy; NMI), the uncertainty and Dice tables, each
                 with its convention and the number of subjects
  figures/<subject>.png  input maps, ground truth, synthesized, |error| and the interval
                 half-width per contrast, with a zoom on the lesion, for
                 config.eval.num_figure_subjects subjects

The synthesis is rescaled per volume (config.rescale, workflow.rescale: levels fitted on the
stage's training split) before it is scored. The rescaling levels, the uncertainty
(config.uncertainty, calibrated on the rescaled synthesis) and the segmenter
(config.segmentation) are fitted on first use and reused afterwards.

`workflow.train_eval` calls `evaluate_run` after each stage.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from qsnet_jax import evaluation, figures, inference, io, metrics
from qsnet_jax import uncertainty as unc
from qsnet_jax.models import segmenter
from qsnet_jax.physics.channels import display_planes
from workflow import cohorts, reports, rescale, synthesize, uncertainty
from workflow.errors import UserError

EVAL_DIR = "eval"


def evaluate_run(config, stage_dir: str, split: str | None = None, *,
                 cohort_dir: str | None = None, model=None,
                 subjects: Sequence[str] | None = None, stream=sys.stderr,
                 predict_fn: Callable | None = None,
                 uncertainty_folder: str = uncertainty.UNCERTAINTY_DIR,
                 eval_suffix: str = "") -> dict:
    """Synthesize and score every subject of ``split``; write
    STAGE_DIR/eval/<split><eval_suffix>/ (the suffix names another uncertainty method,
    ``uncertainty.method_override``, fitted into STAGE_DIR/<uncertainty_folder>/).

    ``config``: the run's config (its data section says the inputs, targets, context slices
    and cohort; ``eval`` the batch size, figure count and EMA choice). The generator is the
    stage's best-or-latest checkpoint (``qsnet_jax.train.load_generator``) unless ``model`` =
    ``(module, variables)`` is given. Returns ``{"per_subject", "summary", "dir"}``.
    """
    split = split or config.eval.split
    stage_dir = os.path.abspath(os.path.expanduser(stage_dir))
    stage = os.path.basename(os.path.normpath(stage_dir))
    root = cohorts.resolve_cohort(config, cohort_dir)
    records = cohorts.split_records(root, split, subjects)
    if model is None:
        _, module, variables = synthesize.load_model(stage_dir,
                                                     use_ema=bool(config.eval.use_ema))
    else:
        module, variables = model
    inputs = tuple(config.data.input_channels)
    targets = tuple(config.data.target_channels)
    context = int(config.data.context_slices)
    predict_fn = predict_fn or inference.make_predict_fn(module, variables)
    num_figures = int(config.eval.num_figure_subjects)

    out_dir = os.path.join(stage_dir, EVAL_DIR, split + eval_suffix)
    levels, rescale_note = rescale.rescale_for(config, stage_dir, predict_fn, root,
                                               stream=stream)
    unc_model, unc_note = uncertainty.uncertainty_for(config, stage_dir, predict_fn, root,
                                                      levels=levels, stream=stream,
                                                      folder=uncertainty_folder)
    segment_fn, seg_meta = None, None
    if uncertainty.enabled(config, "segmentation"):
        segment_fn, seg_meta = uncertainty.fit_or_load_segmenter(
            config, uncertainty.segmenter_dir(config, stage_dir), root, stream=stream)
    with io.staged_dir(out_dir, if_exists="replace") as staging:
        per_subject, unc_per_subject, dice_per_subject = {}, {}, {}
        timing = {"synthesis_s": 0.0, "uncertainty_s": 0.0}
        started = time.time()
        for i, record in enumerate(records):
            subject = cohorts.load_record(
                root, record, channels=inputs + targets,
                convert_seconds=bool(config.data.get("convert_seconds", False)),
                resample=bool(config.data.get("resample", False)))
            volume = synthesize.stack_inputs(subject, inputs)
            tick = time.perf_counter()
            prediction = synthesize.synthesize_subject(
                predict_fn, subject, input_channels=inputs, context_slices=context,
                batch_size=int(config.eval.batch_size), levels=levels)
            timing["synthesis_s"] += time.perf_counter() - tick
            target = synthesize.stack_inputs(subject, targets)
            labels = subject.labels if np.any(subject.labels > 0) else None
            per_subject[record.subject] = metrics.score_volume(
                prediction, target, subject.brain_mask, labels, channel_names=targets)
            half = None
            if unc_model is not None:
                tick = time.perf_counter()
                half = unc_model.half_width(predict_fn, volume, prediction, subject.brain_mask,
                                            batch_size=int(config.eval.batch_size),
                                            context_slices=context)
                timing["uncertainty_s"] += time.perf_counter() - tick
                unc_per_subject[record.subject] = unc.interval_scores(
                    prediction, target, half, subject.brain_mask, labels,
                    channel_names=targets)
            if segment_fn is not None and labels is not None:
                dice_per_subject[record.subject] = uncertainty.downstream_dice(
                    segment_fn, target, prediction, subject.brain_mask, subject.labels,
                    batch_size=int(config.eval.batch_size))
            if i < num_figures:
                fig = figures.subject_figure(
                    display_planes(subject.volumes, inputs), target, prediction,
                    subject.brain_mask, labels, input_names=inputs, contrast_names=targets,
                    uncertainty=half,
                    uncertainty_label=(f"{unc_model.level:.0%} half-width" if half is not None
                                       else ""),
                    title=f"{record.subject} ({record.group}, {split}, {stage})")
                io.write_bytes(os.path.join(staging, "figures", f"{record.subject}.png"),
                               figures.png_bytes(fig))
            synthesize.progress(i + 1, len(records), started, record.subject, stream=stream)

        summary = evaluation.aggregate(per_subject)
        model_name = str(config.model.name)
        result = {"stage": stage, "split": split, "cohort": root, "model": model_name,
                  "num_subjects": len(per_subject), "std": "sample (ddof = 1)",
                  "convention": evaluation.convention_text(summary),
                  "rescale": rescale.record(config, levels, rescale_note),
                  "per_subject": per_subject, "summary": summary}
        if unc_model is not None:
            result["uncertainty"] = uncertainty_record(unc_model, unc_per_subject, timing)
        else:
            result["uncertainty"] = {"note": unc_note}
        if seg_meta is not None and "note" in seg_meta:
            result["segmentation"] = {"note": seg_meta["note"]}
        elif dice_per_subject:
            result["segmentation"] = {
                "per_subject": dice_per_subject,
                "summary": evaluation.aggregate(dice_per_subject),
                "convention": segmenter.DICE_CONVENTION,
                "segmenter": {k: seg_meta[k] for k in ("train_splits", "steps",
                                                       "train_seconds", "config")}}
        io.write_text(os.path.join(staging, "metrics.json"),
                      json.dumps(evaluation.jsonable(result), indent=2, allow_nan=False))
        io.write_text(os.path.join(staging, "metrics.csv"),
                      reports.scores_csv(evaluation.score_rows(per_subject)))
        details = [f"work dir `{os.path.dirname(stage_dir)}`, stage `{stage}`, "
                   f"{'EMA' if config.eval.use_ema else 'raw'} weights",
                   f"cohort `{root}`",
                   f"inputs {', '.join(inputs)}; 2.5D context {context}",
                   rescale.describe(config, stage_dir, levels, rescale_note)]
        io.write_text(os.path.join(staging, "report.md"), reports.evaluation_markdown(
            summary, title=f"Evaluation: {stage} on {split}", split=split,
            num_subjects=len(per_subject), model_name=model_name, details=details,
            uncertainty=result["uncertainty"], segmentation=result.get("segmentation")))
    return {"per_subject": per_subject, "summary": summary, "dir": out_dir}


def uncertainty_record(model, per_subject, timing) -> dict:
    """metrics.json's ``uncertainty`` entry: the scores, how they were calibrated, the cost."""
    ratio = (timing["uncertainty_s"] / timing["synthesis_s"] if timing["synthesis_s"] > 0
             else float("nan"))
    return {"method": model.method, "level": model.level, "quantiles": model.quantiles,
            "calibration_split": model.meta.get("calibration_split"),
            "calibration_subjects": model.meta.get("calibration_subjects"),
            "selection_subjects_left_out": model.meta.get("selection_subjects_left_out"),
            "calibration_note": model.meta.get("calibration_note", ""),
            "held_out_coverage": model.meta.get("held_out_coverage"),
            **({"gains": model.gains} if model.gains is not None else {}),
            "per_subject": per_subject, "summary": evaluation.aggregate(per_subject),
            "pooled_coverage": unc.pooled_coverage(per_subject),
            "timing": dict(timing, ratio=ratio), "convention": unc.CONVENTION}


def last_stage(workdir: str) -> str:
    """The last stage of the run's config.stages that has checkpoints."""
    stages = [d for d in sorted(os.listdir(workdir))
              if os.path.isdir(os.path.join(workdir, d, "checkpoints"))]
    if not stages:
        raise UserError(f"{workdir}: no trained stage (no <stage>/checkpoints folder)")
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            order = list(json.load(f).get("stages", []))
    except (OSError, ValueError):
        order = []
    ranked = [s for s in order if s in stages]
    return ranked[-1] if ranked else stages[-1]


def evaluate_workdir(workdir: str, *, split: str = "", stage: str = "", cohort_dir: str = "",
                     subjects: Sequence[str] = (), use_ema: bool = True,
                     uncertainty_method: str = "") -> dict:
    """What `experiments.evaluate` does: evaluate a work dir's stage (default: its last)
    with the config it was trained with; ``uncertainty_method`` scores the intervals of
    another method beside the run's own (``uncertainty.method_override``)."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not os.path.isdir(workdir):
        raise UserError(f"{workdir}: no such work dir")
    if cohort_dir:
        cohorts.check_cohort_dir(cohort_dir)
    stage = stage or last_stage(workdir)
    stage_dir = os.path.join(workdir, stage)
    if not os.path.isdir(stage_dir):
        raise UserError(f"{workdir}: no stage {stage!r}")
    config, module, variables = synthesize.load_model(stage_dir, use_ema=use_ema)
    config.eval.use_ema = use_ema
    folder, suffix = uncertainty.UNCERTAINTY_DIR, ""
    if uncertainty_method:
        folder, suffix = uncertainty.method_override(config, uncertainty_method)
    return evaluate_run(config, stage_dir, split or None, cohort_dir=cohort_dir or None,
                        model=(module, variables), subjects=list(subjects),
                        uncertainty_folder=folder, eval_suffix=suffix)
