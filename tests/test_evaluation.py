"""qsnet_jax.evaluation (aggregation, tables, Wilcoxon) and qsnet_jax.figures."""

import math
import os

import numpy as np
import pytest
from scipy import stats

from qsnet_jax import evaluation, figures


def _per_subject():
    # three subjects, two with a tumor
    return {
        "s1": {"t1w": {"mae": 1.0, "ssim": 0.90, "psnr": 28.0, "mae_tumor": 2.0,
                       "ssim_tumor": 0.80, "psnr_tumor": 24.0},
               "t2w": {"mae": 2.0, "ssim": 0.80, "psnr": 26.0, "mae_tumor": 3.0,
                       "ssim_tumor": 0.70, "psnr_tumor": 22.0}},
        "s2": {"t1w": {"mae": 2.0, "ssim": 0.92, "psnr": 30.0, "mae_tumor": 4.0,
                       "ssim_tumor": 0.84, "psnr_tumor": 26.0},
               "t2w": {"mae": 4.0, "ssim": 0.85, "psnr": 27.0, "mae_tumor": 5.0,
                       "ssim_tumor": 0.75, "psnr_tumor": 23.0}},
        "s3": {"t1w": {"mae": 4.5, "ssim": 0.94, "psnr": 29.0},
               "t2w": {"mae": 3.0, "ssim": 0.90, "psnr": 29.0}},
    }


def test_aggregate_mean_and_sample_std():
    summary = evaluation.aggregate(_per_subject())
    assert list(summary) == ["t1w", "t2w"]
    mae = summary["t1w"]["mae"]
    assert mae["n"] == 3
    assert mae["mean"] == pytest.approx((1.0 + 2.0 + 4.5) / 3)
    assert mae["std"] == pytest.approx(np.std([1.0, 2.0, 4.5], ddof=1))
    # tumor keys: over the two subjects with a tumor only
    tumor = summary["t2w"]["ssim_tumor"]
    assert tumor["n"] == 2
    assert tumor["mean"] == pytest.approx(0.725)
    assert tumor["std"] == pytest.approx(np.std([0.70, 0.75], ddof=1))
    single = evaluation.aggregate({"s": _per_subject()["s1"]})
    assert single["t1w"]["mae"]["n"] == 1 and math.isnan(single["t1w"]["mae"]["std"])
    population = evaluation.aggregate(_per_subject(), ddof=0)
    assert population["t1w"]["mae"]["std"] == pytest.approx(np.std([1.0, 2.0, 4.5]))
    with pytest.raises(ValueError):
        evaluation.aggregate({})


def test_score_rows_one_per_subject_contrast_region():
    rows = evaluation.score_rows(_per_subject())
    assert len(rows) == 2 * 2 + 2 * 2 + 2  # s1, s2: 2 contrasts x 2 regions; s3: no tumor
    row = next(r for r in rows if r["subject"] == "s2" and r["contrast"] == "t2w"
               and r["region"] == "tumor")
    assert (row["mae"], row["ssim"], row["psnr"]) == (5.0, 0.75, 23.0)


def test_markdown_table_single_and_several_models():
    summary = evaluation.aggregate(_per_subject())
    table = evaluation.markdown_table({"qsnet": summary})
    lines = table.splitlines()
    assert lines[0] == ("| Contrast | MAE (×100) brain | SSIM brain | PSNR (dB) brain | "
                        "MAE (×100) tumor | SSIM tumor | PSNR (dB) tumor |")
    assert len(lines) == 2 + 2
    t1w = summary["t1w"]["mae"]
    assert lines[2].startswith(f"| T1w | {t1w['mean']:.2f} ± {t1w['std']:.2f} |")
    assert "0.725 ± 0.035" in lines[3]
    other = evaluation.aggregate({s: {c: {k: v + (0.5 if k.startswith("mae") else -0.01)
                                          for k, v in e.items()} for c, e in d.items()}
                                  for s, d in _per_subject().items()})
    both = evaluation.markdown_table({"qsnet": summary, "resunet": other},
                                     regions=("brain",))
    lines = both.splitlines()
    assert lines[0].startswith("| Contrast | Model | MAE (×100) brain")
    assert "tumor" not in both
    assert len(lines) == 2 + 4
    # qsnet is better everywhere: its cells are bold, the other model's are not
    assert lines[2].count("**") == 6 and lines[3].count("**") == 0
    text = evaluation.convention_text(summary)
    assert "ddof = 1" in text and "3 subjects (brain), 2 subjects (tumor)" in text


