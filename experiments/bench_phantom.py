"""Phantom cohort build times; prints JSON.

    python -m experiments.bench_phantom [--skip-quick] [--paper-subjects 2] [--jobs N]

quick: the whole preset built with the CLI's code path (`--jobs` workers, default every
core; seconds, measured), with each subject's own time.
paper: the MRF model (dictionary + tables) and `--paper-subjects` subjects (one healthy, one
GBM) simulated and written at 1 mm with the CLI's code path, side by side in up to `--jobs`
workers; the full cohort time on `jobs` cores is *extrapolated* from them as model +
mean(subject) x number of subjects / jobs (healthy and GBM weighted by their counts). On a
shared machine every number is measured under load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def bench_quick(jobs):
    from data_pipelines.phantom import presets, writer

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        seconds = writer.build_into(tmp, presets.PRESETS["quick"], 0, jobs=jobs,
                                    log=lambda line: None)
        total = time.perf_counter() - start
    return {"quick_build_seconds_measured": round(total, 1),
            "quick_seconds_per_subject_measured": {k: round(v, 1) for k, v in
                                                   seconds.items()}}


def bench_paper(num_subjects: int, jobs: int):
    import nibabel as nib

    from data_pipelines.phantom import presets, simulate, writer

    preset = presets.PRESETS["paper"]
    simulate.mrf_model.cache_clear()  # quick shares the MRF model: time it afresh
    start = time.perf_counter()
    simulate.model_for(preset)  # timed here; build_into below reuses the cached model
    model_s = time.perf_counter() - start
    specs = writer.subject_specs(preset, 0)
    chosen = [next(s for s in specs if s.group == "healthy"),
              next(s for s in specs if s.group == "gbm")][:num_subjects]
    with tempfile.TemporaryDirectory() as tmp:
        # The CLI's code path (the model above is reused from its cache): the subjects are
        # built side by side in up to `jobs` workers, so each one's time is measured under
        # the load of a real build.
        seconds = writer.build_into(tmp, preset, 0, jobs=jobs,
                                    subjects=[s.subject for s in chosen], log=lambda line: None)
        shape = nib.load(os.path.join(tmp, chosen[0].subject, "t1map.nii.gz")).shape
    per_group = {spec.group: seconds[spec.subject] for spec in chosen}
    counts = {"healthy": 0, "gbm": 0}
    for _, group, _, n in preset.splits:
        counts[group] += n
    mean = sum(per_group.values()) / len(per_group)
    total = model_s + sum(per_group.get(g, mean) * n for g, n in counts.items()) / jobs
    return {"model_seconds": round(model_s, 1),
            "seconds_per_subject_measured": {g: round(v, 1) for g, v in per_group.items()},
            "subject_shape": list(shape), "subjects": counts, "jobs": jobs,
            "full_cohort_seconds_extrapolated": round(total, 1),
            "full_cohort_minutes_extrapolated": round(total / 60.0, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-quick", action="store_true")
    parser.add_argument("--paper-subjects", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    from data_pipelines.phantom import writer

    jobs = args.jobs or writer.available_cores()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared)", "jobs": jobs}
    if not args.skip_quick:
        result.update(bench_quick(jobs))
        result["quick_target_seconds"] = 180
    if args.paper_subjects:
        result["paper"] = bench_paper(args.paper_subjects, jobs)
        result["paper_target_minutes"] = 30
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
