"""Studies (workflow/studies.py): variant configs, and compare / generalization / ablate end
to end on the tiny phantom cohort, with the combined tables checked against the per-variant
evaluations they are built from."""

import copy
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys

import ml_collections
import pytest

from configs import ablations, cgan, compare, default, generalization, physics, resunet, swin
from qsnet_jax import evaluation
from workflow import overrides
from workflow import studies as study
from workflow.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ unit tests (fast)


def test_parse_and_apply_overrides():
    config = default.get_config()
    overrides.apply_override(config, "model.name=resunet")
    overrides.apply_override(config, "model.deep_supervision=False")
    overrides.apply_override(config, "optim.ema_decay=0")
    overrides.apply_override(config, "data.input_channels=t1map,t2map")
    overrides.apply_override(config, "stages=('finetune',)")
    overrides.apply_override(config, "finetune.steps=7")
    assert config.model.name == "resunet" and config.model.deep_supervision is False
    assert config.optim.ema_decay == 0.0 and isinstance(config.optim.ema_decay, float)
    assert config.data.input_channels == ("t1map", "t2map")
    assert config.stages == ("finetune",) and config.finetune.steps == 7
    for bad, words in [("model.nope=1", "unknown config key 'model.nope'"),
                       ("nope.name=1", "unknown config key"),
                       ("model=1", "whole section"),
                       ("finetune.steps=many", "cannot parse"),
                       ("model.deep_supervision=3", "is a bool"),
                       ("no equals sign!", "bad override")]:
        with pytest.raises(UserError, match=re.escape(words)):
            overrides.apply_override(config, bad)


@pytest.mark.parametrize("variant, module", [("resunet", resunet), ("pix2pix", cgan),
                                             ("swin", swin), ("physics", physics)])
def test_variant_equals_its_config_module(variant, module):
    # paper size: the variant is exactly configs/<module>.py
    built = study.variant_config(compare.get_config(), variant)
    assert overrides.flatten(built) == overrides.flatten(module.get_config())
    # tiny study: the module's edit applied to the tiny base; data, sizes and steps stay
    tiny = compare.get_config("tiny")
    built = overrides.flatten(study.variant_config(tiny, variant))
    assert built == overrides.flatten(module.apply(compare.study_base("tiny")))
    base = overrides.flatten(study.base_config(tiny))
    assert built["model.name"] != base["model.name"]
    for key, value in built.items():
        kept = key.split(".")[0] in ("data", "train", "eval") or key in (
            "pretrain.steps", "finetune.steps", "model.base_width", "model.depth")
        if kept:
            assert value == base[key], key
    if variant != "physics":
        assert built["finetune.freeze_encoder_steps"] == round(0.1 * tiny.finetune.steps)


def test_study_configs_plan_and_validate():
    for module in (compare, generalization, ablations):
        for size in (None, "tiny", "quick", "bench"):
            names, configs, pairs = study.study_plan(module.get_config(size))
            assert names == list(module.get_config(size).study.variants)
            assert pairs and all(a in names and b in names for a, b in pairs)
    bench = compare.get_config("bench")
    assert bench.data.phantom_preset == "bench" and bench.pretrain.steps == 600
    names, configs, pairs = study.study_plan(compare.get_config("tiny"))
    assert names[0] == "qsnet" and pairs == [("qsnet", n) for n in names[1:]]
    study.share_segmenter(configs, "/tmp/some_study")  # one segmenter for all variants
    assert {c.segmentation.dir for c in configs.values()} == {"/tmp/some_study/segmenter"}
    assert configs["physics"].model.name == "physics"
    names, configs, pairs = study.study_plan(generalization.get_config("tiny"))
    assert ("swin_quantitative", "swin_qualitative") in pairs
    assert configs["swin_qualitative"].data.input_channels == ("t1w", "t2w")
    assert configs["swin_qualitative"].data.target_channels == ("t1flair", "t2flair", "swi")
    assert configs["swin_qualitative"].model.name == "swin"
    names, configs, pairs = study.study_plan(ablations.get_config())
    assert configs["single_stage"].stages == ("finetune",)
    assert configs["context_2_5d"].data.context_slices == 1
    assert configs["no_pd"].data.input_channels == ("t1map", "t2map")
    assert configs["no_adversary"].discriminator.name == "none"
    assert not configs["no_deep_supervision"].model.deep_supervision