def test_paired_wilcoxon_equals_scipy():
    b = np.array([0.90, 0.90, 0.88, 0.93, 0.93, 0.87, 0.90, 0.91])
    a = b + np.array([0.011, 0.032, 0.023, 0.054, -0.004, 0.065, 0.076, 0.087])
    result = evaluation.paired_wilcoxon(a, b)
    reference = stats.wilcoxon(a, b)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-12)
    assert result["statistic"] == pytest.approx(reference.statistic)
    assert result["n"] == 8 and result["method"] == "exact" and result["note"] == ""
    # the exact distribution by hand: 8 pairs, one negative difference of rank 1
    # -> W = 1, two-sided p = 2 * P(W <= 1) = 2 * 2 / 2**8
    assert result["statistic"] == 1.0
    assert result["p_value"] == pytest.approx(4 / 256)
    # mappings pair on the common subjects, whatever their order
    as_dict = evaluation.paired_wilcoxon(dict(zip("abcdefgh", a, strict=True)),
                                         dict(reversed(list(zip("abcdefgh", b, strict=True)))))
    assert as_dict["p_value"] == result["p_value"]


def test_paired_wilcoxon_small_n_ties_and_zeros():
    same = evaluation.paired_wilcoxon([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["p_value"] == 1.0 and "zero" in same["note"]
    small = evaluation.paired_wilcoxon([1.0, 2.0, 3.0, 4.0], [0.0, 1.5, 2.0, 3.5])
    assert small["p_value"] == pytest.approx(stats.wilcoxon([1, 2, 3, 4],
                                                            [0, 1.5, 2, 3.5]).pvalue)
    assert small["p_value"] == pytest.approx(2 / 16)  # all positive: the minimum attainable
    assert "smallest attainable" in small["note"]
    tied = evaluation.paired_wilcoxon([1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 6, 8])
    assert tied["n_nonzero"] == 6 and tied["method"].startswith("permutation")
    assert tied["p_value"] == pytest.approx(
        stats.wilcoxon([1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 6, 8]).pvalue)
    with pytest.raises(ValueError, match="length"):
        evaluation.paired_wilcoxon([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="share no subject"):
        evaluation.paired_wilcoxon({"a": 1.0}, {"b": 1.0})


def test_compare_models_and_table():
    a = _per_subject()
    b = {s: {c: {k: v - 0.1 for k, v in e.items()} for c, e in d.items()} for s, d in a.items()}
    results = evaluation.compare_models(a, b)
    assert results["t1w"]["mae"]["n"] == 3 and results["t1w"]["mae_tumor"]["n"] == 2
    assert results["t1w"]["mae"]["p_value"] == pytest.approx(0.25)  # 3 of 3 positive
    text = evaluation.wilcoxon_markdown(results, "a", "b")
    assert "| T1w | 0.25 (n=3)" in text


def test_jsonable_replaces_non_finite():
    assert evaluation.jsonable({"a": [float("inf"), np.float32(1.5), np.int64(2)],
                                "b": float("nan")}) == {"a": [None, 1.5, 2], "b": None}


def test_mean_std_cells_show_an_undefined_mean_as_a_dash():
    # a constant interval width has no Spearman correlation: NaN in memory, None in JSON
    assert evaluation.format_mean_std(float("nan"), float("nan"), "spearman") == "–"
    assert evaluation.format_mean_std(None, None, "spearman") == "–"
    assert evaluation.format_mean_std(0.25, None, "ssim") == "0.250"
    assert evaluation.format_mean_std(4.123, 0.456, "mae") == "4.12 ± 0.46"


def _volumes():
    rng = np.random.default_rng(0)
    shape = (40, 48, 10)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    brain = np.linalg.norm(grid / [0.8, 0.85, 1.2], axis=-1) < 1
    labels = np.zeros(shape, np.uint8)
    labels[24:30, 10:18, 5:8] = 2
    labels[26:28, 12:16, 6:8] = 1
    inputs = rng.random(shape + (3,)).astype(np.float32)
    targets = rng.random(shape + (5,)).astype(np.float32)
    prediction = np.clip(targets + 0.1 * rng.standard_normal(targets.shape), 0, 1)
    return inputs, targets, prediction.astype(np.float32), brain, labels


def test_figure_slice_and_lesion_box():
    _, _, _, brain, labels = _volumes()
    assert figures.figure_slice(brain, labels) == round(np.nonzero(labels)[2].mean())
    assert figures.figure_slice(brain, None) == round(np.nonzero(brain)[2].mean())
    shown = figures.display(labels[:, :, 6])
    r0, r1, c0, c1 = figures.lesion_box(shown, margin=2, min_size=4)
    rows, cols = np.nonzero(shown)
    assert r0 <= rows.min() and rows.max() < r1 and c0 <= cols.min() and cols.max() < c1
    assert r1 - r0 == c1 - c0 == max(np.ptp(rows), np.ptp(cols)) + 1 + 4
    assert figures.lesion_box(np.zeros((5, 5))) is None


def test_subject_and_comparison_figures_render():
    inputs, targets, prediction, brain, labels = _volumes()
    names = ["t1w", "t2w", "t1flair", "t2flair", "swi"]
    fig = figures.subject_figure(inputs, targets, prediction, brain, labels,
                                 input_names=["t1map", "t2map", "pdmap"],
                                 contrast_names=names, title="s1")
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(visible) == 4 + 3 * 5 + 3 * 5  # inputs + labels, 3 rows, 3 zoom rows
    titles = [ax.get_title() for ax in fig.axes]
    assert "T1-FLAIR" in titles and "input: T1 map" in titles
    png = figures.png_bytes(fig, dpi=30)
    assert png.startswith(b"\x89PNG")
    healthy = figures.subject_figure(inputs, targets, prediction, brain, None,
                                     input_names=["t1map", "t2map", "pdmap"],
                                     contrast_names=names)
    assert len([ax for ax in healthy.axes if ax.get_visible() and ax.images]) == 3 + 15
    comparison = figures.comparison_figure(targets, {"qsnet": prediction, "unet": targets},
                                           brain, labels, contrast_names=names)
    assert len([ax for ax in comparison.axes if ax.get_visible() and ax.images]) == 5 * 3 + 5 * 2
    # a zoomed panel is the lesion box of the slice
    r0, r1, c0, c1 = figures.lesion_box(figures.display(labels[:, :, 6]))
    assert comparison.axes[0].images[0].get_array().shape == (r1 - r0, c1 - c0)


# ------------------------------------------------------------------ experiments.evaluate


def _evaluation_subjects(shape=(20, 24, 6)):
    """Two gbm_test subjects (one with a tumor) and one healthy_test, for
    ``write_nifti_cohort``."""
    labels = np.zeros(shape)
    labels[8:13, 10:15, 2:5] = 2
    labels[10:12, 12:14, 3] = 1
    return [("g1", "gbm", "gbm_test", labels), ("g2", "gbm", "gbm_test", None),
            ("h1", "healthy", "healthy_test", None)]


def test_evaluate_run_writes_scores_tables_and_figures(tmp_path, write_nifti_cohort):
    import csv
    import json

    import jax
    import jax.numpy as jnp

    from configs import default
    from qsnet_jax import inference, models
    from workflow import evaluate, synthesize

    config = default.get_config("tiny")
    config.eval.batch_size = 4
    config.eval.num_figure_subjects = 1
    module = models.build_generator(config.model, input_channels=config.data.input_channels,
                                    target_channels=config.data.target_channels)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 24, 3)), train=False)
    cohort = tmp_path / "cohort"
    write_nifti_cohort(cohort, np.random.default_rng(0), _evaluation_subjects())
    workdir = tmp_path / "run"
    # called as workflow.train_eval calls it: the stage folder and the split, positionally
    result = evaluate.evaluate_run(config, str(workdir / "finetune"), "gbm_test",
                                   cohort_dir=str(cohort), model=(module, variables))
    out = workdir / "finetune" / "eval" / "gbm_test"
    assert result["dir"] == str(out)
    assert sorted(os.listdir(out)) == ["figures", "metrics.csv", "metrics.json", "report.md"]
    assert os.listdir(out / "figures") == ["g1.png"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["num_subjects"] == 2 and sorted(saved["per_subject"]) == ["g1", "g2"]
    # no training split to fit the volume rescaling on, and none fitted: scored as synthesized
    assert saved["rescale"]["levels"] is None
    assert "no gbm_train split" in saved["rescale"]["note"]
    # the scores of g1 recomputed independently (docs/design.md section 4): the model applied
    # to the axial slices here, background zeroed, MAE/PSNR in NumPy, SSIM maps of skimage
    from skimage.metrics import structural_similarity

    from data_pipelines import cohort as cohort_lib

    record = next(r for r in cohort_lib.read_manifest(str(cohort)) if r.subject == "g1")
    channels = tuple(config.data.input_channels) + tuple(config.data.target_channels)
    subject = cohort_lib.load_subject(str(cohort), record, channels)
    inputs = np.stack([subject.volumes[c] for c in config.data.input_channels], -1)
    slices = np.transpose(inputs, (2, 0, 1, 3))  # [X, Y, Z, C] -> [Z, X, Y, C]
    prediction = np.transpose(np.asarray(module.apply(variables, slices).prediction),
                              (1, 2, 0, 3))
    synthesized = synthesize.synthesize_subject(
        inference.make_predict_fn(module, variables), subject,
        input_channels=tuple(config.data.input_channels), context_slices=0, batch_size=5)
    brain = subject.brain_mask > 0
    tumor = brain & (subject.labels > 0)
    # the synthesized volume that was scored is this prediction (zero outside the brain)
    np.testing.assert_allclose(synthesized, np.where(brain[..., None], prediction, 0.0),
                               atol=1e-5)
    assert tumor.sum() > 20
    for c, contrast in enumerate(config.data.target_channels):
        p = np.where(brain, prediction[..., c], 0.0).astype(np.float64)
        t = np.where(brain, subject.volumes[contrast], 0.0).astype(np.float64)
        ssim = np.stack([structural_similarity(
            p[:, :, z], t[:, :, z], full=True, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0)[1] for z in range(p.shape[2])], 2)
        scores = saved["per_subject"]["g1"][contrast]
        assert set(scores) == {"mae", "ssim", "psnr", "mae_tumor", "ssim_tumor", "psnr_tumor",
                               "mae_healthy", "ssim_healthy", "psnr_healthy", "nmi"}
        for suffix, region in (("", brain), ("_tumor", tumor), ("_healthy", brain & ~tumor)):
            diff = p[region] - t[region]
            assert scores["mae" + suffix] == pytest.approx(np.abs(diff).mean() * 100, abs=1e-3)
            assert scores["psnr" + suffix] == pytest.approx(
                10 * np.log10(1.0 / np.mean(diff ** 2)), abs=1e-3)
            assert scores["ssim" + suffix] == pytest.approx(ssim[region].mean(), abs=1e-5)
    assert "mae_tumor" not in saved["per_subject"]["g2"]["t1w"]
    summary = saved["summary"]["swi"]["psnr"]
    values = [saved["per_subject"][s]["swi"]["psnr"] for s in ("g1", "g2")]
    assert summary["mean"] == pytest.approx(np.mean(values))
    assert summary["std"] == pytest.approx(np.std(values, ddof=1))
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2 * 5 + 2 * 5  # brain rows for both, tumor and healthy rows for g1
    report = (out / "report.md").read_text()
    assert "| Contrast | MAE (×100) brain |" in report and "| T2-FLAIR |" in report
    assert "ddof = 1" in report and "2 subjects (brain), 1 subject (tumor)" in report
    assert [p for p in os.listdir(out.parent) if p.startswith(".")] == []


def test_holm_adjustment_equals_closed_testing_with_bonferroni():
    """Holm's step-down p-values, against the closed-testing principle it comes from: the
    adjusted p of hypothesis i is the largest Bonferroni p, |S| min_{j in S} p_j (capped at
    1), over every subset S that contains i (brute force over all subsets)."""
    import itertools

    # by hand: sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1, but
    # not below the step before: 0.06)
    assert evaluation.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
        [0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 8):
        p = rng.uniform(0, 0.2, m)
        p[rng.random(m) < 0.3] = p[0]  # ties
        closed = [max(min(1.0, len(s) * min(p[list(s)]))
                      for r in range(1, m + 1) for s in itertools.combinations(range(m), r)
                      if i in s) for i in range(m)]
        assert evaluation.holm_adjust(p) == pytest.approx(closed, abs=1e-12)
    adjusted = evaluation.holm_adjust([0.02, float("nan"), 0.01])  # NaN: not in the family
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02)
    assert adjusted[2] == pytest.approx(0.02)


def test_study_tests_are_adjusted_per_metric_column():
    def result(p):
        return {"p_value": p}

    tests = [{"results": {"t1w": {"mae": result(0.01), "ssim": result(0.5)},
                          "t2w": {"mae": result(0.02)}}},
             {"results": {"t1w": {"mae": result(0.04), "ssim": result(0.01)}}}]
    text = evaluation.adjust_for_multiple_comparisons(tests)
    assert "Holm" in text
    mae = [tests[0]["results"]["t1w"]["mae"], tests[0]["results"]["t2w"]["mae"],
           tests[1]["results"]["t1w"]["mae"]]
    assert [r["p_holm"] for r in mae] == pytest.approx([0.03, 0.04, 0.04])  # m = 3
    ssim = [tests[0]["results"]["t1w"]["ssim"], tests[1]["results"]["t1w"]["ssim"]]
    assert [r["p_holm"] for r in ssim] == pytest.approx([0.5, 0.02])  # m = 2
