"""The phantom build benchmark (experiments.bench_phantom): its choice of subjects and the
extrapolation the README's paper-preset build time rests on, against hand computation."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from workflow import benchmarks


def test_extrapolation_is_model_plus_startup_plus_steady_time_over_jobs():
    first = [("healthy", 130.0), ("gbm", 110.0)]  # each worker's first subject
    later = [("healthy", 114.0), ("gbm", 97.0), ("healthy", 116.0), ("gbm", 99.0)]
    out = benchmarks.extrapolate_build(first, later, {"healthy": 38, "gbm": 28},
                                       model_seconds=5.0, jobs=2)
    # steady: healthy 115, gbm 98; start-up: mean of (130 - 115, 110 - 98) = 13.5
    assert out["steady_seconds_per_subject"] == {"healthy": 115.0, "gbm": 98.0}
    assert out["worker_startup_seconds"] == 13.5
    total = 5.0 + 13.5 + (115.0 * 38 + 98.0 * 28) / 2
    assert out["full_cohort_seconds_extrapolated"] == pytest.approx(total, abs=0.05)
    assert out["full_cohort_minutes_extrapolated"] == round(total / 60, 1)
    assert "note" not in out


def test_one_round_counts_the_startup_in_every_subject_and_says_so():
    first = [("healthy", 130.0), ("gbm", 110.0)]
    out = benchmarks.extrapolate_build(first, [], {"healthy": 3, "gbm": 1, "other": 2},
                                       model_seconds=0.0, jobs=1)
    # a group no subject had takes the mean of all, (130 + 110) / 2
    assert out["full_cohort_seconds_extrapolated"] == 130.0 * 3 + 110.0 + 120.0 * 2
    assert "pessimistic" in out["note"] and "worker_startup_seconds" not in out


def test_subjects_alternate_healthy_and_gbm_until_one_group_runs_out():
    specs = [SimpleNamespace(subject=f"h{i}", group="healthy") for i in range(3)] + \
            [SimpleNamespace(subject="g0", group="gbm")]
    chosen = benchmarks.alternating_specs(specs, 4)
    assert [s.subject for s in chosen] == ["h0", "g0", "h1", "h2"]


def test_bad_arguments_are_one_line_exit_2():
    done = subprocess.run([sys.executable, "-m", "experiments.bench_phantom", "--jobs", "0"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bench_phantom.py: error: --paper-rounds must be >= 0 and --jobs >= 1"]
