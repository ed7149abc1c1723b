"""Studies: train (or reuse) named variants of one base config, evaluate them on one split,
and write one combined table with paired statistics and a side-by-side figure.

The CLIs ``experiments.compare`` (model comparison, generalization test) and
``experiments.ablate`` (ablations) are thin wrappers of ``run_study(config, workdir)``.

A study config is a training config (every field of configs/default.py: data, sizes, steps)
plus a ``study`` section:

- ``study.variants``: ``{name: entries}``; each variant's config is the base config (the
  study config without ``study``) with its entries applied in order. An entry is either
  ``"dotted.key=value"`` (``value`` a Python literal, or a bare string for string fields, or
  ``a,b,c`` for tuple fields), or the name of a configs module (``"resunet"`` or
  ``"configs/resunet.py"``): then every field that module's ``get_config()`` changes relative
  to ``configs/<study.base>.py`` is set to the module's value. So a variant gets exactly the
  settings of configs/resunet.py etc., while data, sizes and steps stay those of the base.
- ``study.base``: the configs module the variant modules are compared against (``default``).
- ``study.split``: the split every variant is evaluated on.
- ``study.reference``: the variant the others are paired with (Wilcoxon), or ``""``.
- ``study.pairs``: explicit ``(a, b)`` pairs; empty: ``(reference, v)`` for every other v.
- ``study.only``: a subset of the variants to run (empty: all).
- ``study.num_figure_subjects``: subjects in the comparison figure.

Variants with ``model.name == "physics"`` (the signal-equation baseline) are not trained by
gradient descent: their per-contrast scales are fitted in closed form
(``qsnet_jax.models.fit_physics_scales``, least squares inside the brain mask) on every slice of
the training splits of ``config.stages`` and stored in ``<variant>/fit/scales.json``.

Layout: ``WORKDIR/<variant>/`` is an ordinary training work dir (``experiments.main`` would
produce the same); a variant whose stages are finished is reused, not retrained (a work dir
holding a different config is refused). ``WORKDIR/comparison/`` holds report.md,
metrics.json, metrics.csv and figures/<subject>.png, replaced at once when complete.
"""

from __future__ import annotations

import ast
import csv
import importlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from experiments.cli import UserError, write_atomic

COMPARISON_DIR = "comparison"
PHYSICS_STAGE = "fit"
PHYSICS_SCALES = "scales.json"
_NAME = re.compile(r"^[a-z0-9_]+$")
_MODULE = re.compile(r"^(?:configs/)?([a-z0-9_]+)(?:\.py)?$")


# ------------------------------------------------------------- variant configs


def parse_override(text: str) -> tuple[str, str]:
    """``"model.name=resunet"`` -> ``("model.name", "resunet")`` (the value still a string)."""
    key, sep, value = str(text).partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_]\w*)*", key):
        raise UserError(f"bad override {text!r}: expected 'dotted.key=value' or a configs "
                        "module name")
    return key, value.strip()


def _parse_value(key: str, text: str, current):
    """The override's value, typed like the field it replaces."""
    if isinstance(current, bool) and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, str):
            return text
        if isinstance(current, tuple):
            value = tuple(part.strip() for part in text.split(",") if part.strip())
        else:
            raise UserError(f"bad override {key}={text}: cannot parse the value as a "
                            f"{type(current).__name__}") from None
    if isinstance(current, tuple) and isinstance(value, (list, str)):
        value = tuple(value) if isinstance(value, list) else (value,)
    if isinstance(current, str) and not isinstance(value, str):
        value = text
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(current) and not (
            isinstance(current, float) and isinstance(value, float)):
        raise UserError(f"bad override {key}={text}: config.{key} is a "
                        f"{type(current).__name__}, got a {type(value).__name__}")
    return value


def _parent(config: ml_collections.ConfigDict, key: str):
    *path, leaf = key.split(".")
    node = config
    for i, part in enumerate(path):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise UserError(f"unknown config key {key!r}: config.{'.'.join(path[:i + 1])} is "
                            "not a section (every key is in configs/default.py)")
        node = node[part]
    if leaf not in node:
        raise UserError(f"unknown config key {key!r} (every key is in configs/default.py)")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise UserError(f"override {key!r} names a whole section; set its fields instead")
    return node, leaf


