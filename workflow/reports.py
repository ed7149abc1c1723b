"""Every table the workflow writes (markdown and CSV) and the studies' comparison figures.

The numbers come from `qsnet_jax.evaluation` (aggregation, paired tests, the convention
text); this module only lays them out, so an evaluation's report.md and a study's combined
report read the same way (docs/design.md, "Metrics").
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qsnet_jax import evaluation, figures, inference, models
from qsnet_jax.metrics import METRIC_NAMES, REGIONS
from qsnet_jax.models import segmenter
from workflow import cohorts, rescale, synthesize
from workflow.uncertainty import GROUND_TRUTH, SYNTHESIZED

SCORE_FIELDS = ("subject", "contrast", "region") + METRIC_NAMES


# ------------------------------------------------------------------ one evaluation


def scores_csv(rows) -> str:
    """metrics.csv of an evaluation: one row per subject x contrast x region."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SCORE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def evaluation_markdown(summary, *, title: str, split: str, num_subjects: int, model_name: str,
                        details: Sequence[str] = (), uncertainty: Mapping | None = None,
                        segmentation: Mapping | None = None) -> str:
    """report.md of an evaluation: the paper-style table and the metric convention, then the
    uncertainty and downstream-segmentation tables (each with its convention)."""
    lines = [f"# {title}", "",
             f"Model `{model_name}`, split `{split}`, {num_subjects} subject(s).", ""]
    lines += [f"- {d}" for d in details] + ([""] if details else [])
    lines += [evaluation.markdown_table({model_name: summary}), "",
              evaluation.convention_text(summary), ""]
    if uncertainty:
        lines += uncertainty_section({model_name: uncertainty})
    if segmentation:
        lines += segmentation_section({model_name: segmentation})
    return "\n".join(lines)


def _calibration_subjects_text(record: Mapping) -> str:
    """"5 subjects; sub-021, which chose the checkpoint, left out" or "6 subjects"."""
    text = f"{len(record.get('calibration_subjects') or [])} subjects"
    left_out = record.get("selection_subjects_left_out") or []
    if left_out:
        text += f"; {', '.join(left_out)}, which chose the checkpoint, left out"
    return text


def uncertainty_section(records: Mapping[str, Mapping]) -> list[str]:
    """Markdown lines: per model the interval scores per contrast and region, the conformal
    quantiles and the cost against synthesis. ``records``: ``{model: metrics.json's
    "uncertainty" entry}`` (an entry with only a ``note`` says why there are no intervals)."""
    lines = ["## Uncertainty", ""]
    with_scores = {name: r for name, r in records.items() if "summary" in r}
    for name, record in records.items():
        if "summary" not in record:
            lines += [f"- `{name}`: {record.get('note', 'no intervals')}"]
            continue
        timing = {k: float("nan") if v is None else v for k, v in record["timing"].items()}
        quantiles = ", ".join(
            f"{evaluation.contrast_title(c)} {float('inf') if q is None else q:.3g}"
            for c, q in record["quantiles"].items())
        lines += [f"- `{name}`: method `{record['method']}`, level {record['level']:.0%}, "
                  f"calibrated on split `{record['calibration_split']}` "
                  f"({_calibration_subjects_text(record)}); q = "
                  f"{quantiles}; uncertainty took {timing['uncertainty_s']:.2f} s vs "
                  f"{timing['synthesis_s']:.2f} s of synthesis "
                  f"({timing['ratio']:.2f}x, measured in this run)"]
        if record.get("calibration_note"):
            lines.append(f"  - note: {record['calibration_note']}")
        if record.get("gains"):
            gains = ", ".join(f"{evaluation.contrast_title(c)} {b:g}"
                              for c, b in record["gains"].items())
            lines.append("  - gain term beta (sigma widened to sqrt(sigma^2 + (beta y_hat)^2), "
                         "beta chosen on the calibration subjects for the least scatter of "
                         f"their leave-one-out coverage): {gains}")
        pooled = record.get("pooled_coverage") or {}
        for region in ("", "_tumor", "_healthy"):
            values = [f"{evaluation.contrast_title(c)} {e['coverage' + region]:.3f}"
                      for c, e in pooled.items() if e.get("coverage" + region) is not None]
            if values:
                lines.append(f"  - coverage pooled over all voxels of all subjects, "
                             f"{region.strip('_') or 'brain'}: {', '.join(values)}")
        if _several_seeds(record):
            lines.append(f"  - training seeds {', '.join(map(str, record['seeds']))}: the scores "
                         "below are each subject's mean over the seeds; q, the timing and "
                         "the leave-one-out scatter are the first seed's; brain coverage "
                         "(mean over subjects) with each seed: "
                         + _per_seed_text(record["seed_spread"], "coverage"))
        held_out = record.get("held_out_coverage") or {}
        if held_out:
            spread = ", ".join(f"{evaluation.contrast_title(c)} {e['min']:.2f}–{e['max']:.2f} "
                               f"(mean {e['mean']:.3f})" for c, e in held_out.items())
            lines.append("  - the scatter to expect for one subject: brain coverage of each "
                         "calibration subject calibrated by the others (leave one subject "
                         f"out), min–max: {spread}")
    lines.append("")
    if with_scores:
        summaries = {name: r["summary"] for name, r in with_scores.items()}
        lines += [evaluation.markdown_table(summaries, metrics=evaluation.UNCERTAINTY_METRICS,
                                            bold_best=False), "",
                  f"{next(iter(with_scores.values()))['convention']} "
                  f"Aggregate: {evaluation.STD_CONVENTION}", ""]
    return lines


