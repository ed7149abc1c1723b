"""How far the phantom's weighted images are from what a voxel-wise formula can make of the
maps (issue 18; docs/design.md section 8). Prints JSON.

    python -m data_pipelines.phantom realism --preset quick [--seed 0] [--jobs N]
        [--train 3 --test 2] [--no-ablation]

Subjects are simulated in memory (training: the first of healthy_train and gbm_train; test:
the first of healthy_test and gbm_test). Per contrast, on the test subjects:
- `baseline`: the signal-equation baseline (qsnet_jax.physics.signal.synthesize from the
  matched T1, T2 and PD maps, PD normalized as the pipeline does) with one least-squares
  scale per contrast fitted on the training subjects (as the studies' physics variant),
  against the noise-free acquired image (receive field included, scale removed by the same
  99.5th-percentile normalization), NRMSE = rms(error) / rms(target) in pure voxels (one
  tissue > 95%) and in mixed voxels of the brain mask;
- `voxelwise`: the best per-voxel regression of the maps fitted on the training subjects:
  a binned lookup on (log T1, log T2, PD) with a cubic polynomial where a bin is empty, and
  the cubic polynomial alone; the better of the two is `best`;
- `ablation`: the baseline NRMSE with each effect switched off in turn, and the change
  (`contribution` = NRMSE with the effect - without it).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time

import numpy as np

from data_pipelines.phantom import anatomy, presets, simulate, writer

CONTRASTS = ("t1w", "t2w", "t1flair", "t2flair", "swi")
PERCENTILE = 99.5


def _normalize(volume, mask):
    scale = float(np.percentile(volume[mask], PERCENTILE)) if mask.any() else 1.0
    return np.clip(volume / max(scale, 1e-12), 0.0, None)


def reduce_subject(spec, volumes):
    """What the report needs of one simulated subject (small enough to pickle back)."""
    mask = volumes["brain_mask"] > 0
    stack = np.stack(list(volumes["fractions"].values()))
    top = stack.max(axis=0) / np.maximum(stack.sum(axis=0), 1e-9)
    out = {"subject": spec.subject, "split": spec.split, "site": spec.site, "mask": mask,
           "pure": top > 0.95, "purity": float(np.mean(top[mask] > 0.95))}
    for name in ("t1map", "t2map", "pdmap"):
        out[name] = volumes[name]
    for name in CONTRASTS:
        # the noise-free acquisition as the scanner sees it (receive field included)
        out[name] = volumes["truth"][name] * volumes["receive_field"]
    return out


def _simulate_reduced(job):
    spec = job
    volumes = simulate.simulate_subject(spec, writer._WORKER["preset"],
                                        model=writer._WORKER["model"])
    return reduce_subject(spec, volumes)


def simulate_many(preset, specs, jobs):
    model = simulate.model_for(preset)
    return writer.run_parallel(_simulate_reduced, specs, preset, model, jobs)


def features(subject):
    mask = subject["mask"]
    pd = _normalize(subject["pdmap"], mask)
    t1 = np.log(np.maximum(subject["t1map"], 1.0))
    t2 = np.log(np.maximum(subject["t2map"], 1.0))
    return np.stack([t1[mask], t2[mask], pd[mask]], axis=1)


def baseline_raw(subject, protocol):
    from qsnet_jax.physics import signal

    mask = subject["mask"]
    pd = _normalize(subject["pdmap"], mask)
    raw = np.asarray(signal.synthesize(protocol, pd, subject["t1map"], subject["t2map"]))
    return raw[mask]


def _target(subject, name):
    return _normalize(subject[name], subject["mask"])[subject["mask"]]


def _nrmse(prediction, target, select):
    if not select.any():
        return None
    error = prediction[select] - target[select]
    return float(np.sqrt(np.mean(error**2)) / max(np.sqrt(np.mean(target[select] ** 2)), 1e-12))


def _poly(x, degree=3):
    columns = [np.ones(len(x))]
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(x.shape[1]), d):
            columns.append(np.prod(x[:, combo], axis=1))
    return np.stack(columns, axis=1)


class BinnedLookup:
    """Mean target per (log T1, log T2, PD) bin (quantile edges of the training data)."""

    def __init__(self, x, y, bins=(32, 32, 16)):
        self.edges = [np.unique(np.quantile(x[:, i], np.linspace(0, 1, b + 1)[1:-1]))
                      for i, b in enumerate(bins)]
        index = self._index(x)
        size = int(np.prod([len(e) + 1 for e in self.edges]))
        self.sum = np.bincount(index, weights=y, minlength=size)
        self.count = np.bincount(index, minlength=size)

    def _index(self, x):
        idx = [np.searchsorted(e, x[:, i]) for i, e in enumerate(self.edges)]
        return np.ravel_multi_index(idx, [len(e) + 1 for e in self.edges])

    def predict(self, x, fallback):
        index = self._index(x)
        count = self.count[index]
        return np.where(count > 0, self.sum[index] / np.maximum(count, 1), fallback)


def score(train, test, site_protocols):
    """Per contrast: baseline and voxel-wise regression NRMSE on the test subjects."""
    result = {}
    for name in CONTRASTS:
        numerator = denominator = 0.0
        for subject in train:
            raw = baseline_raw(subject, site_protocols(subject["site"])[name])
            target = _target(subject, name)
            numerator += float(raw @ target)
            denominator += float(raw @ raw)
        scale = numerator / max(denominator, 1e-30)
        x_train = np.concatenate([features(s) for s in train])
        y_train = np.concatenate([_target(s, name) for s in train])
        coefficients = np.linalg.lstsq(_poly(x_train), y_train, rcond=None)[0]
        lookup = BinnedLookup(x_train, y_train)
        preds = {"baseline": [], "polynomial": [], "binned_lookup": []}
        targets, pure = [], []
        for subject in test:
            raw = baseline_raw(subject, site_protocols(subject["site"])[name])
            x = features(subject)
            poly = _poly(x) @ coefficients
            preds["baseline"].append(scale * raw)
            preds["polynomial"].append(poly)
            preds["binned_lookup"].append(lookup.predict(x, poly))
            targets.append(_target(subject, name))
            pure.append(subject["pure"][subject["mask"]])
        target, pure = np.concatenate(targets), np.concatenate(pure)
        entry = {}
        for key, parts in preds.items():
            p = np.concatenate(parts)
            entry[key] = {"pure": _round(_nrmse(p, target, pure)),
                          "mixed": _round(_nrmse(p, target, ~pure)),
                          "all": _round(_nrmse(p, target, np.ones_like(pure)))}
        best = min(("polynomial", "binned_lookup"), key=lambda k: entry[k]["all"])
        entry["voxelwise_best"] = dict(entry[best], method=best)
        entry["baseline_scale"] = _round(scale)
        result[name] = entry
    return result


def _round(value, digits=4):
    return None if value is None else round(float(value), digits)


def choose(preset, seed, num_train, num_test):
    specs = writer.subject_specs(preset, seed)

    def first(split, n):
        return [s for s in specs if s.split == split][:n]
    train = first("healthy_train", num_train - num_train // 2) + first("gbm_train",
                                                                      num_train // 2)
    test = first("healthy_test", num_test - num_test // 2) + first("gbm_test", num_test // 2)
    return train, test


def one_mm_purity(seed):
    """Purity of one paper-preset (1 mm) healthy subject's anatomy, sharp model and v1."""
    paper = presets.PRESETS["paper"]
    spec = writer.subject_specs(paper, seed)[0]
    out = {}
    for label, effects in (("v2", paper.effects), ("v1_probabilities",
                                                   paper.effects - {"anatomy"})):
        rng = np.random.default_rng(spec.seed)
        from data_pipelines.phantom import tissues

        tissues.draw_tissue_params(rng)
        warp = anatomy.draw_warp(rng)
        sharp = anatomy.draw_sharp(simulate._stream(spec, "anatomy"))
        anat = simulate.subject_anatomy(rng, warp, None, dataclasses.replace(
            paper, effects=effects), sharp)
        out[label] = round(anatomy.purity(anat["fractions"], anat["brain"] >= 0.5), 4)
    return out


