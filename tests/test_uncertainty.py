"""Conformal calibration, interval scores and the residual-scale network (qsnet_jax.uncertainty).

References are independent: order statistics by sorting, the Gaussian quantile from scipy,
coverage/width/rank correlation recomputed with NumPy and scipy.stats.rankdata.
"""

import math
import os
import shutil

import numpy as np
import pytest
from scipy import optimize, stats

from qsnet_jax import uncertainty


def test_conformal_quantile_is_the_corrected_order_statistic():
    rng = np.random.default_rng(0)
    for n, level in [(10, 0.9), (19, 0.9), (100, 0.8), (1000, 0.95), (37, 0.5)]:
        scores = rng.exponential(size=n)
        rank = math.ceil((n + 1) * level)  # 1-based
        assert uncertainty.conformal_quantile(scores, level) == np.sort(scores)[rank - 1]
    # n = 10 at 90%: the (n + 1) correction asks for the largest score, not the 9th
    scores = np.arange(1.0, 11.0)
    assert uncertainty.conformal_quantile(scores, 0.9) == 10.0
    # too few scores for the level: an infinite interval, never a too-short one
    assert uncertainty.conformal_quantile(np.arange(5.0), 0.9) == math.inf
    with pytest.raises(ValueError, match="level"):
        uncertainty.conformal_quantile(scores, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        uncertainty.conformal_quantile([1.0, np.nan], 0.5)


def _noisy_subjects(rng, num_subjects, shape, sigma_map):
    """Predictions, targets = prediction + N(0, sigma^2) with a known sigma per voxel."""
    preds, targets = [], []
    for _ in range(num_subjects):
        pred = rng.uniform(0.2, 0.8, size=shape + (2,)).astype(np.float32)
        targets.append(pred + rng.normal(size=pred.shape) * sigma_map)
        preds.append(pred)
    return preds, targets


def test_calibrated_intervals_reach_nominal_coverage_and_heteroscedastic_is_narrower():
    rng = np.random.default_rng(1)
    shape = (24, 20, 10)
    # known noise law: sigma 10 times larger in a quarter of the volume (like a lesion or
    # an edge), and different per contrast
    ramp = np.where(np.arange(shape[0]) < shape[0] // 4, 0.1, 0.01)[:, None, None, None]
    sigma = np.broadcast_to(ramp * np.array([1.0, 0.5]), shape + (2,)).astype(np.float32)
    mask = np.ones(shape, bool)
    mask[:2] = False  # voxels outside the mask take no part
    level = 0.9
    cal_preds, cal_targets = _noisy_subjects(rng, 6, shape, sigma)
    test_preds, test_targets = _noisy_subjects(rng, 6, shape, sigma)
    n_cal = 6 * int(mask.sum())
    n_test = 6 * int(mask.sum())
    results = {}
    for name, scale in (("oracle", sigma), ("constant", np.ones_like(sigma))):
        cal = uncertainty.calibrate(cal_preds, cal_targets, [scale] * 6, [mask] * 6,
                                    level=level, channel_names=["a", "b"])
        assert cal["num_voxels"] == n_cal and cal["num_subjects"] == 6
        half = uncertainty.half_width(scale, cal["quantiles"], ["a", "b"])
        covered = np.concatenate([(np.abs(p - t) <= half)[mask]
                                  for p, t in zip(test_preds, test_targets, strict=True)])
        widths = np.concatenate([2 * half[mask]] * 6)
        results[name] = (covered.mean(axis=0), widths.mean(axis=0), cal["quantiles"])
    # finite-sample bound: level <= E[coverage] <= level + 1/(n+1); plus the spread of the
    # calibration quantile (Beta) and of the test mean (binomial), 4 standard deviations
    spread = 4 * math.sqrt(level * (1 - level) * (1 / n_cal + 1 / n_test))
    for name, (coverage, _, _) in results.items():
        assert np.all(coverage >= level - spread), (name, coverage)
        assert np.all(coverage <= level + 1 / (n_cal + 1) + spread), (name, coverage)
    # with the true sigma, q is the Gaussian 95% point and the width 2 * 1.645 * mean(sigma)
    z = stats.norm.ppf(0.5 + level / 2)
    oracle_q = results["oracle"][2]
    assert oracle_q["a"] == pytest.approx(z, rel=0.03) and oracle_q["b"] == pytest.approx(
        z, rel=0.03)
    expected_width = 2 * z * sigma[mask].mean(axis=0)
    np.testing.assert_allclose(results["oracle"][1], expected_width, rtol=0.03)
    # at equal coverage, the heteroscedastic scale gives clearly narrower intervals
    # (closed form: 2 * 1.645 * E[sigma] = 0.087 vs 2 * 0.060 for the constant, contrast a)
    assert np.all(results["oracle"][1] < 0.8 * results["constant"][1])


def test_leave_one_subject_out_coverage_matches_the_gaussian_closed_form():
    """Subjects whose errors are |N(0, s_i^2)| with a subject-level scale s_i (the
    subject-to-subject shift of a real cohort). Held-out subject i is calibrated by the
    others: q_i solves mean_{j != i} P(s_j |Z| <= q) = level, so its coverage is
    2 Phi(q_i / s_i) - 1, from scipy's normal law, not from the code under test."""
    rng = np.random.default_rng(7)
    subject_scales = (1.0, 1.5, 2.0, 3.0)
    n = 100_000
    shape = (n, 1, 1)
    preds, targets, scales, masks = [], [], [], []
    for s in subject_scales:
        pred = np.zeros(shape + (1,), np.float32)
        preds.append(pred)
        targets.append(pred + s * rng.normal(size=pred.shape))
        scales.append(np.ones_like(pred))
        masks.append(np.ones(shape, bool))
    level = 0.9
    result = uncertainty.calibrate(preds, targets, scales, masks, level=level,
                                   channel_names=["t2flair"],
                                   subject_names=["a", "b", "c", "d"])
    held_out = result["held_out_coverage"]["t2flair"]
    expected = {}
    for i, name in enumerate("abcd"):
        others = [s for j, s in enumerate(subject_scales) if j != i]
        q = optimize.brentq(lambda q, o=others: np.mean(
            [2 * stats.norm.cdf(q / s) - 1 for s in o]) - level, 1e-6, 100.0)
        expected[name] = 2 * stats.norm.cdf(q / subject_scales[i]) - 1
    for name in "abcd":
        assert held_out["per_subject"][name] == pytest.approx(expected[name], abs=0.005)
    # the scatter is real: the calmest subject over-covers, the noisiest under-covers
    assert expected["a"] > 0.97 and expected["d"] < 0.8
    assert held_out["min"] == min(held_out["per_subject"].values())
    assert held_out["max"] == max(held_out["per_subject"].values())
    assert held_out["mean"] == pytest.approx(np.mean(list(expected.values())), abs=0.005)
    # one subject cannot be held out against anything
    single = uncertainty.calibrate(preds[:1], targets[:1], scales[:1], masks[:1], level=level)
    assert "held_out_coverage" not in single


def test_gain_term_widens_sigma_by_the_hypotenuse():
    rng = np.random.default_rng(11)
    sigma = rng.uniform(0.01, 0.1, (4, 5, 3, 2)).astype(np.float32)
    prediction = rng.uniform(0.0, 1.0, sigma.shape).astype(np.float32)
    widened = uncertainty.with_gain(sigma, prediction, {"t1w": 0.0, "t2flair": 0.3},
                                    ["t1w", "t2flair"])
    np.testing.assert_allclose(widened[..., 0], sigma[..., 0], rtol=1e-6)
    np.testing.assert_allclose(widened[..., 1], np.sqrt(sigma[..., 1].astype(np.float64) ** 2
                                                        + (0.3 * prediction[..., 1]) ** 2),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        uncertainty.with_gain(sigma, prediction, {"t1w": -0.1, "t2flair": 0.0},
                              ["t1w", "t2flair"])


SUBJECT_GAINS = (0.9, 0.96, 1.0, 1.04, 1.1)  # the whole-volume gains of the gain-law subjects


def _gain_law_subjects(subject_shift, *, values=(0.2, 0.5, 0.8), noise=0.03, n=60_000,
                       seed=3):
    """Subjects whose target is prediction + subject_shift(g, prediction) + N(0, noise^2),
    sigma = noise (a scale that knows the voxel noise, not the subject's shift)."""
    rng = np.random.default_rng(seed)
    subjects = []
    for gain in SUBJECT_GAINS:
        pred = np.repeat(np.asarray(values, np.float32), n // len(values)).reshape(-1, 1, 1, 1)
        target = pred + subject_shift(gain, pred) + noise * rng.normal(size=pred.shape)
        subjects.append((pred, target, np.full_like(pred, noise), np.ones(pred.shape[:3], bool)))
    return subjects


def _gain_law_held_out_sd(subject_shift, beta, *, values=(0.2, 0.5, 0.8), noise=0.03,
                          level=0.9):
    """The sd of leave-one-subject-out coverage from the normal law (scipy): subject i's
    coverage at q is the mean over its values of P(|m + noise Z| <= q hypot(noise, beta v)),
    m its shift, and q solves the other subjects' mean coverage = level."""
    values = np.asarray(values)

    def coverage(q, gain):
        shift, half = subject_shift(gain, values), q * np.hypot(noise, beta * values)
        return np.mean(stats.norm.cdf((half - shift) / noise)
                       - stats.norm.cdf((-half - shift) / noise))

    held_out = []
    for i, gain in enumerate(SUBJECT_GAINS):
        others = [g for j, g in enumerate(SUBJECT_GAINS) if j != i]
        q = optimize.brentq(lambda q, o=others: np.mean([coverage(q, g) for g in o]) - level,
                            1e-6, 1e3)
        held_out.append(coverage(q, gain))
    return np.std(held_out, ddof=1)


@pytest.mark.parametrize("law", ["gain", "offset"])
def test_choose_gains_matches_the_closed_form_scatter_of_a_known_subject_law(law):
    """Subject-level shifts that a voxel scale cannot see: a whole-volume gain (target =
    g * prediction, the law of per-volume normalization) or an additive offset. For each
    beta, the scatter of leave-one-subject-out coverage that choose_gains measures equals the
    normal-law value (scipy), and it keeps the beta of least scatter."""
    shift = ((lambda g, v: (g - 1.0) * v) if law == "gain"
             else (lambda g, v: (g - 1.0) * 0.5 * np.ones_like(v)))
    grid = (0.0, 0.1, 1.0)
    predictions, targets, scales, masks = zip(*_gain_law_subjects(shift), strict=True)
    chosen = uncertainty.choose_gains(predictions, targets, scales, masks,
                                      channel_names=["t2flair"], grid=grid)
    expected = [_gain_law_held_out_sd(shift, beta) for beta in grid]
    np.testing.assert_allclose(chosen["held_out_sd"]["t2flair"], expected, atol=0.002)
    assert chosen["gains"]["t2flair"] == grid[int(np.argmin(expected))] == 1.0
    # the gain law: the gain term takes the scatter from 0.15 to 0.04
    if law == "gain":
        assert expected[0] > 0.14 and expected[-1] < 0.045
    # a prediction of 0 leaves sigma as it is for every beta: a tie goes to the smallest
    zeros = [np.zeros_like(p) for p in predictions]
    tied = uncertainty.choose_gains(zeros, targets, scales, masks, channel_names=["t2flair"],
                                    grid=(0.5, 0.0, 1.0))
    assert tied["gains"]["t2flair"] == 0.0 and tied["grid"] == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match=">= 3 calibration subjects"):
        uncertainty.choose_gains(predictions[:2], targets[:2], scales[:2], masks[:2])


def test_interval_scores_equal_a_numpy_recomputation():
    rng = np.random.default_rng(2)
    shape = (12, 10, 6)
    pred = rng.uniform(size=shape + (2,))
    target = pred + rng.normal(scale=0.05, size=pred.shape)
    half = rng.uniform(0.01, 0.1, size=pred.shape)
    brain = np.zeros(shape, bool)
    brain[1:11, 1:9] = True
    labels = np.zeros(shape, np.int32)
    labels[3:6, 3:6, 2:4] = 2
    labels[0, 0, 0] = 1  # outside the brain: not tumor
    scores = uncertainty.interval_scores(pred, target, half, brain, labels,
                                         channel_names=["x", "y"])
    tumor = (labels > 0) & brain
    regions = {"": brain, "_tumor": tumor, "_healthy": brain & ~tumor}
    for c, name in enumerate(["x", "y"]):
        err = np.abs(pred[..., c] - target[..., c])
        for suffix, region in regions.items():
            inside = err[region] <= half[..., c][region]
            assert scores[name]["coverage" + suffix] == pytest.approx(inside.mean())
            assert scores[name]["width" + suffix] == pytest.approx(
                200 * half[..., c][region].mean())
            ranks_w = stats.rankdata(half[..., c][region])
            ranks_e = stats.rankdata(err[region])
            assert scores[name]["spearman" + suffix] == pytest.approx(
                np.corrcoef(ranks_w, ranks_e)[0, 1])
    # no tumor: brain keys only; a constant width has no rank correlation
    plain = uncertainty.interval_scores(pred, target, np.full_like(half, 0.05), brain)
    assert set(plain["channel0"]) == {"coverage", "width", "spearman", "voxels"}
    assert scores["x"]["voxels_tumor"] == tumor.sum()
    # pooled over subjects: voxel-weighted, not the mean of subject coverages
    small = uncertainty.interval_scores(pred[:, :, :1], target[:, :, :1], half[:, :, :1],
                                        brain[:, :, :1], channel_names=["x", "y"])
    pooled = uncertainty.pooled_coverage({"a": scores, "b": small})
    inside = np.concatenate([
        (np.abs(pred[..., 0] - target[..., 0]) <= half[..., 0])[brain],
        (np.abs(pred[..., :1, 0] - target[..., :1, 0]) <= half[..., :1, 0])[brain[:, :, :1]]])
    assert pooled["x"]["coverage"] == pytest.approx(inside.mean())
    assert "coverage_tumor" in pooled["x"]
    assert math.isnan(plain["channel0"]["spearman"])


def test_width_tracks_error_when_the_scale_is_right():
    rng = np.random.default_rng(3)
    shape = (30, 30, 4)
    sigma = rng.uniform(0.005, 0.1, size=shape + (1,))
    pred = np.full(shape + (1,), 0.5)
    target = pred + rng.normal(size=pred.shape) * sigma
    scores = uncertainty.interval_scores(pred, target, sigma, np.ones(shape))
    assert scores["channel0"]["spearman"] > 0.4
    shuffled = rng.permutation(sigma.ravel()).reshape(sigma.shape)
    noise = uncertainty.interval_scores(pred, target, shuffled, np.ones(shape))
    assert abs(noise["channel0"]["spearman"]) < 0.05


def _feature_driven_residuals(rng, num_slices, size=16):
    """Slices whose error is Gaussian with sigma 0.1 inside a random 8 x 8 square that
    feature channel 0 marks, 0.005 elsewhere."""
    feature = np.zeros((num_slices, size, size, 1), np.float32)
    for i in range(num_slices):
        r, c = rng.integers(0, size - 8, 2)
        feature[i, r:r + 8, c:c + 8] = 1.0
    true_scale = 0.005 + 0.095 * feature
    abs_error = np.abs(rng.normal(size=true_scale.shape)) * true_scale
    features = np.concatenate([feature, np.ones_like(feature)], axis=-1)
    return features, abs_error.astype(np.float32), np.ones_like(feature), true_scale


def test_scale_net_learns_the_noise_law_and_beats_a_constant_after_calibration():
    rng = np.random.default_rng(4)
    features, abs_error, mask, _ = _feature_driven_residuals(rng, 64)
    fit = uncertainty.fit_scale_net(features, abs_error, mask, steps=150, batch_size=16,
                                    learning_rate=5e-3, width=8, seed=0)
    assert np.mean(fit.losses[-20:]) < np.mean(fit.losses[:5])
    scale_fn = uncertainty.make_scale_fn(fit.module, fit.variables)
    cal_x, cal_e, _, cal_true_scale = _feature_driven_residuals(rng, 32)
    test_x, test_e, _, true_scale = _feature_driven_residuals(rng, 32)
    sigma_cal = np.asarray(scale_fn(cal_x))
    sigma_test = np.asarray(scale_fn(test_x))
    # sigma estimates E|error| = sqrt(2 / pi) * true sigma (the Laplace-likelihood minimizer)
    inside = np.median(sigma_test[true_scale > 0.05])
    outside = np.median(sigma_test[true_scale < 0.05])
    assert inside == pytest.approx(0.1 * math.sqrt(2 / math.pi), rel=0.4)
    assert inside > 5 * outside
    as_volume = lambda a: np.moveaxis(a, 0, 2)  # noqa: E731  [N, H, W, C] -> [H, W, N, C]
    zeros = np.zeros_like(as_volume(cal_e))
    mask = np.ones(zeros.shape[:3])
    widths, coverages = {}, {}
    for name, cal_scale, test_scale in (("net", sigma_cal, sigma_test),
                                        ("constant", np.ones_like(sigma_cal),
                                         np.ones_like(sigma_test)),
                                        ("oracle", cal_true_scale, true_scale)):
        cal = uncertainty.calibrate([zeros], [as_volume(cal_e)], [as_volume(cal_scale)],
                                    [mask], level=0.9)
        half = uncertainty.half_width(as_volume(test_scale), cal["quantiles"], ["channel0"])
        scores = uncertainty.interval_scores(np.zeros_like(half), as_volume(test_e), half, mask)
        widths[name] = scores["channel0"]["width"]
        coverages[name] = scores["channel0"]["coverage"]
    for coverage in coverages.values():
        assert 0.87 <= coverage <= 0.93
    # the learned scale is nearly as narrow as the true one, and far narrower than a constant
    # (closed form at equal coverage: 2 * 1.645 * E[sigma] = 0.094 vs about 0.168)
    assert widths["net"] < 1.15 * widths["oracle"]
    assert widths["net"] < 0.7 * widths["constant"]

    # the serialized net predicts the same sigma
    state = uncertainty.scale_net_state(fit)
    module, variables = uncertainty.scale_net_from_state(state["config"], state["params"])
    np.testing.assert_allclose(np.asarray(module.apply(variables, test_x)), sigma_test,
                               rtol=1e-6)


def test_untrained_scale_net_is_the_constant_mean_error_and_keeps_the_shape():
    rng = np.random.default_rng(5)
    features = rng.uniform(size=(3, 13, 11, 4)).astype(np.float32)  # odd sizes: padded inside
    abs_error = rng.uniform(0, 0.2, size=(3, 13, 11, 2)).astype(np.float32)
    mask = np.zeros((3, 13, 11, 1), np.float32)
    mask[:, 2:10, 2:9] = 1
    fit = uncertainty.fit_scale_net(features, abs_error, mask, steps=0, width=4)
    sigma = np.asarray(fit.module.apply(fit.variables, features))
    assert sigma.shape == (3, 13, 11, 2)
    brain = mask[..., 0] > 0
    expected = [abs_error[..., c][brain].mean() + uncertainty.SCALE_FLOOR for c in range(2)]
    np.testing.assert_allclose(sigma[0, 5, 5], expected, rtol=1e-5)


def test_residual_slices_predict_scale_and_flip_spread():
    rng = np.random.default_rng(6)
    shape = (10, 8, 5)
    inputs = rng.uniform(size=shape + (3,)).astype(np.float32)
    pred = rng.uniform(size=shape + (2,)).astype(np.float32)
    target = rng.uniform(size=shape + (2,)).astype(np.float32)
    brain = np.zeros(shape, bool)
    brain[2:8, 2:6, 1:4] = True  # slices 0 and 4 hold no brain
    features, errors, masks = uncertainty.residual_slices(inputs, pred, target, brain)
    assert features.shape == (3, 10, 8, 6) and errors.shape == (3, 10, 8, 2)
    np.testing.assert_array_equal(errors[1], np.abs(pred[:, :, 2] - target[:, :, 2]))
    np.testing.assert_array_equal(features[0, ..., 3:5], pred[:, :, 1])
    np.testing.assert_array_equal(masks[2, ..., 0], brain[:, :, 3])
    # predict_scale runs the net slice by slice: equal to one call on all slices
    fit = uncertainty.fit_scale_net(features, errors, masks, steps=2, width=4)
    scale_fn = uncertainty.make_scale_fn(fit.module, fit.variables)
    sigma = uncertainty.predict_scale(scale_fn, inputs, pred, brain, batch_size=2)
    all_slices = np.moveaxis(uncertainty.scale_features(inputs, pred, brain), 2, 0)
    np.testing.assert_allclose(sigma, np.moveaxis(np.asarray(scale_fn(all_slices)), 0, 2),
                               rtol=1e-5, atol=1e-7)
    spread = uncertainty.flip_spread(pred, pred[::-1])
    np.testing.assert_allclose(spread, np.abs(pred - pred[::-1]) + uncertainty.SCALE_FLOOR)
    with pytest.raises(ValueError, match="positive"):
        uncertainty.nonconformity_scores(pred, target, np.zeros_like(pred), brain)


# ------------------------------------------------------------------ workflow wiring


def _split_subjects(shape=(20, 24, 6), calibration_subjects=2):
    """GBM subjects in gbm_train, gbm_calib and gbm_test (two each, or
    ``calibration_subjects`` in gbm_calib; all with a tumor), for ``write_nifti_cohort``."""
    splits = ["gbm_train"] * 2 + ["gbm_calib"] * calibration_subjects + ["gbm_test"] * 2
    subjects = []
    for i, split in enumerate(splits):
        labels = np.zeros(shape)
        labels[7 + i % 3:12, 9:14, 2:5] = 2
        labels[9:11, 11:13, 3] = 1
        subjects.append((f"s{i}", "gbm", split, labels))
    return subjects


def test_evaluate_and_synthesize_carry_calibrated_intervals(tmp_path, write_nifti_cohort):
    import json

    import jax
    import jax.numpy as jnp
    import nibabel as nib

    from configs import default
    from data_pipelines import cohort as cohort_lib
    from qsnet_jax import inference, models
    from workflow import evaluate, rescale, synthesize
    from workflow import uncertainty as workflow_uncertainty

    config = default.get_config("tiny")
    config.eval.batch_size = 4
    config.eval.num_figure_subjects = 1
    config.uncertainty.calibration_split = "gbm_calib"
    targets = tuple(config.data.target_channels)
    module = models.build_generator(config.model, input_channels=config.data.input_channels,
                                    target_channels=targets)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 24, 3)), train=False)
    root = tmp_path / "cohort"
    write_nifti_cohort(root, np.random.default_rng(0), _split_subjects())
    stage_dir = tmp_path / "run" / "finetune"
    evaluate.evaluate_run(config, str(stage_dir), "gbm_test", cohort_dir=str(root),
                          model=(module, variables))
    saved = json.loads((stage_dir / "eval" / "gbm_test" / "metrics.json").read_text())
    calibration = json.loads((stage_dir / "uncertainty" / "calibration.json").read_text())
    assert calibration["calibration_subjects"] == ["s2", "s3"]  # never the test subjects
    assert calibration["fit_splits"] == ["gbm_train"]
    assert calibration["cohort"] == str(root)
    # the rescaling levels: fitted on the training subjects only, the intervals calibrated on
    # the synthesis rescaled by them, both recorded
    fitted = json.loads((stage_dir / "rescale.json").read_text())
    assert fitted["fit_subjects"] == ["s0", "s1"] and fitted["fit_splits"] == ["gbm_train"]
    levels, _ = rescale.load_rescale(str(stage_dir), targets)
    assert calibration["rescale_levels"] == list(levels)
    assert saved["rescale"]["levels"] == dict(zip(targets, levels, strict=True))
    unc_record = saved["uncertainty"]
    assert unc_record["level"] == 0.9 and unc_record["timing"]["synthesis_s"] > 0
    for key in ("coverage", "coverage_tumor", "coverage_healthy", "width_tumor", "spearman"):
        assert key in unc_record["per_subject"]["s4"]["t2w"]
    seg = saved["segmentation"]
    assert set(seg["per_subject"]["s5"]) == {"ground truth", "synthesized"}
    assert set(seg["per_subject"]["s5"]["synthesized"]) == {
        "dice_necrosis", "dice_edema", "dice_enhancing", "dice_whole_tumor"}
    report = (stage_dir / "eval" / "gbm_test" / "report.md").read_text()
    assert "## Uncertainty" in report and "coverage tumor" in report
    assert "99.5th percentile set to" in report and "(fitted on gbm_train)" in report
    # the two calibration subjects, each calibrated by the other, travel to the report
    held_out = unc_record["held_out_coverage"]["t2w"]
    assert set(held_out["per_subject"]) == {"s2", "s3"}
    assert held_out == calibration["held_out_coverage"]["t2w"]
    assert "leave one subject out" in report and f"{held_out['min']:.2f}" in report
    assert "## Downstream tumor segmentation (BraSyn)" in report

    # synthesize writes the half-widths; the coverage evaluate reported is the fraction of
    # brain voxels whose |synthesized - target| lies within them (read back with nibabel)
    model = workflow_uncertainty.load_uncertainty(str(stage_dir))
    out = tmp_path / "synth"
    paths = synthesize.synthesize_manifest(config, module, variables,
                                           str(root / "manifest.csv"), str(out),
                                           subjects=["s4"], uncertainty_model=model,
                                           levels=levels)
    assert sorted(paths["s4"]) == sorted(list(targets) + [f"{t}_uncertainty" for t in targets])
    record = next(r for r in cohort_lib.read_manifest(str(root)) if r.subject == "s4")
    truth = cohort_lib.load_subject(str(root), record, targets)
    brain = truth.brain_mask > 0
    for name in ("t1w", "swi"):
        synthesized = np.asarray(nib.load(paths["s4"][name]).dataobj)
        half = np.asarray(nib.load(paths["s4"][f"{name}_uncertainty"]).dataobj)
        # the file is rescaled: its brain 99.5th percentile is the fitted level
        assert np.percentile(synthesized[brain], 99.5) == pytest.approx(
            levels[targets.index(name)], rel=1e-4)
        inside = np.abs(synthesized - truth.volumes[name])[brain] <= half[brain]
        assert unc_record["per_subject"]["s4"][name]["coverage"] == pytest.approx(
            inside.mean(), abs=1e-6)
        assert np.all(half[~brain] == 0)
    assert os.path.isfile(stage_dir.parent / "segmenter" / "segmenter.json")

    # evaluate --cohort OTHER: the intervals are refitted on the other cohort's splits, then
    # reused there (predict_fn=None would fail if they were fitted again)
    other = tmp_path / "other_cohort"
    shutil.copytree(root, other)
    refitted, _ = workflow_uncertainty.uncertainty_for(
        config, str(stage_dir), inference.make_predict_fn(module, variables), str(other))
    assert refitted.meta["cohort"] == str(other)
    again, _ = workflow_uncertainty.uncertainty_for(config, str(stage_dir), None, str(other))
    assert again.meta["cohort"] == str(other)
    # the rescaling levels belong to the model: reused on the other cohort (predict_fn=None
    # would fail if they were fitted again); other levels make the intervals be refitted
    assert rescale.rescale_for(config, str(stage_dir), None, str(other)) == (levels, "")
    shifted = tuple(v + 0.01 for v in levels)
    refitted, _ = workflow_uncertainty.uncertainty_for(
        config, str(stage_dir), inference.make_predict_fn(module, variables), str(other),
        levels=shifted)
    assert refitted.meta["rescale_levels"] == list(shifted) and refitted.levels == shifted


