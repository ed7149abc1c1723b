"""Studies: train (or reuse) named variants of one base config, evaluate them on one split,
and write one combined table with paired statistics and a side-by-side figure.

The CLIs ``experiments.compare`` (model comparison, generalization test) and
``experiments.ablate`` (ablations) are thin wrappers of ``run_study(config, workdir)``; the
tables and figures are laid out by ``workflow.reports``.

A study config is a training config (every field of configs/default.py: data, sizes, steps)
plus a ``study`` section:

- ``study.variants``: ``{name: edits}``; each variant's config is the base config (the
  study config without ``study``) with its edits applied in order. An edit is a Python
  function ``edit(config)`` written in the config file (``configs/resunet.py``'s ``apply``
  turns any QS-Net config into the Res-UNet baseline's, so a variant gets exactly its
  settings while data, sizes and steps stay those of the base), or, from the command line, a
  ``"dotted.key=value"`` string (``value`` a Python literal, or a bare string for string
  fields, or ``a,b,c`` for tuple fields).
- ``study.split``: the split every variant is evaluated on.
- ``study.reference``: the variant the others are paired with (Wilcoxon), or ``""``.
- ``study.pairs``: explicit ``(a, b)`` pairs; empty: ``(reference, v)`` for every other v.
- ``study.only``: a subset of the variants to run (empty: all).
- ``study.num_figure_subjects``: subjects in the comparison figure.
- ``study.seeds``: training seeds (empty: one run with ``config.seed``). With seeds, every
  variant is trained once per seed in ``WORKDIR/seeds/<seed>/<variant>/``; a subject's score
  is its mean over the seeds (the paired tests run on those means), and the table adds the
  spread across seeds (sd of the per-seed split means) next to the spread across subjects.
  The interval scores (coverage, width) and the downstream Dice are averaged the same way;
  the conformal quantiles, the timing and the figures are the first seed's.
- ``study.report_seeds``: seeds of ``study.seeds`` that also get a report of their own, in
  ``WORKDIR/comparison_seed<seed>/`` (the same layout as ``comparison/``): one seed's table,
  tests and figures, as a study run with that seed alone would write them. Finished
  variants are reused, so adding it to a finished study costs only the reports.

Every variant, the physics baseline included, goes through ``workflow.train_eval.run`` (the
physics baseline's closed-form fit writes an ordinary checkpoint) and is evaluated and drawn
from its checkpoint the same way.

Layout: ``WORKDIR/<variant>/`` is an ordinary training work dir (``experiments.main`` would
produce the same); a variant whose stages are finished is reused, not retrained (a work dir
holding a different config is refused). ``WORKDIR/segmenter/`` is the downstream segmenter
every variant shares (config.segmentation.dir). ``WORKDIR/comparison/`` holds report.md,
metrics.json, metrics.csv and figures/<subject>.png, replaced at once when complete.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from qsnet_jax import evaluation, io
from qsnet_jax import uncertainty as unc
from qsnet_jax.train.loop import format_duration
from workflow import cohorts, evaluate, reports, train_eval
from workflow.errors import UserError
from workflow.overrides import apply_override

COMPARISON_DIR = "comparison"
SEGMENTER_DIR = "segmenter"  # the study's shared downstream segmenter
# where a variant's outputs go, not how it is trained: a finished variant copied into
# another study's work dir (another WORKDIR/segmenter) is still the same variant
PLACEMENT_KEYS = {"segmentation.dir"}
SEEDS_DIR = "seeds"  # WORKDIR/seeds/<seed>/<variant>/ with config.study.seeds
_NAME = re.compile(r"^[a-z0-9_]+$")


# ------------------------------------------------------------- variant configs


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A mutable copy of the study config without its ``study`` section."""
    plain = config.to_dict()
    plain.pop("study", None)
    return ml_collections.ConfigDict(plain)


