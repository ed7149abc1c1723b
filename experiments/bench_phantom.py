"""Phantom cohort build times; prints JSON.

    python -m experiments.bench_phantom [--skip-quick] [--paper-rounds 2] [--jobs N]

quick: the whole preset built with the CLI's code path (`--jobs` workers, default every
core; seconds, measured), with each subject's own time.
paper: the MRF model (dictionary + tables), then `--paper-rounds` rounds of `jobs` subjects
(healthy and GBM alternating) simulated and written at 1 mm with the CLI's code path, side
by side in `jobs` workers, so every time is measured under the load of a real build. A
worker's first subject also pays the worker's one-time start-up (JAX compiles, the 1 mm
template and its derived volumes, loaded once per process); a real build pays it once per
worker, not once per subject. So the first round gives start-up + subject, the later rounds
the steady per-subject time of each group, and the full cohort on `jobs` cores is
*extrapolated* as model + start-up + sum(steady(group) x count(group)) / jobs. On a shared
machine every number is measured under load.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _alternating_specs(specs, count):
    """`count` subjects, healthy and GBM alternating (fewer if the preset runs out)."""
    groups = {"healthy": [s for s in specs if s.group == "healthy"],
              "gbm": [s for s in specs if s.group == "gbm"]}
    chosen = []
    for i in range(count):
        pool = groups["healthy" if i % 2 == 0 else "gbm"] or groups["healthy"] or groups["gbm"]
        if pool:
            chosen.append(pool.pop(0))
    return chosen


def bench_paper(rounds: int, jobs: int):
    import nibabel as nib

    from data_pipelines.phantom import presets, simulate, writer

    preset = presets.PRESETS["paper"]
    simulate.mrf_model.cache_clear()  # quick shares the MRF model: time it afresh
    start = time.perf_counter()
    simulate.model_for(preset)  # timed here; build_into below reuses the cached model
    model_s = time.perf_counter() - start
    chosen = _alternating_specs(writer.subject_specs(preset, 0), rounds * jobs)
    with tempfile.TemporaryDirectory() as tmp:
        # The CLI's code path (the model above is reused from its cache). Workers take the
        # subjects in order, one at a time, and a subject takes minutes, so the first `jobs`
        # subjects land one per fresh worker and the rest on warm ones.
        build_start = time.perf_counter()
        seconds = writer.build_into(tmp, preset, 0, jobs=jobs,
                                    subjects=[s.subject for s in chosen], log=lambda line: None)
        build_s = time.perf_counter() - build_start
        shape = nib.load(os.path.join(tmp, chosen[0].subject, "t1map.nii.gz")).shape
    first = [(s.group, seconds[s.subject]) for s in chosen[:jobs]]
    later = [(s.group, seconds[s.subject]) for s in chosen[jobs:]]
    counts = {"healthy": 0, "gbm": 0}
    for _, group, _, n in preset.splits:
        counts[group] += n
    result = {"model_seconds": round(model_s, 1), "jobs": jobs, "subject_shape": list(shape),
              "subjects": counts, "built": len(chosen),
              "build_wall_seconds_measured": round(build_s, 1),
              "first_subject_per_worker_seconds": [[g, round(t, 1)] for g, t in first]}
    one_round = not later
    if one_round:  # no steady state: the first subjects stand in for it
        later = first
        result["note"] = "one round: worker start-up counted in every subject (pessimistic)"
    steady = {g: [t for h, t in later if h == g] for g in counts}
    mean = {g: sum(v) / len(v) for g, v in steady.items() if v}
    # What a worker's first subject costs beyond a later one of its group.
    startup = max(0.0, sum(t - mean.get(g, t) for g, t in first) / len(first))
    if not one_round:
        result["worker_startup_seconds"] = round(startup, 1)
    overall = sum(t for _, t in later) / len(later)  # for a group no later subject had
    result["steady_seconds_per_subject"] = {g: round(v, 1) for g, v in mean.items()}
    total = model_s + startup + sum(mean.get(g, overall) * n for g, n in counts.items()) / jobs
    result["full_cohort_seconds_extrapolated"] = round(total, 1)
    result["full_cohort_minutes_extrapolated"] = round(total / 60.0, 1)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-quick", action="store_true")
    parser.add_argument("--paper-rounds", type=int, default=2,
                        help="rounds of `jobs` 1 mm subjects (0: skip the paper preset)")
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    from data_pipelines.phantom import writer
    from qsnet_jax import benchmarking

    jobs = args.jobs or writer.available_cores()
    result = {"machine": benchmarking.machine(), "jobs": jobs}
    if not args.skip_quick:
        result.update(bench_quick(jobs))
        result["quick_target_seconds"] = 180
    if args.paper_rounds:
        result["paper"] = bench_paper(args.paper_rounds, jobs)
        result["paper_target_minutes"] = 30
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