def test_residual_gain_stores_its_gain_terms_and_widens_the_nets_sigma(tmp_path,
                                                                       write_nifti_cohort):
    """Method residual_gain: the residual net's sigma, widened by the gain term each contrast
    chose on the calibration subjects; the stored model gives half-widths
    q * sqrt(sigma^2 + (beta y_hat)^2) (recomputed here with NumPy from the net's sigma)."""
    import json

    import jax
    import jax.numpy as jnp

    from configs import default
    from qsnet_jax import inference, models
    from workflow import uncertainty as wu
    from workflow.errors import UserError

    config = default.get_config("tiny")
    config.eval.batch_size = 4
    config.uncertainty.method = "residual_gain"
    config.uncertainty.steps = 5
    targets = tuple(config.data.target_channels)
    module = models.build_generator(config.model, input_channels=config.data.input_channels,
                                    target_channels=targets)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 24, 3)), train=False)
    predict_fn = inference.make_predict_fn(module, variables)
    root = tmp_path / "cohort"
    write_nifti_cohort(root, np.random.default_rng(0), _split_subjects(calibration_subjects=3))
    stage_dir = tmp_path / "run" / "finetune"
    fitted = wu.fit_uncertainty(config, str(stage_dir), predict_fn, str(root))
    stored = json.loads((stage_dir / "uncertainty" / "calibration.json").read_text())
    assert set(stored["gains"]) == set(targets)
    assert all(b in uncertainty.GAIN_GRID for b in stored["gains"].values())
    for name in targets:  # the gain of least leave-one-out scatter
        spreads = stored["gain_choice"]["held_out_sd"][name]
        assert stored["gains"][name] == uncertainty.GAIN_GRID[int(np.argmin(spreads))]
    model = wu.load_uncertainty(str(stage_dir))
    assert model.gains == stored["gains"] == fitted.gains
    _, inputs, _, prediction, subject = next(wu.split_subjects(
        config, str(root), "gbm_test", predict_fn))
    sigma = uncertainty.predict_scale(model.scale_fn, inputs, prediction, subject.brain_mask,
                                      batch_size=4).astype(np.float64)
    half = model.half_width(predict_fn, inputs, prediction, subject.brain_mask, batch_size=4)
    brain = subject.brain_mask > 0
    for c, name in enumerate(targets):
        expected = stored["quantiles"][name] * np.sqrt(
            sigma[..., c] ** 2 + (stored["gains"][name] * prediction[..., c]) ** 2)
        np.testing.assert_allclose(half[..., c][brain], expected[brain], rtol=1e-5)
    # two calibration subjects cannot choose a gain term: one line that says so
    few = tmp_path / "few"
    write_nifti_cohort(few, np.random.default_rng(1), _split_subjects())
    with pytest.raises(UserError, match=r"residual_gain chooses its gain term on >= 3"):
        wu.fit_uncertainty(config, str(tmp_path / "run2" / "finetune"), predict_fn, str(few))
    assert not (tmp_path / "run2" / "finetune" / "uncertainty").exists()


