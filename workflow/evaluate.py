"""Evaluate a trained generator on a cohort split: scores, tables and figures.

Writes into WORKDIR/<stage>/eval/<split>/ (replacing an earlier evaluation at once):
  metrics.json   per-subject scores, the aggregate (mean, sample std, n) and the convention
  metrics.csv    one row per subject x contrast x region (brain, tumor)
  report.md      the paper-style table (rows contrasts; MAE / SSIM / PSNR, mean ± std;
                 whole brain and tumor), the metric convention and the number of subjects
  figures/<subject>.png  input maps, ground truth, synthesized, |error| per contrast, with a
                 zoom on the lesion, for config.eval.num_figure_subjects subjects

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
from qsnet_jax.physics.channels import display_planes
from workflow import cohorts, reports, synthesize
from workflow.errors import UserError

EVAL_DIR = "eval"


def evaluate_run(config, stage_dir: str, split: str | None = None, *,
                 cohort_dir: str | None = None, model=None,
                 subjects: Sequence[str] | None = None, stream=sys.stderr,
                 predict_fn: Callable | None = None) -> dict:
    """Synthesize and score every subject of ``split``; write STAGE_DIR/eval/<split>/.

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

    out_dir = os.path.join(stage_dir, EVAL_DIR, split)
    with io.staged_dir(out_dir, if_exists="replace") as staging:
        per_subject = {}
        started = time.time()
        for i, record in enumerate(records):
            subject = cohorts.load_record(
                root, record, channels=inputs + targets,
                convert_seconds=bool(config.data.get("convert_seconds", False)),
                resample=bool(config.data.get("resample", False)))
            prediction = synthesize.synthesize_subject(
                predict_fn, subject, input_channels=inputs, context_slices=context,
                batch_size=int(config.eval.batch_size))
            target = synthesize.stack_inputs(subject, targets)
            labels = subject.labels if np.any(subject.labels > 0) else None
            per_subject[record.subject] = metrics.score_volume(
                prediction, target, subject.brain_mask, labels, channel_names=targets)
            if i < num_figures:
                fig = figures.subject_figure(
                    display_planes(subject.volumes, inputs), target, prediction,
                    subject.brain_mask, labels, input_names=inputs, contrast_names=targets,
                    title=f"{record.subject} ({record.group}, {split}, {stage})")
                io.write_bytes(os.path.join(staging, "figures", f"{record.subject}.png"),
                               figures.png_bytes(fig))
            synthesize.progress(i + 1, len(records), started, record.subject, stream=stream)

        summary = evaluation.aggregate(per_subject)
        model_name = str(config.model.name)
        result = {"stage": stage, "split": split, "cohort": root, "model": model_name,
                  "num_subjects": len(per_subject), "std": "sample (ddof = 1)",
                  "convention": evaluation.convention_text(summary),
                  "per_subject": per_subject, "summary": summary}
        io.write_text(os.path.join(staging, "metrics.json"),
                      json.dumps(evaluation.jsonable(result), indent=2, allow_nan=False))
        io.write_text(os.path.join(staging, "metrics.csv"),
                      reports.scores_csv(evaluation.score_rows(per_subject)))
        details = [f"work dir `{os.path.dirname(stage_dir)}`, stage `{stage}`, "
                   f"{'EMA' if config.eval.use_ema else 'raw'} weights",
                   f"cohort `{root}`",
                   f"inputs {', '.join(inputs)}; 2.5D context {context}"]
        io.write_text(os.path.join(staging, "report.md"), reports.evaluation_markdown(
            summary, title=f"Evaluation: {stage} on {split}", split=split,
            num_subjects=len(per_subject), model_name=model_name, details=details))
    return {"per_subject": per_subject, "summary": summary, "dir": out_dir}


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
                     subjects: Sequence[str] = (), use_ema: bool = True) -> dict:
    """What `experiments.evaluate` does: evaluate a work dir's stage (default: its last)
    with the config it was trained with."""
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
    return evaluate_run(config, stage_dir, split or None, cohort_dir=cohort_dir or None,
                        model=(module, variables), subjects=list(subjects))
