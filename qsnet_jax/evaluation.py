"""Aggregation, tables and paired statistics of per-subject scores (qsnet_jax.metrics).

The shapes passed around:

- ``per_subject``: ``{subject_id: {contrast: {metric_key: float}}}`` as ``metrics.score_volume``
  returns for each subject; metric keys are ``mae``, ``ssim``, ``psnr`` and, for subjects with
  a tumor, ``mae_tumor``, ``ssim_tumor``, ``psnr_tumor``.
- ``summary`` (``aggregate``): ``{contrast: {metric_key: {"mean", "std", "n"}}}``, mean and
  **sample** standard deviation (ddof = 1, as tables in the literature usually report) over
  the subjects that have that key; ``std`` is NaN for a single subject.

Figures live in ``qsnet_jax.figures``. Nothing here reads or writes files: the callers
(``workflow.evaluate``, ``workflow.reports``) own the file policy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from qsnet_jax.metrics import CONVENTION, HIGHER_IS_BETTER, METRIC_NAMES, REGIONS

STD_DDOF = 1
STD_CONVENTION = ("mean ± std over test subjects; std is the sample standard deviation "
                  "(ddof = 1).")
CONTRAST_TITLES = {
    "t1w": "T1w", "t2w": "T2w", "t1flair": "T1-FLAIR", "t2flair": "T2-FLAIR", "swi": "SWI",
    "t1map": "T1 map", "t2map": "T2 map", "pdmap": "PD map",
}
METRIC_TITLES = {"mae": "MAE (×100)", "ssim": "SSIM", "psnr": "PSNR (dB)", "nmi": "NMI",
                 "coverage": "coverage", "width": "width (×100)", "spearman": "Spearman"}
METRIC_DECIMALS = {"mae": 2, "ssim": 3, "psnr": 2, "nmi": 3, "coverage": 3, "width": 2,
                   "spearman": 2}
# The paper's three scores per region, then NMI (whole brain only): the default table.
TABLE_METRICS = METRIC_NAMES + ("nmi",)
UNCERTAINTY_METRICS = ("coverage", "width", "spearman")
WILCOXON_MIN_N = 6  # below this a two-sided exact test cannot reach p < 0.05


def metric_key(metric: str, region: str = "brain") -> str:
    """``("ssim", "tumor") -> "ssim_tumor"``; the whole-brain key has no suffix."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; known: {list(REGIONS)}")
    return metric if region == "brain" else f"{metric}_{region}"


def contrast_title(name: str) -> str:
    return CONTRAST_TITLES.get(name, name)


def _contrasts_in_order(per_subject: Mapping) -> list[str]:
    order: list[str] = []
    for scores in per_subject.values():
        for contrast in scores:
            if contrast not in order:
                order.append(contrast)
    return order