def test_a_shared_segmenter_is_reused_only_with_the_same_settings(tmp_path, write_nifti_cohort):
    """Study variants share one segmenter folder (config.segmentation.dir): a second run with
    the same cohort, targets and settings loads it; another step count retrains it."""
    import io as text_io

    from configs import default
    from workflow import uncertainty as workflow_uncertainty

    root = tmp_path / "cohort"
    write_nifti_cohort(root, np.random.default_rng(1), _split_subjects())
    config = default.get_config("tiny")
    config.segmentation.train_splits = ("gbm_train",)
    config.segmentation.dir = str(tmp_path / "shared")
    folder = workflow_uncertainty.segmenter_dir(config, str(tmp_path / "run_a" / "finetune"))
    assert folder == str(tmp_path / "shared")
    _, first = workflow_uncertainty.fit_or_load_segmenter(config, folder, str(root))
    log = text_io.StringIO()
    _, again = workflow_uncertainty.fit_or_load_segmenter(config, folder, str(root), stream=log)
    assert "reusing" in log.getvalue() and again["train_seconds"] == first["train_seconds"]
    config.segmentation.steps += 1
    log = text_io.StringIO()
    _, retrained = workflow_uncertainty.fit_or_load_segmenter(config, folder, str(root),
                                                              stream=log)
    assert "reusing" not in log.getvalue() and retrained["steps"] == first["steps"] + 1
    config.segmentation.dir = ""  # the default: one per run, beside its stages
    assert workflow_uncertainty.segmenter_dir(config, str(tmp_path / "run_b" / "finetune")) \
        == str(tmp_path / "run_b" / "segmenter")