def report(preset_name, seed, jobs, num_train, num_test, ablation=True, one_mm=True):
    from qsnet_jax.physics import signal

    start = time.perf_counter()
    preset = presets.PRESETS[preset_name]
    train, test = choose(preset, seed, num_train, num_test)
    variants = [("all", preset.effects)]
    if ablation:
        variants += [(f"without_{e}", preset.effects - {e}) for e in sorted(preset.effects)]
    results, purity = {}, {}
    for done, (label, effects) in enumerate(variants, start=1):
        variant = dataclasses.replace(preset, effects=frozenset(effects))
        subjects = simulate_many(variant, train + test, jobs)
        results[label] = score(subjects[:len(train)], subjects[len(train):],
                               signal.site_protocols)
        purity[label] = round(float(np.mean([s["purity"] for s in subjects])), 4)
        elapsed = time.perf_counter() - start  # progress: a full report takes tens of minutes
        print(f"[realism] {done}/{len(variants)} {label}: {len(subjects)} subjects, elapsed "
              f"{elapsed:.0f} s, ETA {elapsed / done * (len(variants) - done):.0f} s",
              file=sys.stderr, flush=True)
    out = {"preset": preset_name, "seed": seed, "voxel_mm": preset.voxel_mm,
           "train_subjects": [s.subject for s in train],
           "test_subjects": [s.subject for s in test],
           "metric": "NRMSE = rms(prediction - target) / rms(target) over test brain voxels; "
                     "pure: one tissue > 95% of the voxel",
           "purity_fraction_at_preset_grid": {"v2": purity["all"]},
           "contrasts": results["all"]}
    if "without_anatomy" in purity:
        out["purity_fraction_at_preset_grid"]["v1_probabilities"] = purity["without_anatomy"]
    if one_mm:
        out["purity_fraction_at_1mm"] = one_mm_purity(seed)
    if ablation:
        out["ablation"] = {}
        for label, scores in results.items():
            if label == "all":
                continue
            out["ablation"][label] = {
                name: {"baseline_nrmse_all": scores[name]["baseline"]["all"],
                       "contribution_all": _round(results["all"][name]["baseline"]["all"]
                                                  - scores[name]["baseline"]["all"]),
                       "contribution_pure": _diff(results["all"][name], scores[name], "pure"),
                       "contribution_mixed": _diff(results["all"][name], scores[name],
                                                   "mixed"),
                       "voxelwise_best_all": scores[name]["voxelwise_best"]["all"]}
                for name in CONTRASTS}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _diff(with_all, without, key):
    a, b = with_all["baseline"][key], without["baseline"][key]
    return None if a is None or b is None else _round(a - b)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.phantom realism")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--train", type=int, default=3)
    parser.add_argument("--test", type=int, default=2)
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--no-1mm", action="store_true")
    args = parser.parse_args(argv)
    if args.preset not in presets.PRESETS:
        print(f"phantom realism: unknown preset {args.preset!r}; known: "
              f"{', '.join(presets.PRESETS)}", file=sys.stderr)
        return 2
    print(json.dumps(report(args.preset, args.seed, args.jobs, args.train, args.test,
                            ablation=not args.no_ablation, one_mm=not args.no_1mm),
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