def apply_override(config: ml_collections.ConfigDict, text: str):
    """Apply one ``"dotted.key=value"`` to ``config`` in place (UserError on a bad one)."""
    key, value_text = parse_override(text)
    node, leaf = _parent(config, key)
    value = _parse_value(key, value_text, node[leaf])
    try:
        node[leaf] = value
    except (TypeError, ValueError) as error:
        raise UserError(f"bad override {text!r}: {error}") from None


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """``{"dotted.key": value}`` of every leaf field."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _config_module(name: str):
    match = _MODULE.fullmatch(str(name).strip())
    if not match:
        raise UserError(f"bad variant entry {name!r}: expected 'dotted.key=value' or a configs "
                        "module name such as 'resunet'")
    module_name = match.group(1)
    try:
        module = importlib.import_module(f"configs.{module_name}")
    except ModuleNotFoundError:
        raise UserError(f"bad variant entry {name!r}: there is no configs/{module_name}.py") \
            from None
    if not hasattr(module, "get_config"):
        raise UserError(f"bad variant entry {name!r}: configs/{module_name}.py has no "
                        "get_config()")
    return module


def module_changes(name: str, base: str = "default") -> dict:
    """The fields configs/<name>.py changes relative to configs/<base>.py:
    ``{"dotted.key": value}``."""
    config = flatten(_config_module(name).get_config())
    reference = flatten(_config_module(base).get_config())
    extra = sorted(set(config) - set(reference))
    if extra:
        raise UserError(f"configs/{name}.py has fields configs/{base}.py lacks: {extra}")
    return {key: value for key, value in config.items() if reference[key] != value}


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A mutable copy of the study config without its ``study`` section."""
    plain = config.to_dict()
    plain.pop("study", None)
    return ml_collections.ConfigDict(plain)


def variant_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The training config of variant ``name``: the base with the variant's entries applied."""
    variants = config.study.variants
    if name not in variants:
        raise UserError(f"unknown variant {name!r}; known: {list(variants)}")
    entries = variants[name]
    if isinstance(entries, str):
        entries = (entries,)
    result = base_config(config)
    for entry in entries:
        if "=" in str(entry):
            apply_override(result, entry)
            continue
        for key, value in module_changes(entry, str(config.study.base)).items():
            node, leaf = _parent(result, key)
            node[leaf] = value
    return result


# ------------------------------------------------------------------ study plan


def study_plan(config: ml_collections.ConfigDict):
    """``(names, {name: variant config}, pairs)`` after checking the study section."""
    if "study" not in config or not isinstance(config.study, ml_collections.ConfigDict):
        raise UserError("the config has no study section (use configs/compare.py, "
                        "configs/generalization.py or configs/ablations.py)")
    study = config.study
    names = list(study.variants)
    if not names:
        raise UserError("config.study.variants is empty")
    for name in names:
        if not _NAME.fullmatch(name) or name == COMPARISON_DIR:
            raise UserError(f"bad variant name {name!r}: use [a-z0-9_]+ other than "
                            f"{COMPARISON_DIR!r}")
    reference = str(study.get("reference", ""))
    if reference and reference not in study.variants:
        raise UserError(f"config.study.reference={reference!r} is not a variant; "
                        f"known: {names}")
    pairs = [tuple(p) for p in (study.get("pairs") or ())]
    for pair in pairs:
        if len(pair) != 2 or any(p not in study.variants for p in pair) or pair[0] == pair[1]:
            raise UserError(f"config.study.pairs: {pair!r} is not a pair of two variants; "
                            f"known: {names}")
    only = [n for n in (study.get("only") or ()) if n]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UserError(f"config.study.only names unknown variant(s) {unknown}; known: {names}")
    if only:  # a subset, with what its paired tests need
        needed = set(only) | ({reference} if reference else set())
        needed |= {a for a, b in pairs if b in only}
        names = [n for n in names if n in needed]
    if not pairs and reference:
        pairs = [(reference, n) for n in names if n != reference]
    pairs = [p for p in pairs if p[0] in names and p[1] in names]
    from experiments import job  # noqa: PLC0415

    configs = {}
    for name in names:
        configs[name] = variant_config(config, name)
        try:
            job.validate_config(configs[name])
        except UserError as error:
            raise UserError(f"variant {name!r}: {error}") from None
    return names, configs, pairs