def variant_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The training config of variant ``name``: the base with the variant's edits applied in
    order (a function ``edit(config)``, or a ``"dotted.key=value"`` string)."""
    variants = config.study.variants
    if name not in variants:
        raise UserError(f"unknown variant {name!r}; known: {list(variants)}")
    edits = variants[name]
    if isinstance(edits, str) or callable(edits):
        edits = (edits,)
    result = base_config(config)
    for edit in edits:
        if callable(edit):
            edit(result)
        elif isinstance(edit, str) and "=" in edit:
            apply_override(result, edit)
        else:
            raise UserError(f"bad edit {edit!r} of variant {name!r}: expected a function of "
                            "the config or 'dotted.key=value'")
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
        if not _NAME.fullmatch(name) or name in (COMPARISON_DIR, SEGMENTER_DIR, SEEDS_DIR):
            raise UserError(f"bad variant name {name!r}: use [a-z0-9_]+ other than "
                            f"{COMPARISON_DIR!r}, {SEGMENTER_DIR!r} and {SEEDS_DIR!r}")
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
    configs = {}
    for name in names:
        configs[name] = variant_config(config, name)
        try:
            train_eval.validate_config(configs[name])
        except UserError as error:
            raise UserError(f"variant {name!r}: {error}") from None
    return names, configs, pairs


# --------------------------------------------------------------------- running


def _say(stream, text: str):
    print(text, file=stream, flush=True)


class StudyProgress:
    """Where a study stands after each variant: the variants done, the time so far, and an
    estimate of the time left from this study's own pace, the mean time of the variants it
    trained so far (evaluation included) times the variants still to train. Reused variants
    count as done but set no pace. The variants of a study differ (a physics fit takes
    minutes, QS-Net a quarter of an hour), so the estimate is rough, and says so."""

    def __init__(self, total: int, to_train: int, clock=time.time):
        self.total, self.to_train, self.clock = total, to_train, clock
        self.start = clock()
        self.done = self.trained = 0
        self.training_seconds = 0.0

    def record(self, seconds: float, *, trained: bool) -> str:
        """Count one finished variant (`seconds` it took); returns the progress line."""
        self.done += 1
        if trained:
            self.trained += 1
            self.training_seconds += seconds
        left = self.to_train - self.trained
        line = (f"[study] {self.done}/{self.total} variants done, "
                f"{format_duration(self.clock() - self.start)} so far")
        if left and self.trained:
            pace = self.training_seconds / self.trained
            line += (f"; {left} still to train, about {format_duration(left * pace)} left at "
                     f"this study's pace ({format_duration(pace)} a variant; variants differ)")
        elif left:
            line += f"; {left} still to train"
        return line


def _check_same_config(vdir: str, vconfig, name: str):
    """Refuse to resume or reuse a variant work dir trained with another config."""
    path = os.path.join(vdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = json.load(f)
    wanted = json.loads(vconfig.to_json_best_effort())
    differing = sorted(set(_diff(stored, wanted)) - PLACEMENT_KEYS)
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


def run_variant(name: str, vconfig, vdir: str, split: str, cohort_dir: str, *, index: int,
                total: int, to_train: bool, stream=sys.stdout) -> dict:
    """Train (or reuse) one variant and evaluate it on ``split``; returns its eval record.
    ``to_train``: whether it has stages left to train (``not train_eval.is_trained``)."""
    _check_same_config(vdir, vconfig, name)
    started = time.time()
    stages = tuple(vconfig.stages)
    what = ("physics baseline (closed-form scale fit)" if vconfig.model.name == "physics"
            else f"training {vconfig.model.name}")
    if not to_train:
        _say(stream, f"[study] variant {index}/{total} {name}: reusing the finished "
             f"stages {', '.join(stages)} in {vdir}")
    else:
        _say(stream, f"[study] variant {index}/{total} {name}: {what}, stages "
             f"{', '.join(stages)} in {vdir}")
    train_eval.run(vconfig, vdir)
    stage_dir = os.path.join(vdir, stages[-1])
    metrics_path = os.path.join(stage_dir, evaluate.EVAL_DIR, split, "metrics.json")
    # The training job evaluates each stage on its eval_split as it finishes it; any other
    # evaluation found here predates a (re)training of this run and is redone.
    job_evaluated = (bool(vconfig.eval.after_each_stage)
                     and split == str(vconfig[stages[-1]].eval_split))
    if os.path.exists(metrics_path) and (not to_train or job_evaluated):
        _say(stream, f"  reusing the evaluation {metrics_path}")
    else:
        _say(stream, f"  evaluating {name} on {split}")
        evaluate.evaluate_run(vconfig, stage_dir, split, cohort_dir=cohort_dir, stream=stream)
    with open(metrics_path) as f:
        record = json.load(f)
    _say(stream, f"  {name} done in {time.time() - started:.1f} s")
    return {"stage_dir": stage_dir, "metrics_path": metrics_path,
            "per_subject": record["per_subject"], "model": record["model"],
            "uncertainty": record.get("uncertainty"),
            "segmentation": record.get("segmentation")}


def with_seed(vconfig, seed: int | None):
    """A copy of a variant config trained with ``seed`` (None: unchanged)."""
    if seed is None:
        return vconfig
    seeded = ml_collections.ConfigDict(vconfig.to_dict())
    seeded.seed = int(seed)
    return seeded


def _common_subjects(tables: Sequence[Mapping]) -> list:
    """The subjects every seed's per-subject table holds, in the first table's order."""
    return [s for s in tables[0] if all(s in t for t in tables)]


def mean_over_seeds(tables: Sequence[Mapping]) -> dict:
    """``{subject: {group: {key: mean}}}`` over the seeds' per-subject tables, for the
    subjects every seed scored and the keys every seed has (a group is a contrast, or the
    segmenter's input source)."""
    averaged = {}
    for subject in _common_subjects(tables):
        averaged[subject] = {}
        for group, scores in tables[0][subject].items():
            keys = [k for k in scores if all(k in t[subject].get(group, {}) for t in tables)]
            averaged[subject][group] = {
                k: float(sum(t[subject][group][k] for t in tables) / len(tables)) for k in keys}
    return averaged


def seed_spread(tables: Sequence[Mapping]) -> dict:
    """``{group: {key: {"means": per-seed split means, "std": their sample sd}}}`` over the
    subjects every seed scored."""
    common = _common_subjects(tables)
    seed_means = [evaluation.aggregate({s: t[s] for s in common}) for t in tables]
    spread = {}
    for group, entry in seed_means[0].items():
        spread[group] = {}
        for key in entry:
            means = [m[group][key]["mean"] for m in seed_means if key in m.get(group, {})]
            sd = float(np.std(means, ddof=1)) if len(means) > 1 else float("nan")
            spread[group][key] = {"means": means, "std": sd}
    return spread


def _seed_averaged_record(records: Sequence, seeds: Sequence[int], *, pooled=None):
    """An evaluation's ``uncertainty`` or ``segmentation`` entry over several seeds: the
    per-subject scores and their summary are the seed means (as the image scores), with the
    per-seed split means beside them; the rest (method, calibration, timing) is the first
    seed's. A seed without per-subject scores (a note instead) leaves the first seed's."""
    if not records or not all(isinstance(r, Mapping) and "per_subject" in r for r in records):
        return records[0] if records else None
    tables = [r["per_subject"] for r in records]
    averaged = mean_over_seeds(tables)
    merged = dict(records[0]) | {"per_subject": averaged,
                                 "summary": evaluation.aggregate(averaged),
                                 "seeds": list(seeds), "seed_spread": seed_spread(tables)}
    if pooled is not None:
        merged["pooled_coverage"] = pooled(averaged)
    return merged


def average_over_seeds(runs: Sequence[dict], seeds: Sequence[int]) -> dict:
    """One variant's record from its runs with several training seeds: per subject the mean
    score over the seeds (the subjects every seed scored), the per-seed split means and
    their spread (sample sd over seeds); the interval scores and downstream Dice likewise
    (their calibration, timing and the figures are the first seed's)."""
    tables = [r["per_subject"] for r in runs]
    return runs[0] | {
        "per_subject": mean_over_seeds(tables), "seeds": list(seeds),
        "seed_stage_dirs": [r["stage_dir"] for r in runs], "seed_spread": seed_spread(tables),
        "uncertainty": _seed_averaged_record([r.get("uncertainty") for r in runs], seeds,
                                             pooled=unc.pooled_coverage),
        "segmentation": _seed_averaged_record([r.get("segmentation") for r in runs], seeds)}


def share_segmenter(configs: Mapping, workdir: str):
    """Point every variant without its own config.segmentation.dir at WORKDIR/segmenter:
    the downstream segmenter is trained on ground truth, so the variants of one cohort and
    target set share one (it is retrained where its settings or targets differ)."""
    for vconfig in configs.values():
        if "segmentation" in vconfig and not vconfig.segmentation.get("dir", ""):
            vconfig.segmentation.dir = os.path.join(os.path.abspath(workdir), SEGMENTER_DIR)


def study_seeds(config) -> tuple[int, ...]:
    """config.study.seeds as ints; empty: one run per variant with config.seed."""
    seeds = tuple(config.study.get("seeds", ()) or ())
    try:
        seeds = tuple(int(s) for s in seeds)
    except (TypeError, ValueError):
        raise UserError(f"config.study.seeds={seeds!r}: expected integers") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"config.study.seeds={seeds!r} repeats a seed")
    return seeds