def aggregate(per_subject: Mapping[str, Mapping[str, Mapping[str, float]]], *,
              ddof: int = STD_DDOF) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, standard deviation (``ddof``, default sample std) and count over subjects.

    Every key is aggregated over the subjects that have it (tumor keys: over the subjects
    with a tumor). Returns ``{contrast: {metric_key: {"mean", "std", "n"}}}``.
    """
    if not per_subject:
        raise ValueError("no subjects to aggregate")
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for contrast in _contrasts_in_order(per_subject):
        keys: list[str] = []
        for scores in per_subject.values():
            for key in scores.get(contrast, {}):
                if key not in keys:
                    keys.append(key)
        summary[contrast] = {}
        for key in keys:
            values = np.array([scores[contrast][key] for scores in per_subject.values()
                               if key in scores.get(contrast, {})], dtype=np.float64)
            std = float(np.std(values, ddof=ddof)) if len(values) > ddof else float("nan")
            summary[contrast][key] = {"mean": float(np.mean(values)), "std": std,
                                      "n": int(len(values))}
    return summary


def score_rows(per_subject: Mapping[str, Mapping[str, Mapping[str, float]]],
               metrics: Sequence[str] = METRIC_NAMES) -> list[dict]:
    """One row per subject × contrast × region: ``subject, contrast, region, mae, ssim, psnr``."""
    rows = []
    for subject, scores in per_subject.items():
        for contrast, values in scores.items():
            for region in REGIONS:
                keys = [metric_key(m, region) for m in metrics]
                if not all(k in values for k in keys):
                    continue
                row = {"subject": subject, "contrast": contrast, "region": region}
                row.update({m: values[k] for m, k in zip(metrics, keys, strict=True)})
                rows.append(row)
    return rows


def format_mean_std(mean: float, std: float, metric: str) -> str:
    """``mean ± std`` at the metric's decimals; None (NaN read back from JSON) counts as NaN.
    An undefined mean (the Spearman of a constant interval width, a region no subject has)
    is shown as "–", as the tables show every missing value."""
    mean = float("nan") if mean is None else mean
    std = float("nan") if std is None else std
    decimals = METRIC_DECIMALS.get(metric, 3)
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def markdown_table(summaries_by_model: Mapping[str, Mapping], *,
                   metrics: Sequence[str] = TABLE_METRICS,
                   regions: Sequence[str] = REGIONS,
                   contrasts: Sequence[str] | None = None,
                   bold_best: bool = True) -> str:
    """The paper-style table: rows = contrasts (× models), columns = metric per region.

    ``summaries_by_model``: ``{model_name: aggregate(...)}``. With one model there is no
    model column. Regions no model has scores for are left out (healthy-only test sets have
    no tumor columns). With several models the best mean of each contrast and column is
    bold (lower MAE, higher SSIM and PSNR).
    """
    if not summaries_by_model:
        raise ValueError("no models to tabulate")
    models = list(summaries_by_model)
    if contrasts is None:
        contrasts = _contrasts_in_order(summaries_by_model)
    columns = [(m, r) for r in regions for m in metrics
               if any(metric_key(m, r) in s.get(c, {})
                      for s in summaries_by_model.values() for c in contrasts)]
    several = len(models) > 1
    region_title = {"brain": "brain", "tumor": "tumor", "healthy": "healthy"}
    header = ["Contrast"] + (["Model"] if several else [])
    header += [f"{METRIC_TITLES.get(m, m)} {region_title.get(r, r)}" for m, r in columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] * (1 + several) + ["---:"] * len(columns)) + "|"]
    for contrast in contrasts:
        best = {}
        for m, r in columns:
            means = [s[contrast][metric_key(m, r)]["mean"] for s in summaries_by_model.values()
                     if metric_key(m, r) in s.get(contrast, {})]
            means = [v for v in means if v is not None and math.isfinite(v)]
            if means:
                best[(m, r)] = max(means) if HIGHER_IS_BETTER.get(m, True) else min(means)
        for model in models:
            entry = summaries_by_model[model].get(contrast, {})
            cells = [contrast_title(contrast)] + ([model] if several else [])
            for m, r in columns:
                key = metric_key(m, r)
                if key not in entry:
                    cells.append("–")
                    continue
                text = format_mean_std(entry[key]["mean"], entry[key]["std"], m)
                if several and bold_best and m in HIGHER_IS_BETTER and \
                        entry[key]["mean"] == best.get((m, r)):
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def subject_counts(summary: Mapping) -> dict[str, int]:
    """Subjects behind each region of a summary: ``{"brain": n, "tumor": n_tumor}``."""
    counts = {}
    for region in REGIONS:
        ns = [entry[metric_key("mae", region)]["n"] for entry in summary.values()
              if metric_key("mae", region) in entry]
        if ns:
            counts[region] = max(ns)
    return counts


def convention_text(summary: Mapping | None = None) -> str:
    """The metric convention to print under every table (with the subject counts)."""
    text = f"{CONVENTION} Aggregate: {STD_CONVENTION}"
    if summary is not None:
        counts = subject_counts(summary)
        parts = [f"{n} subject{'s' if n != 1 else ''} ({region})"
                 for region, n in counts.items()]
        text += " n = " + ", ".join(parts) + "."
    return text


def paired_wilcoxon(scores_a, scores_b, *, alternative: str = "two-sided") -> dict:
    """Wilcoxon signed-rank test of paired per-subject scores of two models.

    ``scores_a``/``scores_b``: equal-length sequences in the same subject order, or mappings
    ``{subject: score}`` (paired on their common subjects; at least one must be shared).
    Zero differences are dropped (Wilcoxon's convention, scipy's ``zero_method="wilcox"``);
    scipy's ``method="auto"`` uses the exact null distribution for n <= 50 without ties or
    zeros, an exhaustive sign-flip permutation test for n <= 13 with ties, and the normal
    approximation (continuity-corrected) otherwise; ``method`` in the result says which.
    Returns ``{"statistic", "p_value", "n", "n_nonzero", "method", "median_difference",
    "note"}``: all differences zero gives
    p = 1; fewer than ``WILCOXON_MIN_N`` non-zero pairs gives the test's p-value with a note
    that p < 0.05 is unattainable (two-sided) at that size; no pairs gives p = NaN.
    """
    if isinstance(scores_a, Mapping) and isinstance(scores_b, Mapping):
        common = [s for s in scores_a if s in scores_b]
        if not common:
            raise ValueError("the two score sets share no subject")
        a = np.array([scores_a[s] for s in common], dtype=np.float64)
        b = np.array([scores_b[s] for s in common], dtype=np.float64)
    else:
        a = np.asarray(scores_a, dtype=np.float64).ravel()
        b = np.asarray(scores_b, dtype=np.float64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"paired scores differ in length: {a.size} vs {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired scores hold NaN or inf")
    diff = a - b
    n = int(diff.size)
    nonzero = int(np.count_nonzero(diff))
    result = {"n": n, "n_nonzero": nonzero,
              "median_difference": float(np.median(diff)) if n else float("nan")}
    if n == 0:
        return result | {"statistic": float("nan"), "p_value": float("nan"), "method": "none",
                         "note": "no paired subjects"}
    if nonzero == 0:
        return result | {"statistic": 0.0, "p_value": 1.0, "method": "none",
                         "note": "all paired differences are zero"}
    test = stats.wilcoxon(a, b, zero_method="wilcox", alternative=alternative,
                          method="auto")
    # scipy's choice under method="auto" (scipy >= 1.15), reported so that a reader knows
    abs_nonzero = np.abs(diff[diff != 0])
    ties = len(np.unique(abs_nonzero)) < len(abs_nonzero)
    if n > 50:
        method = "asymptotic"
    elif not ties and nonzero == n:
        method = "exact"
    elif n <= 13:
        method = "permutation (all sign flips)"
    else:
        method = "asymptotic"
    note = ""
    if nonzero < WILCOXON_MIN_N:
        note = (f"only {nonzero} non-zero pairs: the smallest attainable two-sided p is "
                f"{2 / 2 ** nonzero:.4g}")
    return result | {"statistic": float(test.statistic), "p_value": float(test.pvalue),
                     "method": method, "note": note}


def compare_models(per_subject_a: Mapping, per_subject_b: Mapping, *,
                   metrics: Sequence[str] = METRIC_NAMES,
                   regions: Sequence[str] = REGIONS) -> dict[str, dict[str, dict]]:
    """``paired_wilcoxon`` of two models for every contrast and metric key they share.

    Returns ``{contrast: {metric_key: paired_wilcoxon(...)}}``.
    """
    results: dict[str, dict[str, dict]] = {}
    for contrast in _contrasts_in_order(per_subject_a):
        for region in regions:
            for metric in metrics:
                key = metric_key(metric, region)
                a = {s: v[contrast][key] for s, v in per_subject_a.items()
                     if key in v.get(contrast, {})}
                b = {s: v[contrast][key] for s, v in per_subject_b.items()
                     if key in v.get(contrast, {})}
                if set(a) & set(b):
                    results.setdefault(contrast, {})[key] = paired_wilcoxon(a, b)
    return results


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    With the m finite p-values sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1)
    p_(j)); rejecting where the adjusted p < alpha controls the family-wise error rate at
    alpha under any dependence between the tests. NaN stays NaN and is not counted in m.
    """
    values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(values.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(values))
    order = finite[np.argsort(values[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def adjust_for_multiple_comparisons(tests: Sequence[Mapping]) -> str:
    """Add ``p_holm`` next to every ``p_value`` of ``tests`` (``[{"results": compare_models
    output}, ...]``, changed in place). One family per metric key (metric and region): the
    tests of every pair and every contrast of a study in that column. Returns the sentence
    that says so."""
    families: dict[str, list[dict]] = {}
    for test in tests:
        for entry in test["results"].values():
            for key, result in entry.items():
                families.setdefault(key, []).append(result)
    for results in families.values():
        for result, adjusted in zip(results, holm_adjust([r["p_value"] for r in results]),
                                    strict=True):
            result["p_holm"] = adjusted
    return ("Holm-adjusted p (family-wise error over every pair and contrast of the study, "
            "one family per metric and region)")


def holm_label(result: Mapping) -> str:
    """``"Holm <p>"`` for a test result that carries a finite ``p_holm``, else ``""``."""
    adjusted = result.get("p_holm")
    return "" if adjusted is None or not math.isfinite(adjusted) else f"Holm {adjusted:.3g}"


def wilcoxon_markdown(results: Mapping[str, Mapping[str, dict]], name_a: str,
                      name_b: str) -> str:
    """``compare_models`` output as a table of p-values (rows contrasts, columns metric keys)."""
    keys: list[str] = []
    for entry in results.values():
        keys += [k for k in entry if k not in keys]
    header = ["Contrast"] + keys
    lines = [f"Wilcoxon signed-rank p-values, {name_a} vs {name_b} (paired over subjects, "
             "two-sided)", "", "| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(keys)) + "|"]
    for contrast, entry in results.items():
        cells = [contrast_title(contrast)]
        for key in keys:
            if key not in entry:
                cells.append("–")
                continue
            holm = holm_label(entry[key])
            cells.append(f"{entry[key]['p_value']:.3g}" + (f" ({holm})" if holm else "")
                         + f" (n={entry[key]['n']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def jsonable(value):
    """Nested dicts/lists with NaN and inf turned into None (strict JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