def test_subject_figure_gets_an_uncertainty_row_on_the_error_scale():
    from qsnet_jax import figures

    rng = np.random.default_rng(7)
    shape = (24, 28, 8)
    brain = np.zeros(shape, bool)
    brain[3:21, 3:25] = True
    labels = np.zeros(shape, np.int32)
    labels[8:14, 10:16, 3:6] = 2
    targets = rng.uniform(size=shape + (2,)).astype(np.float32)
    prediction = np.clip(targets + rng.normal(scale=0.1, size=targets.shape), 0, 1)
    half = np.full(targets.shape, 0.05, np.float32)
    args = (rng.uniform(size=shape + (3,)), targets, prediction, brain, labels)
    kwargs = dict(input_names=["t1map", "t2map", "pdmap"], contrast_names=["t1w", "t2w"])
    plain = figures.subject_figure(*args, **kwargs)
    with_row = figures.subject_figure(*args, uncertainty=half, **kwargs)

    def image_axes(fig):
        return [ax for ax in fig.axes if ax.get_visible() and ax.images]

    # two more panels per contrast: the half-width, full size and lesion zoom
    assert len(image_axes(with_row)) == len(image_axes(plain)) + 2 * 2
    z = figures.figure_slice(brain, labels)
    def shows_only(ax, values):
        shown = np.unique(np.ma.getdata(ax.images[0].get_array()))
        return shown.shape == (len(values),) and np.allclose(shown, values)

    half_panels = [ax for ax in image_axes(with_row) if shows_only(ax, [0.0, 0.05])]
    assert half_panels and all(ax.images[0].get_clim() == (0.0, figures.ERROR_VMAX)
                               for ax in half_panels)
    # the voxels the interval misses are marked: as many as |error| > half-width in the slice
    shown_error = figures.display(np.abs(prediction - targets)[:, :, z, 0] * brain[:, :, z])
    missed = int(np.sum(shown_error > 0.05))
    marks = [len(c.get_offsets()) for ax in half_panels for c in ax.collections]
    assert missed in marks