def study_report_seeds(config, seeds: Sequence[int]) -> tuple[int, ...]:
    """config.study.report_seeds as ints, each one of `seeds` (UserError otherwise)."""
    wanted = tuple(config.study.get("report_seeds", ()) or ())
    try:
        wanted = tuple(dict.fromkeys(int(s) for s in wanted))
    except (TypeError, ValueError):
        raise UserError(f"config.study.report_seeds={wanted!r}: expected integers") from None
    missing = [s for s in wanted if s not in seeds]
    if missing:
        raise UserError(f"config.study.report_seeds: seed {missing[0]} is not one of "
                        f"config.study.seeds={tuple(seeds)!r}")
    return wanted


def seed_workdir(workdir: str, seed: int | None) -> str:
    """Where the variants of one training seed live: WORKDIR without study seeds,
    WORKDIR/seeds/<seed>/ with them."""
    return workdir if seed is None else os.path.join(workdir, SEEDS_DIR, str(seed))


def run_study(config: ml_collections.ConfigDict, workdir: str, *, make_parents: bool = False,
              stream=sys.stdout) -> dict:
    """Run every variant (for every seed of config.study.seeds), then write
    WORKDIR/comparison/. Returns the combined result.
    `make_parents`: create missing parents of `workdir` (the default runs/<config name>)."""
    if "train" in config:
        train_eval.configure_runtime(config)  # quiet INFO logs (e.g. JAX's backend probing)
    names, configs, pairs = study_plan(config)
    seeds = study_seeds(config)
    report_seeds = study_report_seeds(config, seeds)
    workdir = train_eval.check_workdir(workdir, make_parents=make_parents)
    split = str(config.study.split)
    cohort_dirs = {name: cohorts.get_cohort(vconfig) for name, vconfig in configs.items()}
    for name in names:  # fail on a missing split before hours of training
        cohorts.split_records(cohort_dirs[name], split)
    os.makedirs(workdir, exist_ok=True)
    _say(stream, f"[study] {len(names)} variant(s) on split {split}: {', '.join(names)}"
         + (f"; training seeds {', '.join(map(str, seeds))}" if seeds else ""))
    per_seed = {name: [] for name in names}
    seeded = {seed: {name: with_seed(c, seed) for name, c in configs.items()}
              for seed in seeds or (None,)}
    untrained = {(seed, name): not train_eval.is_trained(
        vconfigs[name], os.path.join(seed_workdir(workdir, seed), name))
        for seed, vconfigs in seeded.items() for name in names}
    progress = StudyProgress(len(untrained), sum(untrained.values()))
    for s, (seed, vconfigs) in enumerate(seeded.items()):
        folder = seed_workdir(workdir, seed)
        os.makedirs(folder, exist_ok=True)
        share_segmenter(vconfigs, folder)
        for i, name in enumerate(names):
            label = name if seed is None else f"{name} (seed {seed})"
            started = time.time()
            per_seed[name].append(run_variant(
                label, vconfigs[name], os.path.join(folder, name), split, cohort_dirs[name],
                index=s * len(names) + i + 1, total=progress.total,
                to_train=untrained[seed, name], stream=stream))
            _say(stream, progress.record(time.time() - started,
                                         trained=untrained[seed, name]))
    reference = str(config.study.get("reference", ""))

    def report(runs, folder):
        result = combine(runs, configs, pairs, split=split, reference=reference)
        out_dir = os.path.join(workdir, folder)
        write_outputs(result, runs, configs, cohort_dirs, out_dir, config=config)
        _say(stream, f"[study] wrote {out_dir}")
        return result

    for seed in report_seeds:  # each a one-seed study's report, from that seed's runs
        position = seeds.index(seed)
        report({name: average_over_seeds([records[position]], (seed,))
                for name, records in per_seed.items()}, f"{COMPARISON_DIR}_seed{seed}")
    return report({name: average_over_seeds(records, seeds) if seeds else records[0]
                   for name, records in per_seed.items()}, COMPARISON_DIR)