# --------------------------------------------------------------------- running


def _say(stream, text: str):
    print(text, file=stream, flush=True)


def _check_same_config(vdir: str, vconfig, name: str):
    """Refuse to resume or reuse a variant work dir trained with another config."""
    path = os.path.join(vdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = json.load(f)
    wanted = json.loads(vconfig.to_json_best_effort())
    differing = sorted(_diff(stored, wanted))
    if differing:
        raise UserError(f"{vdir} holds variant {name!r} trained with another config "
                        f"({', '.join(differing[:4])}{' ...' if len(differing) > 4 else ''} "
                        "differ): remove it or use another --workdir")


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


def _stages_done(vdir: str, vconfig) -> bool:
    from experiments import job  # noqa: PLC0415

    return all(job.stage_done(os.path.join(vdir, stage), int(vconfig[stage].steps))
               for stage in vconfig.stages)


def _physics_model(vconfig, scales=None):
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from qsnet_jax import models  # noqa: PLC0415

    inputs = tuple(vconfig.data.input_channels)
    context = int(vconfig.data.context_slices)
    module = models.build_generator(vconfig.model, input_channels=inputs,
                                    target_channels=tuple(vconfig.data.target_channels),
                                    context_slices=context)
    try:
        variables = module.init(jax.random.PRNGKey(0),
                                jnp.zeros((1, 16, 16, len(inputs) * (2 * context + 1))))
    except ValueError as error:
        raise UserError(f"physics baseline: {error}") from None
    variables = {"params": dict(variables["params"])}
    if scales is not None:
        variables["params"]["contrast_scale"] = jnp.asarray(scales, jnp.float32)
    return module, variables


def _fit_physics(vconfig, vdir: str, cohort_dir: str, stream) -> str:
    """Fit (or reuse) the physics baseline's scales; returns its stage dir."""
    from data_pipelines import input_pipeline  # noqa: PLC0415
    from experiments import job  # noqa: PLC0415
    from qsnet_jax import models  # noqa: PLC0415

    stage_dir = os.path.join(vdir, PHYSICS_STAGE)
    path = os.path.join(stage_dir, PHYSICS_SCALES)
    if os.path.exists(path):
        _say(stream, f"  reusing the fitted scales in {path}")
        return stage_dir
    job.prepare_workdir(vconfig, vdir)
    splits = [str(vconfig[stage].train_split) for stage in vconfig.stages]
    module, variables = _physics_model(vconfig)

    def batches():
        for split in splits:
            yield from input_pipeline.make_eval_iterator(
                cohort_dir, split, vconfig.data, batch_size=int(vconfig.eval.batch_size),
                process_index=0, process_count=1)

    fitted = models.fit_physics_scales(module, variables, batches())
    scales = [float(s) for s in np.asarray(fitted["params"]["contrast_scale"])]
    os.makedirs(stage_dir, exist_ok=True)
    write_atomic(path, json.dumps({
        "contrast_scale": scales, "target_channels": list(vconfig.data.target_channels),
        "fitted_on": splits, "site": str(vconfig.model.physics_site),
        "method": "least squares inside the brain mask over every slice of the splits"},
        indent=2))
    _say(stream, f"  fitted per-contrast scales on {', '.join(splits)}: "
         + ", ".join(f"{c} {s:.3f}" for c, s in zip(vconfig.data.target_channels, scales,
                                                     strict=True)))
    return stage_dir


def load_variant_model(vconfig, stage_dir: str):
    """``(module, variables)`` of a trained (or fitted) variant."""
    if vconfig.model.name == "physics":
        with open(os.path.join(stage_dir, PHYSICS_SCALES)) as f:
            scales = json.load(f)["contrast_scale"]
        return _physics_model(vconfig, scales)
    from experiments import synthesize  # noqa: PLC0415

    _, module, variables = synthesize.load_model(stage_dir, use_ema=bool(vconfig.eval.use_ema))
    return module, variables


def run_variant(name: str, vconfig, vdir: str, split: str, cohort_dir: str, *, index: int,
                total: int, stream=sys.stdout) -> dict:
    """Train (or reuse) one variant and evaluate it on ``split``; returns its eval record."""
    from experiments import evaluate, job  # noqa: PLC0415

    _check_same_config(vdir, vconfig, name)
    started = time.time()
    if vconfig.model.name == "physics":
        _say(stream, f"[study] variant {index}/{total} {name}: physics baseline (closed-form "
             "scale fit, no training)")
        trained = not os.path.exists(os.path.join(vdir, PHYSICS_STAGE, PHYSICS_SCALES))
        stage_dir = _fit_physics(vconfig, vdir, cohort_dir, stream)
    else:
        stages = tuple(vconfig.stages)
        trained = not _stages_done(vdir, vconfig)
        if not trained:
            _say(stream, f"[study] variant {index}/{total} {name}: reusing the finished "
                 f"stages {', '.join(stages)} in {vdir}")
        else:
            _say(stream, f"[study] variant {index}/{total} {name}: training "
                 f"{vconfig.model.name}, stages {', '.join(stages)} in {vdir}")
        job.run(vconfig, vdir)
        stage_dir = os.path.join(vdir, stages[-1])
    metrics_path = os.path.join(stage_dir, "eval", split, "metrics.json")
    # The training job evaluates each stage on its eval_split as it finishes it; any other
    # evaluation found here predates a (re)training of this run and is redone.
    job_evaluated = (vconfig.model.name != "physics" and bool(vconfig.eval.after_each_stage)
                     and split == str(vconfig[vconfig.stages[-1]].eval_split))
    if os.path.exists(metrics_path) and (not trained or job_evaluated):
        _say(stream, f"  reusing the evaluation {metrics_path}")
    else:
        _say(stream, f"  evaluating {name} on {split}")
        module_variables = (load_variant_model(vconfig, stage_dir)
                            if vconfig.model.name == "physics" else None)
        evaluate.evaluate_run(vconfig, vdir, stage_dir, split, cohort_dir=cohort_dir,
                              model=module_variables, stream=stream)
    with open(metrics_path) as f:
        record = json.load(f)
    _say(stream, f"  {name} done in {time.time() - started:.1f} s")
    return {"stage_dir": stage_dir, "metrics_path": metrics_path,
            "per_subject": record["per_subject"], "model": record["model"]}


def run_study(config: ml_collections.ConfigDict, workdir: str, *, stream=sys.stdout) -> dict:
    """Run every variant, then write WORKDIR/comparison/. Returns the combined result."""
    from experiments import evaluate, job  # noqa: PLC0415

    if "train" in config:
        job.configure_runtime(config)  # quiet INFO logs (e.g. JAX's backend probing)
    names, configs, pairs = study_plan(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not os.path.isdir(os.path.dirname(workdir)):
        raise UserError(f"the parent of --workdir does not exist: {os.path.dirname(workdir)}")
    os.makedirs(workdir, exist_ok=True)
    split = str(config.study.split)
    cohorts = {name: job.get_cohort(vconfig) for name, vconfig in configs.items()}
    for name in names:  # fail on a missing split before hours of training
        evaluate.split_records(cohorts[name], split)
    _say(stream, f"[study] {len(names)} variant(s) on split {split}: {', '.join(names)}")
    runs = {}
    for i, name in enumerate(names):
        runs[name] = run_variant(name, configs[name], os.path.join(workdir, name), split,
                                 cohorts[name], index=i + 1, total=len(names), stream=stream)
    result = combine(runs, configs, pairs, split=split,
                     reference=str(config.study.get("reference", "")))
    out_dir = os.path.join(workdir, COMPARISON_DIR)
    write_outputs(result, runs, configs, cohorts, out_dir, config=config)
    _say(stream, f"[study] wrote {out_dir}")
    return result


# ---------------------------------------------------------------------- tables


def combine(runs: Mapping[str, dict], configs: Mapping, pairs: Sequence[tuple[str, str]], *,
            split: str, reference: str) -> dict:
    """Summaries of every variant and the paired Wilcoxon tests, as metrics.json holds them."""
    from qsnet_jax import evaluation  # noqa: PLC0415

    models = {}
    for name, run in runs.items():
        vconfig = configs[name]
        models[name] = {
            "model": run["model"], "inputs": list(vconfig.data.input_channels),
            "targets": list(vconfig.data.target_channels),
            "context_slices": int(vconfig.data.context_slices),
            "stages": list(vconfig.stages), "eval": run["metrics_path"],
            "num_subjects": len(run["per_subject"]),
            "summary": evaluation.aggregate(run["per_subject"]),
            "per_subject": run["per_subject"]}
    tests = []
    for a, b in pairs:
        tests.append({"a": a, "b": b, "results": evaluation.compare_models(
            runs[a]["per_subject"], runs[b]["per_subject"])})
    first = next(iter(models.values()))["summary"]
    return {"split": split, "reference": reference, "variants": list(runs),
            "pairs": [list(p) for p in pairs], "models": models, "wilcoxon": tests,
            "std": "sample (ddof = 1)", "test": "Wilcoxon signed-rank, paired over subjects, "
            "two-sided (qsnet_jax.evaluation.paired_wilcoxon)",
            "convention": evaluation.convention_text(first)}


def _partner_tests(result) -> dict:
    """``{variant b: test of (a, b)}`` for the first pair naming b second."""
    partner = {}
    for test in result["wilcoxon"]:
        partner.setdefault(test["b"], test)
    return partner


def _columns(result):
    from qsnet_jax.evaluation import metric_key  # noqa: PLC0415
    from qsnet_jax.metrics import METRIC_NAMES, REGIONS  # noqa: PLC0415

    return [(m, r) for r in REGIONS for m in METRIC_NAMES
            if any(metric_key(m, r) in entry for model in result["models"].values()
                   for entry in model["summary"].values())]


def _contrasts(result) -> list[str]:
    order = []
    for model in result["models"].values():
        order += [c for c in model["summary"] if c not in order]
    return order


def study_markdown(result) -> str:
    """Rows = contrast × variant; cells mean ± std with the paired p-value against the
    row's partner (``(p=…)``); the reference / first of a pair has none."""
    from qsnet_jax import evaluation  # noqa: PLC0415

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
                test = partner.get(name, {}).get("results", {}).get(contrast, {}).get(key)
                if test is not None:
                    text += f" (p={test['p_value']:.3g})"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(result, *, title: str) -> str:
    from qsnet_jax import evaluation  # noqa: PLC0415

    lines = [f"# {title}", "", f"Split `{result['split']}`; every variant scored on the same "
             "subjects.", ""]
    for name, model in result["models"].items():
        lines.append(f"- `{name}`: model `{model['model']}`, inputs "
                     f"{', '.join(model['inputs'])}, 2.5D context {model['context_slices']}, "
                     f"stages {', '.join(model['stages'])}, {model['num_subjects']} subjects "
                     f"(`{model['eval']}`)")
    lines += ["", study_markdown(result), ""]
    if result["wilcoxon"]:
        pairs = ", ".join(f"{t['b']} vs {t['a']}" for t in result["wilcoxon"])
        lines += [f"p: {result['test']}; each row's p compares it with its partner ({pairs}).",
                  ""]
    lines += [result["convention"], ""]
    for test in result["wilcoxon"]:
        lines += [evaluation.wilcoxon_markdown(test["results"], test["a"], test["b"]), ""]
        notes = sorted({r["note"] for entry in test["results"].values()
                        for r in entry.values() if r.get("note")})
        lines += [f"Note: {n}." for n in notes] + ([""] if notes else [])
    return "\n".join(lines)


def csv_text(result) -> str:
    from qsnet_jax import evaluation  # noqa: PLC0415
    from qsnet_jax.metrics import METRIC_NAMES, REGIONS  # noqa: PLC0415

    fields = (["model", "contrast", "region", "n"]
              + [f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")]
              + ["compared_with"] + [f"p_{m}" for m in METRIC_NAMES])
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
                writer.writerow(row)
    return buffer.getvalue()


# --------------------------------------------------------------------- figures


def figure_subjects(cohort_dir: str, split: str, count: int) -> list:
    """The first ``count`` records of the split, subjects with a tumor first."""
    from experiments import evaluate  # noqa: PLC0415

    records = evaluate.split_records(cohort_dir, split)
    records = sorted(records, key=lambda r: r.group != "gbm")  # stable: manifest order kept
    return records[:max(0, count)]


def comparison_figures(runs, configs, cohorts, split: str, count: int) -> dict[str, bytes]:
    """``{subject: PNG bytes}``: every variant's synthesis next to the ground truth."""
    from experiments import synthesize  # noqa: PLC0415
    from qsnet_jax import figures, inference  # noqa: PLC0415

    names = list(runs)
    if count <= 0 or not names:
        return {}
    first = configs[names[0]]
    records = figure_subjects(cohorts[names[0]], split, count)
    contrasts = [c for c in first.data.target_channels
                 if all(c in configs[n].data.target_channels for n in names)]
    predictions = {r.subject: {} for r in records}
    truth = {}
    for name in names:
        vconfig = configs[name]
        module, variables = load_variant_model(vconfig, runs[name]["stage_dir"])
        predict_fn = inference.make_predict_fn(module, variables)
        inputs, targets = tuple(vconfig.data.input_channels), tuple(vconfig.data.target_channels)
        for record in records:
            subject = synthesize.load_record(
                cohorts[name], record, channels=inputs + targets,
                convert_seconds=bool(vconfig.data.convert_seconds),
                resample=bool(vconfig.data.resample))
            prediction = synthesize.synthesize_subject(
                predict_fn, subject, input_channels=inputs,
                context_slices=int(vconfig.data.context_slices),
                batch_size=int(vconfig.eval.batch_size))
            predictions[record.subject][name] = np.stack(
                [prediction[..., targets.index(c)] for c in contrasts], -1)
            if record.subject not in truth:
                labels = subject.labels if np.any(subject.labels > 0) else None
                truth[record.subject] = (np.stack([subject.volumes[c] for c in contrasts], -1),
                                         subject.brain_mask, labels, record.group)
    out = {}
    for record in records:
        target, mask, labels, group = truth[record.subject]
        fig = figures.comparison_figure(
            target, predictions[record.subject], mask, labels, contrast_names=contrasts,
            title=f"{record.subject} ({group}, {split})")
        out[record.subject] = figures.png_bytes(fig)
    return out


def write_outputs(result, runs, configs, cohorts, out_dir: str, *, config):
    """report.md, metrics.json, metrics.csv and figures/ into ``out_dir``, all at once."""
    from experiments.synthesize import publish  # noqa: PLC0415
    from qsnet_jax import evaluation  # noqa: PLC0415

    title = str(config.study.get("title", "") or "Model comparison")
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-",
                               dir=os.path.dirname(out_dir))
    try:
        with open(os.path.join(staging, "metrics.json"), "w") as f:
            json.dump(evaluation.jsonable(result), f, indent=2, allow_nan=False)
        with open(os.path.join(staging, "metrics.csv"), "w") as f:
            f.write(csv_text(result))
        with open(os.path.join(staging, "report.md"), "w") as f:
            f.write(report_markdown(result, title=title))
        os.makedirs(os.path.join(staging, "figures"))
        count = int(config.study.get("num_figure_subjects", 2))
        for subject, png in comparison_figures(runs, configs, cohorts, result["split"],
                                               count).items():
            with open(os.path.join(staging, "figures", f"{subject}.png"), "wb") as f:
                f.write(png)
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