def _several_seeds(record: Mapping) -> bool:
    """Whether a (seed-averaged) record merges more than one training seed."""
    return len(record.get("seeds") or ()) > 1


def _per_seed_text(spread: Mapping, key: str) -> str:
    """"T1w 0.891 / 0.885, ...": a score's split mean with each seed, per contrast (or
    segmenter input)."""
    return ", ".join(f"{evaluation.contrast_title(group)} {_seed_means(entry[key])}"
                     for group, entry in spread.items() if key in entry)


def _seed_means(spread_entry: Mapping) -> str:
    """"0.891 / 0.885": one score's split mean with each seed."""
    return " / ".join(f"{m:.3f}" for m in spread_entry["means"])


def segmentation_section(records: Mapping[str, Mapping]) -> list[str]:
    """Markdown lines: the downstream Dice per sub-region, of the segmenter run on the
    ground-truth and on the synthesized contrasts (``{model: metrics.json's
    "segmentation" entry}``). Where every model's ground-truth scores are the same (one
    segmenter shared by the study, on the same subjects), they are one row, not a copy per
    model."""
    regions = list(segmenter.SUBREGIONS)
    header = ["Model", "Segmented contrasts"] + [f"Dice {r.replace('_', ' ')}" for r in regions]
    lines = ["## Downstream tumor segmentation (BraSyn)", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join([":---", ":---"] + ["---:"] * len(regions)) + "|"]
    notes = [f"- `{name}`: {r['note']}" for name, r in records.items() if "summary" not in r]
    records = {name: r for name, r in records.items() if "summary" in r}
    if not records:
        return ["## Downstream tumor segmentation (BraSyn)", ""] + notes + [""]
    shared = len(records) > 1 and _same_ground_truth(records.values())

    def row(model, source, entry):
        cells = [model, source]
        for region in regions:
            value = entry.get(f"dice_{region}")
            cells.append("–" if value is None else evaluation.format_mean_std(
                value["mean"], value["std"], "dice"))
        return "| " + " | ".join(cells) + " |"

    if shared:
        first = next(iter(records.values()))
        lines.append(row("every model", GROUND_TRUTH, first["summary"].get(GROUND_TRUTH, {})))
    for name, record in records.items():
        for source in (SYNTHESIZED,) if shared else (GROUND_TRUTH, SYNTHESIZED):
            lines.append(row(name, source, record["summary"].get(source, {})))
    convention = next(iter(records.values()))["convention"]
    n = max(len(r["per_subject"]) for r in records.values())
    lines += ["", f"{convention} Aggregate: {evaluation.STD_CONVENTION} n = {n} subjects "
              "with a tumor.", ""]
    seeded = {name: r for name, r in records.items() if _several_seeds(r)}
    per_seed = []
    if seeded:
        first = next(iter(seeded.values()))
        per_seed.append(f"- Training seeds {', '.join(map(str, first['seeds']))}: each "
                        "subject's Dice is its mean over the seeds; the segmenter is retrained "
                        "with each seed. Whole-tumor Dice with each seed:")
        if shared:
            per_seed.append(f"  - {GROUND_TRUTH} (every model): " + _seed_means(
                first["seed_spread"][GROUND_TRUTH]["dice_whole_tumor"]))
        for name, record in seeded.items():
            spread = ({SYNTHESIZED: record["seed_spread"][SYNTHESIZED]} if shared
                      else record["seed_spread"])
            per_seed.append(f"  - `{name}`: " + _per_seed_text(spread, "dice_whole_tumor"))
    lines += per_seed + ([""] if per_seed else []) + notes + ([""] if notes else [])
    return lines