def combine(runs: Mapping[str, dict], configs: Mapping, pairs: Sequence[tuple[str, str]], *,
            split: str, reference: str) -> dict:
    """Summaries of every variant and the paired Wilcoxon tests, as metrics.json holds them."""
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
            "per_subject": run["per_subject"],
            # interval scores and downstream Dice, as the variant's evaluation wrote them
            "uncertainty": run.get("uncertainty"), "segmentation": run.get("segmentation")}
        if "seeds" in run:  # several training seeds: subject scores are their means
            models[name] |= {"seeds": run["seeds"], "seed_spread": run["seed_spread"],
                             "seed_stage_dirs": run["seed_stage_dirs"]}
    tests = []
    for a, b in pairs:
        tests.append({"a": a, "b": b, "results": evaluation.compare_models(
            runs[a]["per_subject"], runs[b]["per_subject"])})
    correction = evaluation.adjust_for_multiple_comparisons(tests)
    first = next(iter(models.values()))["summary"]
    return {"split": split, "reference": reference, "variants": list(runs),
            "pairs": [list(p) for p in pairs], "models": models, "wilcoxon": tests,
            "std": "sample (ddof = 1)", "test": "Wilcoxon signed-rank, paired over subjects, "
            "two-sided (qsnet_jax.evaluation.paired_wilcoxon)", "correction": correction,
            "convention": evaluation.convention_text(first)}


def write_outputs(result, runs, configs, cohort_dirs, out_dir: str, *, config):
    """report.md, metrics.json, metrics.csv and figures/ into ``out_dir``, all at once."""
    title = str(config.study.get("title", "") or "Model comparison")
    count = int(config.study.get("num_figure_subjects", 2))
    with io.staged_dir(out_dir, if_exists="replace") as staging:
        io.write_text(os.path.join(staging, "metrics.json"),
                      json.dumps(evaluation.jsonable(result), indent=2, allow_nan=False))
        io.write_text(os.path.join(staging, "metrics.csv"), reports.study_csv(result))
        io.write_text(os.path.join(staging, "report.md"),
                      reports.study_markdown(result, title=title, relative_to=out_dir))
        os.makedirs(os.path.join(staging, "figures"))
        for subject, png in reports.comparison_figures(runs, configs, cohort_dirs,
                                                       result["split"], count).items():
            io.write_bytes(os.path.join(staging, "figures", f"{subject}.png"), png)