def test_study_plan_errors():
    def plan_with(**changes):
        config = compare.get_config("tiny")
        for key, value in changes.items():
            config.study[key] = value
        return study.study_plan(config)

    with pytest.raises(UserError, match="reference='nope' is not a variant"):
        plan_with(reference="nope")
    with pytest.raises(UserError, match="unknown variant"):
        plan_with(only=("nope",))
    with pytest.raises(UserError, match="is not a pair"):
        plan_with(pairs=(("qsnet", "nope"),))
    config = compare.get_config("tiny")
    config.study.variants.resunet = ("not_an_override",)
    with pytest.raises(UserError, match="bad edit 'not_an_override' of variant 'resunet'"):
        study.study_plan(config)
    # a subset brings its reference along
    names, _, pairs = plan_with(only=("swin",))
    assert names == ["qsnet", "swin"] and pairs == [("qsnet", "swin")]
    with pytest.raises(UserError, match="no study section"):
        study.study_plan(default.get_config())


# ------------------------------------------------------------------ end to end (slow)


def _tiny(module, cohort, **study_fields):
    config = module.get_config("tiny")
    config.data.cohort_dir = str(cohort)
    for key, value in study_fields.items():
        config.study[key] = value
    return config


@pytest.fixture(scope="module")
def studies(tmp_path_factory, tiny_cohort):
    """The three tiny studies, run once: compare in full; generalization for one architecture
    pair; ablations for two variants, reusing compare's QS-Net run as the full model."""
    root = tmp_path_factory.mktemp("studies")
    out = {}
    config = _tiny(compare, tiny_cohort)
    out["compare"] = (config, str(root / "compare"), study.run_study(config, root / "compare"))
    config = _tiny(generalization, tiny_cohort, only=("qsnet_qualitative",))
    out["generalization"] = (config, str(root / "generalization"),
                             study.run_study(config, root / "generalization"))
    os.makedirs(root / "ablations")
    shutil.copytree(root / "compare" / "qsnet", root / "ablations" / "full")
    config = _tiny(ablations, tiny_cohort, only=("single_stage", "context_2_5d"))
    out["ablations"] = (config, str(root / "ablations"),
                        study.run_study(config, root / "ablations"))
    return out


def _expected_variants(name, config):
    return study.study_plan(config)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["compare", "generalization", "ablations"])