def _same_ground_truth(records) -> bool:
    """Whether the models' ground-truth Dice are identical, subject by subject (and seed by
    seed): the same segmenter on the same ground truth."""
    def ground_truth(record):
        per_subject = {s: v.get(GROUND_TRUTH) for s, v in record["per_subject"].items()}
        spread = (record.get("seed_spread") or {}).get(GROUND_TRUTH)
        return per_subject, spread, tuple(record.get("seeds") or ())
    first, *rest = (ground_truth(r) for r in records)
    return all(other == first for other in rest)


# ------------------------------------------------------------------ a study


def _partner_tests(result) -> dict:
    """``{variant b: test of (a, b)}`` for the first pair naming b second."""
    partner = {}
    for test in result["wilcoxon"]:
        partner.setdefault(test["b"], test)
    return partner


def _columns(result):
    return [(m, r) for r in REGIONS for m in evaluation.TABLE_METRICS
            if any(evaluation.metric_key(m, r) in entry for model in result["models"].values()
                   for entry in model["summary"].values())]


def _contrasts(result) -> list[str]:
    order = []
    for model in result["models"].values():
        order += [c for c in model["summary"] if c not in order]
    return order


def _seed_text(model, contrast: str, key: str, metric: str) -> str:
    """`` [seeds ± sd]``: the sd over training seeds of the split mean, where there are
    several seeds (one seed's sd is NaN, null when read back from metrics.json)."""
    spread = model.get("seed_spread", {}).get(contrast, {}).get(key)
    if not spread or spread["std"] is None or not np.isfinite(spread["std"]):
        return ""
    return f" [seeds ± {spread['std']:.{evaluation.METRIC_DECIMALS.get(metric, 3)}f}]"


