"""Throughput of the training input pipeline at the paper's slice size; prints JSON.

  python -m experiments.bench_pipeline                 # synthetic 192x224x150 cohort
  python -m experiments.bench_pipeline --cohort DIR    # a cohort on disk (e.g. the phantom)

Without --cohort it writes a synthetic cohort (random values inside an ellipsoidal brain,
zeros outside, every channel, uncompressed NIfTI) of a few subjects into a temporary folder,
prepares it with the TFDS builder, then times `make_train_iterator` (3 inputs, 5 targets,
batch 16, flips and jitter on) after a warm-up, for 2.5D context 0 and 1. The bar: >= 5x what
a training step consumes (about 1 slice/s for the full-size model on this CPU, DESIGN.md 7).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from data_pipelines import input_pipeline, tfds_builder  # noqa: E402
from qsnet_jax.physics.channels import ALL_CHANNELS  # noqa: E402

RANGES = {"t1map": (700, 4200), "t2map": (50, 2000), "pdmap": (0.6, 1.0)}


def write_synthetic_cohort(root, *, subjects=3, shape=(192, 224, 150), seed=0):
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    grid = np.indices(shape, dtype=np.float32)
    center = (np.array(shape, np.float32) - 1) / 2
    radii = np.array(shape, np.float32) * np.array([0.4, 0.42, 0.45])
    brain = (((grid - center[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0)
    brain = (brain < 1).astype(np.uint8)
    rows = []
    for s in range(subjects):
        sid = f"bench{s:02d}"
        os.makedirs(os.path.join(root, sid), exist_ok=True)
        row = [sid, "healthy", "A", "healthy_train"]
        for c in ALL_CHANNELS:
            lo, hi = RANGES.get(c, (0.05, 1.0))
            vol = np.where(brain, rng.uniform(lo, hi, shape), 0).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, affine), os.path.join(root, sid, f"{c}.nii"))
            row.append(f"{sid}/{c}.nii")
        nib.save(nib.Nifti1Image(brain, affine), os.path.join(root, sid, "brain_mask.nii"))
        rows.append(row + [f"{sid}/brain_mask.nii", ""])
    with open(os.path.join(root, "manifest.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["subject", "group", "site", "split", *ALL_CHANNELS,
                                  "brain_mask", "labels"], *rows])


def time_train(cohort, split, *, batch_size, context, steps, warmup):
    cfg = default.get_config().data
    cfg.context_slices = context
    cfg.flip_lr = True
    cfg.intensity_jitter = 0.05
    it = input_pipeline.make_train_iterator(cohort, split, cfg, batch_size=batch_size, seed=0,
                                            process_index=0, process_count=1)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
    seconds = time.perf_counter() - start
    return {"context_slices": context, "batch_size": batch_size, "batches": steps,
            "seconds": round(seconds, 3),
            "slices_per_s": round(steps * batch_size / seconds, 1),
            "inputs_shape": "x".join(map(str, batch["inputs"].shape)),
            "targets_shape": "x".join(map(str, batch["targets"].shape))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", default="", help="a cohort folder (default: synthetic)")
    parser.add_argument("--split", default="healthy_train")
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-slices-per-s", type=float, default=1.0,
                        help="what a training step consumes (DESIGN.md section 7)")
    args = parser.parse_args(argv)
    tmp = None
    result = {}
    try:
        cohort = args.cohort
        if not cohort:
            tmp = tempfile.mkdtemp(prefix="bench_pipeline_")
            cohort = os.path.join(tmp, "cohort")
            start = time.perf_counter()
            write_synthetic_cohort(cohort, subjects=args.subjects,
                                   shape=(192, 224, args.slices))
            result["write_cohort_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        builder = tfds_builder.prepare_cohort(cohort)
        prep = time.perf_counter() - start
        examples = sum(s.num_examples for s in builder.info.splits.values())
        result.update(cohort=cohort if args.cohort else "synthetic",
                      slice_shape=list(builder.builder_config.slice_shape),
                      examples=examples, prepare_s=round(prep, 2),
                      prepared_mb=round(sum(s.num_bytes for s in builder.info.splits.values())
                                        / 2**20, 1))
        runs = [time_train(cohort, args.split, batch_size=args.batch_size, context=k,
                           steps=args.steps, warmup=3) for k in (0, 1)]
        result["train"] = runs
        result["required_slices_per_s"] = 5 * args.step_slices_per_s
        result["meets_5x"] = all(r["slices_per_s"] >= 5 * args.step_slices_per_s for r in runs)
        result["cpu_count"] = os.cpu_count()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