def test_checkpoint_id_survives_a_copied_work_dir_and_changes_with_a_retraining(tmp_path):
    """The fitted uncertainty is tied to its generator: copying the work dir elsewhere (a
    study reusing finished variants) keeps the id, a new checkpoint changes it."""
    import json as json_lib
    import shutil

    from workflow import uncertainty as workflow_uncertainty

    def write_step(stage, step, stamp):
        step_dir = stage / "checkpoints_best" / str(step)
        for item in ("meta", "generator"):
            (step_dir / item).mkdir(parents=True)
        (step_dir / "_CHECKPOINT_METADATA").write_text(
            json_lib.dumps({"commit_timestamp_nsecs": stamp}))

    stage = tmp_path / "run" / "finetune"
    write_step(stage, 150, 1796326623449079639)
    first = workflow_uncertainty.checkpoint_id(str(stage))
    assert first == f"{os.path.join('checkpoints_best', '150')}@1796326623449079639"
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere" / "run")
    assert workflow_uncertainty.checkpoint_id(str(tmp_path / "elsewhere" / "run" / "finetune")) \
        == first
    shutil.rmtree(stage / "checkpoints_best")
    write_step(stage, 150, 1796326999000000000)  # retrained: same step, another commit
    assert workflow_uncertainty.checkpoint_id(str(stage)) != first
    assert workflow_uncertainty.checkpoint_id(str(tmp_path / "nothing")) == ""