def study_table(result) -> str:
    """Rows = contrast × variant; cells mean ± std with the paired p-value against the
    row's partner (``(p=…)``); the reference / first of a pair has none."""
    columns = _columns(result)
    partner = _partner_tests(result)
    header = ["Contrast", "Model"] + [f"{evaluation.METRIC_TITLES.get(m, m)} {r}"
                                      for m, r in columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---", ":---"] + ["---:"] * len(columns)) + "|"]
    for contrast in _contrasts(result):
        for name, model in result["models"].items():
            entry = model["summary"].get(contrast)
            if entry is None:
                continue
            cells = [evaluation.contrast_title(contrast), name]
            for m, r in columns:
                key = evaluation.metric_key(m, r)
                if key not in entry:
                    cells.append("–")
                    continue
                text = evaluation.format_mean_std(entry[key]["mean"], entry[key]["std"], m)
                text += _seed_text(model, contrast, key, m)
                test = partner.get(name, {}).get("results", {}).get(contrast, {}).get(key)
                if test is not None:
                    holm = evaluation.holm_label(test)
                    text += f" (p={test['p_value']:.3g}{', ' + holm if holm else ''})"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _path_from(path: str, folder: str | None) -> str:
    return path if folder is None else os.path.relpath(path, os.path.abspath(folder))


def study_markdown(result, *, title: str, relative_to: str | None = None) -> str:
    """report.md of a study: the variants, the combined table, the paired tests. Each
    variant's metrics.json is named relative to ``relative_to`` (the report's folder) when
    given, so that a copied report's links hold."""
    lines = [f"# {title}", "", f"Split `{result['split']}`; every variant scored on the same "
             "subjects.", ""]
    for name, model in result["models"].items():
        lines.append(f"- `{name}`: model `{model['model']}`, inputs "
                     f"{', '.join(model['inputs'])}, 2.5D context {model['context_slices']}, "
                     f"stages {', '.join(model['stages'])}, {model['num_subjects']} subjects "
                     f"(`{_path_from(model['eval'], relative_to)}`)")
    lines += ["", study_table(result), ""]
    seeds = next((tuple(m["seeds"]) for m in result["models"].values() if m.get("seeds")), ())
    if len(seeds) == 1:
        lines += [f"Training seed {seeds[0]}.", ""]
    elif seeds:
        lines += [f"Training seeds {', '.join(map(str, seeds))}: each subject's "
                  "score is its mean over the seeds; ± is the sd over subjects, [seeds ± …] "
                  "the sd over seeds of the split mean.", ""]
    if result["wilcoxon"]:
        pairs = ", ".join(f"{t['b']} vs {t['a']}" for t in result["wilcoxon"])
        lines += [f"p: {result['test']}; each row's p compares it with its partner ({pairs})."
                  + (f" Holm: {result['correction']}." if result.get("correction") else ""),
                  ""]
    lines += [result["convention"], ""]
    uncertainty = {name: model["uncertainty"] for name, model in result["models"].items()
                   if model.get("uncertainty")}
    if uncertainty:
        lines += uncertainty_section(uncertainty)
    segmentation = {name: model["segmentation"] for name, model in result["models"].items()
                    if model.get("segmentation")}
    if segmentation:
        lines += segmentation_section(segmentation)
    for test in result["wilcoxon"]:
        lines += [evaluation.wilcoxon_markdown(test["results"], test["a"], test["b"]), ""]
        notes = sorted({r["note"] for entry in test["results"].values()
                        for r in entry.values() if r.get("note")})
        lines += [f"Note: {n}." for n in notes] + ([""] if notes else [])
    return "\n".join(lines)


def study_csv(result) -> str:
    """metrics.csv of a study: one row per variant x contrast x region, with the p-values."""
    fields = (["model", "contrast", "region", "n"]
              + [f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")]
              + ["compared_with"] + [f"p_{m}" for m in METRIC_NAMES]
              + [f"p_holm_{m}" for m in METRIC_NAMES])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    partner = _partner_tests(result)

    def fmt(value):
        return "" if value is None or not np.isfinite(value) else f"{value:.6g}"

    for contrast in _contrasts(result):
        for name, model in result["models"].items():
            entry = model["summary"].get(contrast, {})
            for region in REGIONS:
                keys = {m: evaluation.metric_key(m, region) for m in METRIC_NAMES}
                if not all(k in entry for k in keys.values()):
                    continue
                test = partner.get(name)
                row = {"model": name, "contrast": contrast, "region": region,
                       "n": entry[keys["mae"]]["n"],
                       "compared_with": test["a"] if test else ""}
                for m, k in keys.items():
                    row[f"{m}_mean"] = fmt(entry[k]["mean"])
                    row[f"{m}_std"] = fmt(entry[k]["std"])
                    p = test["results"].get(contrast, {}).get(k) if test else None
                    row[f"p_{m}"] = fmt(p["p_value"]) if p else ""
                    row[f"p_holm_{m}"] = fmt(p.get("p_holm")) if p else ""
                writer.writerow(row)
    return buffer.getvalue()


# ------------------------------------------------------------------ the study figures


def figure_subjects(cohort_dir: str, split: str, count: int) -> list:
    """The first ``count`` records of the split, subjects with a tumor first."""
    records = cohorts.split_records(cohort_dir, split)
    records = sorted(records, key=lambda r: r.group != "gbm")  # stable: manifest order kept
    return records[:max(0, count)]


def comparison_figures(runs: Mapping[str, dict], configs: Mapping, cohort_dirs: Mapping,
                       split: str, count: int) -> dict[str, bytes]:
    """``{subject: PNG bytes}``: every variant's synthesis next to the ground truth."""
    names = list(runs)
    if count <= 0 or not names:
        return {}
    first = configs[names[0]]
    records = figure_subjects(cohort_dirs[names[0]], split, count)
    contrasts = [c for c in first.data.target_channels
                 if all(c in configs[n].data.target_channels for n in names)]
    predictions = {r.subject: {} for r in records}
    truth = {}
    for name in names:
        vconfig = configs[name]
        _, module, variables = synthesize.load_model(runs[name]["stage_dir"],
                                                     use_ema=bool(vconfig.eval.use_ema))
        predict_fn = inference.make_predict_fn(module, variables)
        inputs, targets = tuple(vconfig.data.input_channels), tuple(vconfig.data.target_channels)
        # the levels its evaluation fitted (figures follow the scored synthesis)
        levels = rescale.stage_rescale(runs[name]["stage_dir"], vconfig)
        for record in records:
            subject = cohorts.load_record(
                cohort_dirs[name], record, channels=inputs + targets,
                convert_seconds=bool(vconfig.data.convert_seconds),
                resample=bool(vconfig.data.resample))
            prediction = synthesize.synthesize_subject(
                predict_fn, subject, input_channels=inputs,
                context_slices=int(vconfig.data.context_slices),
                batch_size=int(vconfig.eval.batch_size), levels=levels)
            predictions[record.subject][name] = np.stack(
                [prediction[..., targets.index(c)] for c in contrasts], -1)
            if record.subject not in truth:
                labels = subject.labels if np.any(subject.labels > 0) else None
                truth[record.subject] = (synthesize.stack_inputs(subject, contrasts),
                                         subject.brain_mask, labels, record.group)
    out = {}
    for record in records:
        target, mask, labels, group = truth[record.subject]
        fig = figures.comparison_figure(
            target, predictions[record.subject], mask, labels, contrast_names=contrasts,
            title=f"{record.subject} ({group}, {split})")
        out[record.subject] = figures.png_bytes(fig)
    return out


# ------------------------------------------------------------------ model sizes


def model_summary_rows(config, names, height: int, width: int):
    """[(name, params, flops_per_slice)] for the generators `names` and the discriminator of
    `config`, at one H x W slice (XLA's FLOP count of the compiled forward pass, batch 1)."""
    span = 2 * config.data.context_slices + 1
    input_shape = (1, height, width, len(config.data.input_channels) * span)
    rows = []
    for name in names:
        model_config = config.model.copy_and_resolve_references()
        model_config.name = name
        module = models.build_generator(model_config,
                                        input_channels=config.data.input_channels,
                                        target_channels=config.data.target_channels,
                                        context_slices=config.data.context_slices)
        summary = models.model_summary(module, input_shape)
        rows.append((name, summary["params"], summary["flops_per_slice"]))
    disc = models.build_discriminator(config.discriminator)
    if disc is not None:
        condition = jax.ShapeDtypeStruct(input_shape, jnp.float32)
        image = jax.ShapeDtypeStruct(input_shape[:3] + (len(config.data.target_channels),),
                                     jnp.float32)
        variables = models.summary.abstract_variables(disc, condition, image)
        flops = models.summary.forward_flops(disc, variables, condition, image)
        rows.append((f"discriminator: {config.discriminator.name}",
                     models.count_params(variables), flops))
    return rows


def model_summary_table(rows, height: int, width: int) -> str:
    lines = [f"{'model':<36} {'params':>14} {'GFLOP/slice':>12}   ({height} x {width}, fwd)"]
    for name, params, flops in rows:
        lines.append(f"{name:<36} {params:>14,d} {flops / 1e9:>12.2f}")
    return "\n".join(lines)