def test_study_tables_come_from_the_runs(studies, name):
    config, workdir, _ = studies[name]
    variants = _expected_variants(name, config)
    out = os.path.join(workdir, "comparison")
    with open(os.path.join(out, "metrics.json")) as f:
        combined = json.load(f)
    assert combined["variants"] == variants
    for variant in variants:
        entry = combined["models"][variant]
        with open(entry["eval"]) as f:
            per_variant = json.load(f)
        assert entry["eval"].startswith(os.path.join(workdir, variant) + os.sep)
        assert per_variant["split"] == config.study.split
        recomputed = evaluation.jsonable(evaluation.aggregate(per_variant["per_subject"]))
        assert entry["summary"] == recomputed
        assert entry["per_subject"] == per_variant["per_subject"]
        assert set(entry["summary"]) == set(config.data.target_channels)
        for contrast in config.data.target_channels:
            for key in ("mae", "ssim", "psnr"):
                assert math.isfinite(entry["summary"][contrast][key]["mean"])
    assert combined["pairs"]
    for test in combined["wilcoxon"]:
        a = combined["models"][test["a"]]["per_subject"]
        b = combined["models"][test["b"]]["per_subject"]
        for contrast, results in test["results"].items():
            for key, result in results.items():
                expected = evaluation.paired_wilcoxon(
                    {s: v[contrast][key] for s, v in a.items() if key in v[contrast]},
                    {s: v[contrast][key] for s, v in b.items() if key in v[contrast]})
                assert result["p_value"] == pytest.approx(expected["p_value"])
                assert result["n"] == expected["n"]
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    for variant in variants:
        assert re.search(rf"^\| \S+ \| {variant} \|", report, re.M), variant
        # the variant's evaluation named from the report's folder: a copied report still
        # points into the study's work dir
        assert f"(`../{variant}/" in report and os.path.isfile(os.path.join(
            out, "..", variant, os.path.relpath(combined["models"][variant]["eval"],
                                                os.path.join(workdir, variant))))
    assert "(p=" in report
    with open(os.path.join(out, "metrics.csv")) as f:
        lines = f.read().splitlines()
    assert {line.split(",")[0] for line in lines[1:]} == set(variants)
    figures = os.listdir(os.path.join(out, "figures"))
    assert figures and all(f.endswith(".png") for f in figures)
    assert not [f for f in os.listdir(workdir) if ".tmp-" in f]


@pytest.mark.slow
def test_finished_variants_are_reused(studies):
    config, workdir, _ = studies["ablations"]
    config = copy.deepcopy(config)
    assert "full" in study.study_plan(config)[0]  # copied from compare: reused, not trained
    stream = io.StringIO()
    config.study.num_figure_subjects = 0
    study.run_study(config, workdir, stream=stream)
    log = stream.getvalue()
    assert log.count("reusing the finished stages") == 3, log
    assert "training" not in log