def test_synthesize_applies_only_the_levels_fitted_for_the_checkpoint_it_loads(tmp_path, capsys):
    """`synthesize --checkpoint STEP_DIR` of another step than the evaluated one, or after a
    retraining, must not borrow levels fitted for another generator."""
    import json as json_lib

    from configs import default
    from workflow import rescale
    from workflow import uncertainty as workflow_uncertainty

    stage = tmp_path / "run" / "finetune"
    for folder, step, stamp in (("checkpoints_best", 150, 11), ("checkpoints", 200, 22)):
        step_dir = stage / folder / str(step)
        for item in ("meta", "generator"):
            (step_dir / item).mkdir(parents=True)
        (step_dir / "_CHECKPOINT_METADATA").write_text(
            json_lib.dumps({"commit_timestamp_nsecs": stamp}))
    config = default.get_config("tiny")
    targets = tuple(config.data.target_channels)
    levels = (0.9, 0.8, 0.85, 0.87, 0.91)
    (stage / rescale.RESCALE_FILE).write_text(json_lib.dumps({
        "levels": dict(zip(targets, levels, strict=True)),
        "checkpoint": workflow_uncertainty.checkpoint_id(str(stage))}))
    assert rescale.stage_rescale(str(stage), config) == levels  # the best step: its own
    assert rescale.stage_rescale(str(stage / "checkpoints_best" / "150"), config) == levels
    capsys.readouterr()
    assert rescale.stage_rescale(str(stage / "checkpoints" / "200"), config) is None
    assert "not for checkpoints/200" in capsys.readouterr().err
    config.rescale.enabled = False
    assert rescale.stage_rescale(str(stage), config) is None


