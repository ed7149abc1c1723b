"""Phantom cohort build times; prints JSON.

    python -m experiments.bench_phantom [--skip-quick] [--paper-subjects 2]

quick: the whole preset built with the CLI's code path (seconds, measured).
paper: the MRF model (dictionary + tables) and `--paper-subjects` subjects (one healthy, one
GBM) simulated and written at 1 mm; the full cohort time is *extrapolated* from them as
model + mean(subject) x number of subjects (healthy and GBM weighted by their counts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def bench_quick():
    from data_pipelines.phantom import build_cohort

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_cohort(os.path.join(tmp, "quick"), "quick", 0, log=lambda line: None)
        return time.perf_counter() - start


def bench_paper(num_subjects: int):
    from data_pipelines.phantom import presets, simulate, writer

    preset = presets.PRESETS["paper"]
    simulate.mrf_model.cache_clear()  # quick shares the MRF model: time it afresh
    start = time.perf_counter()
    model = simulate.model_for(preset)
    model_s = time.perf_counter() - start
    specs = writer.subject_specs(preset, 0)
    chosen = [next(s for s in specs if s.group == "healthy"),
              next(s for s in specs if s.group == "gbm")][:num_subjects]
    per_group = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in chosen:
            t0 = time.perf_counter()
            volumes = simulate.simulate_subject(spec, preset, model=model)
            writer.write_subject(tmp, spec, volumes)
            per_group[spec.group] = time.perf_counter() - t0
            shape = volumes["t1map"].shape
    counts = {"healthy": 0, "gbm": 0}
    for _, group, _, n in preset.splits:
        counts[group] += n
    mean = sum(per_group.values()) / len(per_group)
    total = model_s + sum(per_group.get(g, mean) * n for g, n in counts.items())
    return {"model_seconds": round(model_s, 1),
            "seconds_per_subject_measured": {g: round(v, 1) for g, v in per_group.items()},
            "subject_shape": list(shape), "subjects": counts,
            "full_cohort_seconds_extrapolated": round(total, 1),
            "full_cohort_minutes_extrapolated": round(total / 60.0, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-quick", action="store_true")
    parser.add_argument("--paper-subjects", type=int, default=2)
    args = parser.parse_args()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared)"}
    if not args.skip_quick:
        result["quick_build_seconds_measured"] = round(bench_quick(), 1)
        result["quick_target_seconds"] = 180
    if args.paper_subjects:
        result["paper"] = bench_paper(args.paper_subjects)
        result["paper_target_minutes"] = 45
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