@pytest.mark.slow
@pytest.mark.parametrize("override, words", [
    ("--config.study.variants.resunet=('model.name=resunet','model.nope=1')",
     "unknown config key 'model.nope'"),
    ("--config.study.only=('nope',)", "unknown variant"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, override, words):
    command = [sys.executable, "-m", "experiments.compare", "--config=configs/compare.py:tiny",
               f"--workdir={tmp_path / 'w'}", override]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert not os.path.exists(tmp_path / "w")


def test_variant_names_are_ordered_as_written():
    assert list(compare.get_config("tiny").study.variants)[:2] == ["qsnet", "resunet"]
    assert isinstance(study.base_config(compare.get_config()), ml_collections.ConfigDict)
    # the baselines freeze the encoder for a tenth of fine-tuning: 500 of the paper's 5000
    assert study.variant_config(compare.get_config(), "resunet").finetune \
        .freeze_encoder_steps == 500
    assert study.variant_config(compare.get_config("quick"), "swin").finetune \
        .freeze_encoder_steps == 10


def test_study_progress_paces_the_variants_left_by_the_trained_ones():
    """The estimate is (variants still to train) x (mean time of the trained ones): reused
    variants count as done and set no pace."""
    now = [100.0]
    progress = study.StudyProgress(total=5, to_train=3, clock=lambda: now[0])
    now[0] += 2
    assert progress.record(2.0, trained=False) == \
        "[study] 1/5 variants done, 0m02s so far; 3 still to train"
    now[0] += 600
    assert progress.record(600.0, trained=True) == (
        "[study] 2/5 variants done, 10m02s so far; 2 still to train, about 20m00s left at "
        "this study's pace (10m00s a variant; variants differ)")
    now[0] += 1200
    line = progress.record(1200.0, trained=True)
    assert line.startswith("[study] 3/5 variants done, 30m02s so far; 1 still to train, "
                           "about 15m00s left")  # (600 + 1200) / 2
    now[0] += 900
    assert progress.record(900.0, trained=True) == "[study] 4/5 variants done, 45m02s so far"


def test_scores_over_training_seeds_are_subject_means_with_the_seed_spread():
    """average_over_seeds against a NumPy recomputation: a subject's score is its mean over
    the seeds (over the subjects every seed scored), the spread is the sample sd of the
    per-seed split means; the report says both."""
    import numpy as np

    rng = np.random.default_rng(0)
    subjects = ["s1", "s2", "s3"]
    table = rng.uniform(0, 1, (3, len(subjects)))  # [seed, subject] of t1w mae
    runs = [{"stage_dir": f"/w/seeds/{seed}/qsnet/finetune", "metrics_path": "m.json",
             "model": "qsnet", "uncertainty": None, "segmentation": None,
             "per_subject": {s: {"t1w": {"mae": float(table[i, j])}}
                             for j, s in enumerate(subjects)}} for i, seed in enumerate((0, 1, 2))]
    runs[2]["per_subject"]["s4"] = {"t1w": {"mae": 9.0}}  # one seed only: left out
    merged = study.average_over_seeds(runs, (0, 1, 2))
    assert sorted(merged["per_subject"]) == subjects
    for j, s in enumerate(subjects):
        assert merged["per_subject"][s]["t1w"]["mae"] == pytest.approx(table[:, j].mean())
    spread = merged["seed_spread"]["t1w"]["mae"]
    assert spread["means"] == pytest.approx(table.mean(axis=1))
    assert spread["std"] == pytest.approx(np.std(table.mean(axis=1), ddof=1))
    assert merged["stage_dir"] == runs[0]["stage_dir"] and merged["seeds"] == [0, 1, 2]
    config = compare.get_config("tiny")
    combined = study.combine({"qsnet": merged}, {"qsnet": config}, [], split="gbm_test",
                             reference="")
    report = study.reports.study_markdown(combined, title="t")
    assert f"[seeds ± {spread['std']:.2f}]" in report  # MAE: 2 decimals
    assert "Training seeds 0, 1, 2" in report
    # a one-seed study's report renders again from its metrics.json (the NaN sd read back
    # as null), as from the run itself
    single = study.combine({"qsnet": study.average_over_seeds(runs[:1], (0,))},
                           {"qsnet": config}, [], split="gbm_test", reference="")
    read_back = json.loads(json.dumps(evaluation.jsonable(single), allow_nan=False))
    assert study.reports.study_markdown(read_back, title="t") == \
        study.reports.study_markdown(single, title="t")
    config.study.seeds, config.study.report_seeds = (1, 2), (2, 2)
    assert study.study_report_seeds(config, (1, 2)) == (2,)
    config.study.report_seeds = (3,)
    with pytest.raises(UserError, match="seed 3 is not one of"):
        study.study_report_seeds(config, (1, 2))
    config.study.seeds = (1, 1)
    with pytest.raises(UserError, match="repeats"):
        study.study_seeds(config)
    assert study.seed_workdir("/w", 3) == os.path.join("/w", "seeds", "3")


def test_interval_scores_and_dice_over_training_seeds_are_subject_means_too():
    """The uncertainty and downstream-segmentation entries of a seeded study are averaged
    like the image scores (NumPy recomputation): a subject's coverage and Dice are their
    means over the seeds, the pooled coverage is voxel-weighted over those means, and the
    report gives each seed's split mean; calibration settings stay the first seed's."""
    import numpy as np

    rng = np.random.default_rng(1)
    subjects = ["s1", "s2", "s3", "s4"]
    coverage = rng.uniform(0.8, 0.95, (2, 4))  # [seed, subject]
    dice = rng.uniform(0.5, 0.9, (2, 4))
    voxels = np.array([100, 300, 200, 400])

    def run(i):
        unc_scores = {s: {"t2flair": {"coverage": float(coverage[i, j]),
                                      "voxels": int(voxels[j])}}
                      for j, s in enumerate(subjects)}
        seg = {s: {"synthesized": {"dice_whole_tumor": float(dice[i, j])}}
               for j, s in enumerate(subjects)}
        return {"stage_dir": f"/w/{i}", "metrics_path": "m.json", "model": "qsnet",
                "per_subject": {s: {"t2flair": {"mae": 1.0}} for s in subjects},
                "uncertainty": {"method": "residual_net", "level": 0.9,
                                "quantiles": {"t2flair": 1.5 + i}, "per_subject": unc_scores,
                                "calibration_split": "gbm_calib", "convention": "c",
                                "timing": {"uncertainty_s": 1.0, "synthesis_s": 2.0,
                                           "ratio": 0.5}},
                "segmentation": {"per_subject": seg, "convention": "c"}}

    merged = study.average_over_seeds([run(0), run(1)], (3, 4))
    for j, s in enumerate(subjects):
        assert merged["uncertainty"]["per_subject"][s]["t2flair"]["coverage"] == \
            pytest.approx(coverage[:, j].mean())
        assert merged["segmentation"]["per_subject"][s]["synthesized"]["dice_whole_tumor"] == \
            pytest.approx(dice[:, j].mean())
    pooled = (coverage.mean(axis=0) * voxels).sum() / voxels.sum()
    assert merged["uncertainty"]["pooled_coverage"]["t2flair"]["coverage"] == \
        pytest.approx(pooled)
    assert merged["uncertainty"]["summary"]["t2flair"]["coverage"]["mean"] == \
        pytest.approx(coverage.mean())
    assert merged["uncertainty"]["quantiles"] == {"t2flair": 1.5}  # the first seed's
    per_seed = " / ".join(f"{m:.3f}" for m in coverage.mean(axis=1))
    lines = "\n".join(study.reports.uncertainty_section({"qsnet": merged["uncertainty"]}))
    assert f"T2-FLAIR {per_seed}" in lines and "training seeds 3, 4" in lines
    lines = "\n".join(study.reports.segmentation_section({"qsnet": merged["segmentation"]}))
    assert "synthesized " + " / ".join(f"{m:.3f}" for m in dice.mean(axis=1)) in lines
    # one seed: no per-seed line to repeat the table
    single = study.average_over_seeds([run(0)], (3,))
    assert "with each seed" not in "\n".join(
        study.reports.uncertainty_section({"qsnet": single["uncertainty"]})
        + study.reports.segmentation_section({"qsnet": single["segmentation"]}))
    # a seed whose evaluation wrote a note instead of scores: the first seed's entry stands
    noted = run(1) | {"uncertainty": {"note": "no calibration split"}}
    assert study.average_over_seeds([run(0), noted], (0, 1))["uncertainty"] == \
        run(0)["uncertainty"]


def test_a_ground_truth_dice_every_model_shares_is_one_row():
    """The study's one segmenter on the same ground truth gives every model the same
    ground-truth Dice: one table row (mean ± sd against NumPy) and one per-seed line; a model
    whose ground-truth scores differ keeps rows of its own."""
    import numpy as np

    rng = np.random.default_rng(2)
    subjects = ["s1", "s2", "s3"]
    truth = rng.uniform(0.6, 0.9, (2, 3))  # [seed, subject], shared by the models

    def run(seed, synthesized):
        per_subject = {s: {"ground truth": {"dice_whole_tumor": float(truth[seed, j])},
                           "synthesized": {"dice_whole_tumor": synthesized[j]}}
                       for j, s in enumerate(subjects)}
        return {"stage_dir": "/w", "metrics_path": "m.json", "model": "m",
                "per_subject": {s: {"t1w": {"mae": 1.0}} for s in subjects},
                "uncertainty": None,
                "segmentation": {"per_subject": per_subject, "convention": "c"}}

    synthesized = {name: rng.uniform(0, 1, (2, 3)) for name in ("a", "b")}
    records = {name: study.average_over_seeds(
        [run(seed, values[seed].tolist()) for seed in (0, 1)], (0, 1))["segmentation"]
        for name, values in synthesized.items()}
    lines = study.reports.segmentation_section(records)
    rows = [line for line in lines if line.startswith("| ") and "ground truth" in line]
    mean_over_seeds = truth.mean(axis=0)
    expected = f"{mean_over_seeds.mean():.3f} ± {np.std(mean_over_seeds, ddof=1):.3f}"
    assert len(rows) == 1 and rows[0].startswith("| every model | ground truth |")
    assert rows[0].endswith(f"| {expected} |")
    assert sum("| synthesized |" in line for line in lines) == 2
    a_means = synthesized["a"].mean(axis=0)
    assert f"| a | synthesized | – | – | – | {a_means.mean():.3f} ± " \
           f"{np.std(a_means, ddof=1):.3f} |" in lines
    seeds = " / ".join(f"{m:.3f}" for m in truth.mean(axis=1))
    assert f"  - ground truth (every model): {seeds}" in lines
    # b's segmenter saw other ground truth: each model shows its own
    records["b"]["per_subject"]["s1"]["ground truth"]["dice_whole_tumor"] += 0.01
    lines = study.reports.segmentation_section(records)
    assert sum("| ground truth |" in line for line in lines) == 2
    assert not any("every model" in line for line in lines)


@pytest.mark.slow
def test_a_study_over_two_seeds_trains_each_variant_twice(tmp_path, tiny_cohort):
    config = _tiny(compare, tiny_cohort, only=("physics",), seeds=(0, 1), report_seeds=(1,),
                   num_figure_subjects=0)
    result = study.run_study(config, tmp_path / "w", stream=io.StringIO())
    for name in ("qsnet", "physics"):
        model = result["models"][name]
        assert model["seeds"] == [0, 1]
        for seed, stage_dir in zip((0, 1), model["seed_stage_dirs"], strict=True):
            assert stage_dir == str(tmp_path / "w" / "seeds" / str(seed) / name / "finetune")
            with open(os.path.join(stage_dir, "..", "config.json")) as f:
                assert json.load(f)["seed"] == seed
    # the two QS-Net seeds differ (different initialization), and the table's subject score
    # is their mean
    scores = []
    for stage_dir in result["models"]["qsnet"]["seed_stage_dirs"]:
        with open(os.path.join(stage_dir, "eval", "gbm_test", "metrics.json")) as f:
            scores.append(json.load(f)["per_subject"])
    subject = next(iter(scores[0]))
    first, second = (s[subject]["t1w"]["mae"] for s in scores)
    assert first != second
    assert result["models"]["qsnet"]["per_subject"][subject]["t1w"]["mae"] == pytest.approx(
        (first + second) / 2)
    # report_seeds=(1,): seed 1's own report holds seed 1's evaluation, score for score
    own = tmp_path / "w" / "comparison_seed1"
    with open(own / "metrics.json") as f:
        seed_one = json.load(f)["models"]["qsnet"]
    assert seed_one["seeds"] == [1] and seed_one["per_subject"] == scores[1]
    assert "Training seed 1." in (own / "report.md").read_text()
    assert not (tmp_path / "w" / "comparison_seed0").exists()


def test_a_finished_variant_moves_between_study_workdirs(tmp_path):
    """A variant folder copied into another study's work dir is reused: the shared
    segmenter's place differs, the training config does not; any training key still counts."""
    _, configs, _ = study.study_plan(compare.get_config("tiny"))
    vconfig = configs["qsnet"]
    study.share_segmenter({"qsnet": vconfig}, str(tmp_path / "first"))
    (tmp_path / "qsnet").mkdir()
    (tmp_path / "qsnet" / "config.json").write_text(vconfig.to_json_best_effort())
    moved = copy.deepcopy(vconfig)
    moved.segmentation.dir = str(tmp_path / "second" / "segmenter")
    study._check_same_config(str(tmp_path / "qsnet"), moved, "qsnet")  # no error
    moved.model.base_width += 1
    with pytest.raises(UserError, match="model.base_width"):
        study._check_same_config(str(tmp_path / "qsnet"), moved, "qsnet")