def test_calibration_leaves_out_the_subjects_that_chose_the_checkpoint(tmp_path,
                                                                       write_nifti_cohort):
    """A checkpoint picked on gbm_calib's first subject does well on it by selection: the
    conformal quantile comes from the other calibration subjects only (NumPy order statistic
    over their brain voxels), on the run's own cohort only, and a stored fit that used the
    selecting subject is refitted."""
    import json

    from configs import default
    from workflow import cohorts, synthesize
    from workflow import uncertainty as wu

    root = tmp_path / "cohort"
    write_nifti_cohort(root, np.random.default_rng(0), _split_subjects())
    config = default.get_config("tiny")
    config.data.cohort_dir = str(root)
    config.uncertainty.method = "constant"
    config.uncertainty.calibration_split = "gbm_calib"
    config.finetune.validation_split = "gbm_calib"
    config.train.eval_max_subjects = 1
    config.eval.batch_size = 4
    targets = tuple(config.data.target_channels)

    def predict_fn(batch):
        return np.full(batch.shape[:3] + (len(targets),), 0.5, np.float32)

    assert wu.selection_subjects(config, "finetune", str(root), "gbm_calib") == ["s2"]
    stage_dir = tmp_path / "run" / "finetune"
    model = wu.fit_uncertainty(config, str(stage_dir), predict_fn, str(root))
    assert model.meta["calibration_subjects"] == ["s3"]
    assert model.meta["selection_subjects_left_out"] == ["s2"]
    # the reference: the ceil((n + 1) 0.9)-th smallest |target - 0.5| over s3's brain voxels
    inputs, _, _ = synthesize.model_channels(config)
    record = cohorts.split_records(str(root), "gbm_calib", ["s3"])[0]
    subject = cohorts.load_record(str(root), record, channels=inputs + targets)
    brain = subject.brain_mask > 0
    for name in targets:
        scores = np.sort(np.abs(subject.volumes[name][brain].astype(np.float64) - 0.5))
        rank = math.ceil((scores.size + 1) * 0.9)
        assert model.quantiles[name] == pytest.approx(scores[rank - 1], rel=1e-6)

    # the stored fit is reused as long as the same subjects would be left out
    again, _ = wu.uncertainty_for(config, str(stage_dir), None, str(root))
    assert again.meta["calibration_subjects"] == ["s3"]
    # a fit from before (the selecting subject included) is refitted
    calibration = stage_dir / wu.UNCERTAINTY_DIR / wu.CALIBRATION_FILE
    meta = json.loads(calibration.read_text())
    del meta["selection_subjects_left_out"]
    calibration.write_text(json.dumps(meta))
    with pytest.raises(TypeError):  # predict_fn=None: proof that it fits again
        wu.uncertainty_for(config, str(stage_dir), None, str(root))

    # validating on every calibration subject leaves none out, and says so
    config.train.eval_max_subjects = 2
    kept, left_out, note = wu.calibration_subjects(config, "finetune", str(root), "gbm_calib")
    assert (kept, left_out) == (["s2", "s3"], []) and "coverage may fall short" in note
    # another cohort did not choose the checkpoint: all its calibration subjects count
    config.train.eval_max_subjects = 1
    other = tmp_path / "other"
    shutil.copytree(root, other)
    assert wu.calibration_subjects(config, "finetune", str(other), "gbm_calib")[:2] == (
        ["s2", "s3"], [])
    # nor does a stage that validates elsewhere
    config.finetune.validation_split = "gbm_test"
    assert wu.selection_subjects(config, "finetune", str(root), "gbm_calib") == []


def test_another_method_is_fitted_and_scored_beside_the_runs_own():
    from configs import default
    from workflow import uncertainty as wu
    from workflow.errors import UserError

    config = default.get_config("tiny")
    assert config.uncertainty.enabled and config.uncertainty.method == "residual_net"
    assert wu.method_override(config, "residual_net") == ("uncertainty", "")
    assert wu.method_override(config, "flip") == ("uncertainty-flip", "-uncertainty-flip")
    assert config.uncertainty.method == "flip"
    # a run trained without intervals: even its config's method goes beside its report
    config = default.get_config("tiny")
    config.uncertainty.enabled = False
    assert wu.method_override(config, "residual_net") == (
        "uncertainty-residual_net", "-uncertainty-residual_net")
    assert config.uncertainty.enabled
    with pytest.raises(UserError, match="use one of"):
        wu.method_override(config, "ensemble")
    del config.uncertainty
    with pytest.raises(UserError, match="no uncertainty section"):
        wu.method_override(config, "flip")
    # the CLI spells the methods without importing JAX: the two lists must not drift apart
    from experiments import evaluate as evaluate_cli
    from qsnet_jax import uncertainty as unc

    assert evaluate_cli.UNCERTAINTY_METHODS == unc.METHODS
