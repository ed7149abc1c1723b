"""Evaluate a trained generator on a cohort split: scores, tables and figures.

  python -m experiments.evaluate --workdir runs/default --split gbm_test [--stage finetune] \
      [--cohort DIR]

Writes into WORKDIR/<stage>/eval/<split>/ (replacing an earlier evaluation at once):
  metrics.json   per-subject scores, the aggregate (mean, sample std, n) and the convention
  metrics.csv    one row per subject x contrast x region (brain, tumor)
  report.md      the paper-style table (rows contrasts; MAE / SSIM / PSNR, mean ± std;
                 whole brain and tumor), the metric convention and the number of subjects
  figures/<subject>.png  input maps, ground truth, synthesized, |error| per contrast, with a
                 zoom on the lesion, for config.eval.num_figure_subjects subjects

The training job calls ``evaluate_run`` after each stage.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from experiments import cli


def resolve_cohort(config, cohort_dir: str | None = None) -> str:
    """The cohort root: the argument, else the run's (config.data.cohort_dir, or the phantom
    cohort built into its cache when absent, as experiments.job finds it)."""
    if cohort_dir:
        root = os.path.abspath(os.path.expanduser(cohort_dir))
        if not os.path.isfile(os.path.join(root, "manifest.csv")):
            raise cli.UserError(f"{root}: no manifest.csv (not a cohort folder)")
        return root
    from experiments import job  # noqa: PLC0415

    return job.get_cohort(config)


def split_records(root: str, split: str, subjects: Sequence[str] | None = None):
    from data_pipelines import cohort  # noqa: PLC0415

    try:
        records = cohort.read_manifest(root)
    except cohort.CohortError as error:
        raise cli.UserError(_one_line(str(error))) from None
    chosen = [r for r in records if r.split == split]
    if not chosen:
        splits = sorted({r.split for r in records})
        raise cli.UserError(f"{root}: no subject in split {split!r} (splits: {splits})")
    if subjects:
        unknown = sorted(set(subjects) - {r.subject for r in chosen})
        if unknown:
            raise cli.UserError(f"split {split!r} of {root} has no subject(s) {unknown}")
        chosen = [r for r in chosen if r.subject in set(subjects)]
    return chosen


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _csv_text(rows) -> str:
    buffer = io.StringIO()
    fields = ["subject", "contrast", "region", "mae", "ssim", "psnr"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def report_markdown(summary, *, title: str, split: str, num_subjects: int, model_name: str,
                    details: Sequence[str] = ()) -> str:
    from qsnet_jax import evaluation  # noqa: PLC0415

    lines = [f"# {title}", "",
             f"Model `{model_name}`, split `{split}`, {num_subjects} subject(s).", ""]
    lines += [f"- {d}" for d in details] + ([""] if details else [])
    lines += [evaluation.markdown_table({model_name: summary}), "",
              evaluation.convention_text(summary), ""]
    return "\n".join(lines)


def evaluate_run(config, workdir: str, stage: str, split: str | None = None, *,
                 cohort_dir: str | None = None, model=None,
                 subjects: Sequence[str] | None = None, stream=sys.stderr,
                 predict_fn: Callable | None = None) -> dict:
    """Synthesize and score every subject of ``split``; write WORKDIR/<stage>/eval/<split>/.

    ``stage``: a stage name (``finetune``) or its folder (``WORKDIR/finetune``).
    ``config``: the run's config (its data section says the inputs, targets, context slices
    and cohort; ``eval`` the batch size, figure count and EMA choice). The generator is the
    stage's best-or-latest checkpoint (``qsnet_jax.train.load_generator``) unless ``model`` =
    ``(module, variables)`` is given. Returns ``{"per_subject", "summary", "dir"}``.
    """
    from experiments import synthesize  # noqa: PLC0415
    from qsnet_jax import evaluation, figures, inference, metrics  # noqa: PLC0415
    from qsnet_jax.physics import channels  # noqa: PLC0415

    split = split or config.eval.split
    workdir = os.path.abspath(os.path.expanduser(workdir))
    stage_dir = os.path.join(workdir, stage)  # an absolute stage folder stays as it is
    stage = os.path.basename(os.path.normpath(stage_dir))
    if model is None:
        _, module, variables = synthesize.load_model(stage_dir, use_ema=bool(config.eval.use_ema))
    else:
        module, variables = model
    root = resolve_cohort(config, cohort_dir)
    records = split_records(root, split, subjects)
    inputs = tuple(config.data.input_channels)
    targets = tuple(config.data.target_channels)
    context = int(config.data.context_slices)
    batch_size = int(config.eval.batch_size)
    predict_fn = predict_fn or inference.make_predict_fn(module, variables)
    convert_seconds = bool(config.data.get("convert_seconds", False))
    resample = bool(config.data.get("resample", False))

    out_dir = os.path.join(stage_dir, "eval", split)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=os.path.dirname(out_dir))
    try:
        os.makedirs(os.path.join(staging, "figures"))
        per_subject = {}
        started = time.time()
        num_figures = int(config.eval.num_figure_subjects)
        for i, record in enumerate(records):
            subject = synthesize.load_record(root, record, channels=inputs + targets,
                                             convert_seconds=convert_seconds,
                                             resample=resample)
            prediction = synthesize.synthesize_subject(
                predict_fn, subject, input_channels=inputs, context_slices=context,
                batch_size=batch_size)
            target = np.stack([subject.volumes[c] for c in targets], -1)
            labels = subject.labels if np.any(subject.labels > 0) else None
            per_subject[record.subject] = metrics.score_volume(
                prediction, target, subject.brain_mask, labels, channel_names=targets)
            if i < num_figures:
                fig = figures.subject_figure(
                    channels.display_planes(subject.volumes, inputs), target, prediction,
                    subject.brain_mask, labels, input_names=inputs, contrast_names=targets,
                    title=f"{record.subject} ({record.group}, {split}, {stage})")
                with open(os.path.join(staging, "figures", f"{record.subject}.png"),
                          "wb") as f:
                    f.write(figures.png_bytes(fig))
            synthesize._progress(i + 1, len(records), started, record.subject, stream=stream)

        summary = evaluation.aggregate(per_subject)
        model_name = str(config.model.name)
        result = {"stage": stage, "split": split, "cohort": root, "model": model_name,
                  "num_subjects": len(per_subject), "std": "sample (ddof = 1)",
                  "convention": evaluation.convention_text(summary),
                  "per_subject": per_subject, "summary": summary}
        with open(os.path.join(staging, "metrics.json"), "w") as f:
            json.dump(evaluation.jsonable(result), f, indent=2, allow_nan=False)
        with open(os.path.join(staging, "metrics.csv"), "w") as f:
            f.write(_csv_text(evaluation.score_rows(per_subject)))
        details = [f"work dir `{workdir}`, stage `{stage}`, "
                   f"{'EMA' if config.eval.use_ema else 'raw'} weights",
                   f"cohort `{root}`",
                   f"inputs {', '.join(inputs)}; 2.5D context {context}"]
        with open(os.path.join(staging, "report.md"), "w") as f:
            f.write(report_markdown(summary, title=f"Evaluation: {stage} on {split}",
                                    split=split, num_subjects=len(per_subject),
                                    model_name=model_name, details=details))
        from experiments.synthesize import publish  # noqa: PLC0415

        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"per_subject": per_subject, "summary": summary, "dir": out_dir}


def _last_stage(workdir: str) -> str:
    stages = [d for d in sorted(os.listdir(workdir))
              if os.path.isdir(os.path.join(workdir, d, "checkpoints"))]
    if not stages:
        raise cli.UserError(f"{workdir}: no trained stage (no <stage>/checkpoints folder)")
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            order = list(json.load(f).get("stages", []))
    except (OSError, ValueError):
        order = []
    ranked = [s for s in order if s in stages]
    return ranked[-1] if ranked else stages[-1]


def main(argv: Sequence[str] | None = None):
    parser = cli.OneLineArgumentParser(prog="python -m experiments.evaluate",
                     description="Score a trained generator on a cohort split.")
    parser.add_argument("--workdir", required=True, help="the training work dir")
    parser.add_argument("--split", default="", help="cohort split (default: config eval.split)")
    parser.add_argument("--stage", default="", help="stage to evaluate (default: the last)")
    parser.add_argument("--cohort", default="", help="cohort root (default: the run's cohort)")
    parser.add_argument("--subjects", default="", help="comma-separated subset of the split")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA weights")
    args = parser.parse_args(argv)
    cli.quiet_tensorflow()  # orbax / the input pipeline import TF: keep it quiet, off GPUs
    try:
        workdir = os.path.abspath(os.path.expanduser(args.workdir))
        if not os.path.isdir(workdir):
            raise cli.UserError(f"{workdir}: no such work dir")
        stage = args.stage or _last_stage(workdir)
        if not os.path.isdir(os.path.join(workdir, stage)):
            raise cli.UserError(f"{workdir}: no stage {stage!r}")
        from experiments import synthesize  # noqa: PLC0415

        config, module, variables = synthesize.load_model(os.path.join(workdir, stage),
                                                          use_ema=not args.no_ema)
        config.eval.use_ema = not args.no_ema
        result = evaluate_run(config, workdir, stage=stage, split=args.split or None,
                              cohort_dir=args.cohort or None, model=(module, variables),
                              subjects=[s for s in args.subjects.split(",") if s])
    except cli.UserError as error:
        cli.fail(str(error))
    with open(os.path.join(result["dir"], "report.md")) as f:
        print(f.read())
    print(f"wrote {result['dir']}", flush=True)
    return result


if __name__ == "__main__":
    main()
