"""The measurements behind the `experiments.bench_*` commands, as functions that return
dicts (the commands print them as JSON). Timings on a shared machine vary: compare within one
run (docs/design.md section 7).
"""

from __future__ import annotations

import csv
import io as text_io
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np

from data_pipelines import input_pipeline, tfds_builder
from data_pipelines.phantom import presets, simulate, writer
from qsnet_jax import benchmarking, inference, io, metrics, models, xla_cpu
from qsnet_jax.models import layers
from qsnet_jax.physics.channels import ALL_CHANNELS
from qsnet_jax.physics.dictionary import build_dictionary, dictionary_grid, match
from qsnet_jax.physics.epg import exact_num_states, simulate_fisp, states_needed
from qsnet_jax.physics.mrf import fisp_schedule

# ------------------------------------------------------------------ single convolutions

# The distinct convolutions of a paper-size training step at 192x224: the Res-UNet's 3x3
# stride-1 layers at each level (base width 32), then the PatchGAN's 4x4 stride-2 layers
# (base width 64; 3 inputs + 5 contrasts enter the first).
CONV_LAYERS = ("192x224x32-32k3s1", "96x112x64-64k3s1", "48x56x128-128k3s1",
               "24x28x256-256k3s1", "12x14x512-512k3s1",
               "192x224x8-64k4s2", "96x112x64-128k4s2", "48x56x128-256k4s2")
CONV_LAYER_PATTERN = re.compile(r"(\d+)x(\d+)x(\d+)-(\d+)k(\d+)s([12])")


def parse_conv_layer(spec: str) -> dict:
    """``"HxWxCin-CoutkKsS"`` -> its numbers; padding as the models pad: "same" for odd
    kernels, k/2 - 1 per side for even ones (the PatchGAN's 4x4, stride 2: 1)."""
    match = CONV_LAYER_PATTERN.fullmatch(spec)
    if not match:
        raise ValueError(f"conv layer {spec!r}: write HxWxCin-CoutkKsS, e.g. 192x224x32-32k3s1")
    height, width, cin, cout, kernel, stride = (int(v) for v in match.groups())
    pad = kernel // 2 if kernel % 2 else kernel // 2 - 1
    return {"height": height, "width": width, "in": cin, "out": cout, "kernel": kernel,
            "stride": stride, "pad": pad}


def conv_gflop(layer: dict, batch: int) -> float:
    """Multiply-adds x 2 of the forward pass (each gradient costs the same nominally)."""
    out_h = (layer["height"] + 2 * layer["pad"] - layer["kernel"]) // layer["stride"] + 1
    out_w = (layer["width"] + 2 * layer["pad"] - layer["kernel"]) // layer["stride"] + 1
    return 2.0 * batch * out_h * out_w * layer["kernel"] ** 2 * layer["in"] * layer["out"] / 1e9


def time_conv_layer(spec: str, *, batch: int, repeats: int) -> dict:
    """Forward, input gradient and weight gradient of one convolution as the models run it
    (``layers.conv2d``), float32 NHWC, medians of ``repeats`` after a warm-up; for stride 2
    also XLA's own input gradient (the one ``layers.conv2d`` replaces on the CPU). Records
    which library XLA gave the convolution (YNNPACK fusions are named ``__ynn_fusion``)."""
    layer = parse_conv_layer(spec)
    strides = (layer["stride"],) * 2
    padding = ((layer["pad"], layer["pad"]),) * 2
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (batch, layer["height"], layer["width"], layer["in"]))
    w = jax.random.normal(keys[1], (layer["kernel"],) * 2 + (layer["in"], layer["out"])) * 0.1
    conv = lambda a, b: layers.conv2d(a, b, strides, padding)
    xla_conv = lambda a, b: jax.lax.conv_general_dilated(
        a, b, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    g = jax.random.normal(keys[2], jax.eval_shape(conv, x, w).shape)
    passes = {
        "forward": jax.jit(conv),
        "input_grad": jax.jit(lambda a, b, c: jax.vjp(lambda a_: conv(a_, b), a)[1](c)[0]),
        "weight_grad": jax.jit(lambda a, b, c: jax.vjp(lambda b_: conv(a, b_), b)[1](c)[0]),
    }
    if layer["stride"] != 1:
        passes["input_grad_xla"] = jax.jit(
            lambda a, b, c: jax.vjp(lambda a_: xla_conv(a_, b), a)[1](c)[0])
    gflop = conv_gflop(layer, batch)
    record = {"layer": spec, "batch": batch, "gflop": round(gflop, 3),
              "conv_library": ("ynnpack" if "__ynn_fusion" in
                               passes["forward"].lower(x, w).compile().as_text() else "eigen")}
    for name, fn in passes.items():
        args = (x, w) if name == "forward" else (x, w, g)
        seconds = _median_seconds(lambda fn=fn, args=args: fn(*args), repeats)
        record[name] = {"ms": round(seconds * 1e3, 2),
                        # 3 significant digits: a small layer's rate can be < 0.05
                        "gflop_per_sec": float(f"{gflop / seconds:.3g}")}
    return record


# ------------------------------------------------------------------ generators


# library -> the YNNPACK fusion option's value: YNNPACK keeps the matrix products in both;
# "eigen" is what the project sets, "ynnpack" jaxlib's default
CONV_LIBRARY_OPTIONS = {"eigen": xla_cpu.DEFAULT_OPTIONS[xla_cpu.YNN_FUSION_OPTION],
                        "ynnpack": "individual_dot,individual_convolution"}
TORCH_CONV_SCRIPT = os.path.join("benchmarks", "torch_conv_layers.py")


def conv_library_environment(library: str) -> dict:
    """This process's environment with XLA_FLAGS choosing ``library`` for convolutions."""
    return dict(os.environ, XLA_FLAGS=xla_cpu.with_option(
        os.environ.get("XLA_FLAGS", ""), xla_cpu.YNN_FUSION_OPTION,
        CONV_LIBRARY_OPTIONS[library]))


def bench_conv_libraries(layers: Sequence[str], *, batch: int, repeats: int,
                         libraries: Sequence[str], torch_python: str = "") -> dict:
    """Each layer timed by each XLA convolution library, one child process per library
    (XLA reads its options once per process: ``experiments.bench_conv --child``), then by
    PyTorch in `torch_python` if given; with the GFLOP/s side by side."""
    common = [f"--layers={','.join(layers)}", f"--batch={batch}", f"--repeats={repeats}"]
    result = {"batch": batch, "repeats": repeats, "layers": {spec: {} for spec in layers}}
    for library in libraries:
        for record in benchmarking.json_lines_of(
                [sys.executable, "-m", "experiments.bench_conv", "--child", *common],
                env=conv_library_environment(library), what=f"the {library} timing"):
            result["layers"][record["layer"]][library] = record
    if torch_python:
        for record in benchmarking.json_lines_of([torch_python, TORCH_CONV_SCRIPT, *common],
                                                 what="the PyTorch layers"):
            result["layers"][record["layer"]][f"torch_{record['memory_format']}"] = record
    result["gflop_per_sec"] = conv_summary_rows(result["layers"])
    return result


def conv_summary_rows(by_layer: dict) -> dict:
    """``{layer: {pass: {library: GFLOP/s}}}``: the numbers to read side by side."""
    rows = {}
    for spec, records in by_layer.items():
        passes = {}
        for library, record in records.items():
            for name in ("forward", "input_grad", "input_grad_xla", "weight_grad"):
                if name in record:
                    passes.setdefault(name, {})[library] = record[name]["gflop_per_sec"]
        rows[spec] = passes
    return rows


def _median_seconds(fn, repeats):
    jax.block_until_ready(fn())  # warm-up: compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(config, name, *, batch, height, width, repeats):
    """Forward and forward+backward seconds per slice of generator `name` at the widths of
    `config` (3 inputs -> 5 contrasts, float32), medians of `repeats` after a warm-up."""
    model_config = config.model.copy_and_resolve_references()
    model_config.name = name
    module = models.build_generator(model_config, input_channels=config.data.input_channels,
                                    target_channels=config.data.target_channels)
    key = jax.random.key(0)
    x = jax.random.uniform(key, (batch, height, width, len(config.data.input_channels)))
    target = jax.random.uniform(key, (batch, height, width, len(config.data.target_channels)))
    variables = jax.jit(module.init)(key, x)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}

    forward = jax.jit(lambda p, x: module.apply({"params": p, **state}, x).prediction)

    def loss(p, x):
        out, _ = module.apply({"params": p, **state}, x, train=True,
                              rngs={"dropout": key}, mutable=list(state))
        return jnp.abs(out.prediction - target).mean()

    train = jax.jit(jax.value_and_grad(loss))
    start = time.perf_counter()
    forward_s = _median_seconds(lambda: forward(params, x), repeats)
    train_s = _median_seconds(lambda: train(params, x), repeats)
    return {
        "params": models.count_params(variables),
        "forward_s_per_slice": forward_s / batch,
        "train_s_per_slice": train_s / batch,
        "train_slices_per_s": batch / train_s,
        "wall_s_incl_compile": time.perf_counter() - start,
    }


# ------------------------------------------------------------------ whole-volume synthesis


def bench_synthesis(config, config_name: str, *, depth: int, height: int, width: int,
                    batch_size: int = 0, repeats: int = 1) -> dict:
    """Seconds to synthesize every target contrast of one volume with random weights
    (timing does not depend on their values), and to score it."""
    inputs = tuple(config.data.input_channels)
    targets = tuple(config.data.target_channels)
    context = int(config.data.context_slices)
    batch_size = batch_size or int(config.eval.batch_size)
    module = models.build_generator(config.model, input_channels=inputs,
                                    target_channels=targets, context_slices=context)
    shape = (height, width)
    t0 = time.perf_counter()
    variables = jax.jit(lambda key: module.init(
        key, jnp.zeros((1, *shape, len(inputs) * (2 * context + 1))), train=False))(
        jax.random.PRNGKey(0))
    init_s = time.perf_counter() - t0
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))

    rng = np.random.default_rng(0)
    volume = rng.random((*shape, depth, len(inputs)), dtype=np.float32)
    predict_fn = inference.make_predict_fn(module, variables)
    t0 = time.perf_counter()
    np.asarray(predict_fn(inference.stack_context(volume, np.arange(batch_size), context)))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        prediction = inference.synthesize_volume(predict_fn, volume, batch_size=batch_size,
                                                 context_slices=context)
        times.append(time.perf_counter() - t0)
    seconds = min(times)

    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in volume.shape[:3]], indexing="ij")
    brain = sum((g / 0.9) ** 2 for g in grid) < 1  # an ellipsoid "brain"
    t0 = time.perf_counter()
    metrics.score_volume(prediction, np.clip(prediction + 0.01, 0, 1), brain,
                         channel_names=targets)
    score_s = time.perf_counter() - t0
    result = {
        "what": "whole-volume synthesis of all target contrasts, random weights",
        "model": config.model.name, "config": config_name, "params": num_params,
        "volume": [*shape, depth], "inputs": list(inputs), "targets": list(targets),
        "context_slices": context, "batch_size": batch_size,
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
        "init_seconds": round(init_s, 2), "compile_seconds": round(compile_s, 2),
        "synthesis_seconds": round(seconds, 2), "all_runs_seconds": [round(t, 2) for t in times],
        "slices_per_second": round(depth / seconds, 3),
        "scoring_seconds_5_contrasts": round(score_s, 2),
    }
    return result


# ------------------------------------------------------------------ MRF physics


def numpy_epg(schedule, t1_ms, t2_ms):
    """Reference float64 complex EPG (RF about x), vectorized over entries: [M, N], with
    every state that can reach the readout (N // 2 + 1)."""
    num_states = exact_num_states(schedule.num_trs)
    fp = np.zeros((t1_ms.size, num_states), complex)
    fm, z = fp.copy(), np.zeros_like(fp)
    e1 = np.exp(-schedule.inversion_delay_ms / t1_ms)
    z[:, 0] = -schedule.inversion_efficiency * e1 + 1 - e1
    out = []
    for flip, tr in zip(np.deg2rad(schedule.flip_deg.astype(float)), schedule.tr_ms,
                        strict=True):
        c2, s2, s = np.cos(flip / 2) ** 2, np.sin(flip / 2) ** 2, np.sin(flip)
        fp, fm, z = (c2 * fp + s2 * fm - 1j * s * z, s2 * fp + c2 * fm + 1j * s * z,
                     -0.5j * s * fp + 0.5j * s * fm + np.cos(flip) * z)
        out.append((1j * fp[:, 0] * np.exp(-schedule.te_ms / t2_ms)).real)
        e1, e2 = np.exp(-tr / t1_ms)[:, None], np.exp(-tr / t2_ms)[:, None]
        fp, fm, z = fp * e2, fm * e2, z * e1
        z[:, 0] += 1 - e1[:, 0]
        fp = np.concatenate([np.conj(fm[:, 1:2]), fp[:, :-1]], axis=1)
        fm = np.concatenate([fm[:, 1:], np.zeros_like(fm[:, :1])], axis=1)
        fm[:, 0] = np.conj(fp[:, 0])
    return np.stack(out, axis=1)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def bench_physics(*, num_trs: int, voxels: int) -> dict:
    """Dictionary build, SVD energy per rank, JAX vs NumPy EPG, matching throughput."""
    schedule = fisp_schedule(num_trs)
    t1, t2, b1 = dictionary_grid()
    _, first = timed(build_dictionary, schedule, t1, t2, b1)  # includes compilation
    dictionary, build = timed(build_dictionary, schedule, t1, t2, b1, rank=12)
    # Energy per rank from the rank-12 basis: cumulative share of the unit dictionary.
    fingerprints = np.asarray(simulate_fisp(schedule, t1, t2, b1))
    unit = fingerprints / np.linalg.norm(fingerprints, axis=1, keepdims=True)
    projected = unit @ dictionary.basis
    total = float(np.sum(unit.astype(np.float64) ** 2))
    energy = {}
    for rank in (6, 8, 10, 12):
        energy[rank] = float(np.sum(projected[:, :rank].astype(np.float64) ** 2) / total)

    rng = np.random.default_rng(0)
    pick = rng.choice(len(t1), size=256, replace=False)
    reference = numpy_epg(schedule, t1[pick].astype(float), t2[pick].astype(float))
    epg_error = float(np.abs(reference - fingerprints[pick]).max())

    # Matching: noisy compressed fingerprints of random entries (PD 0.5-1, frame SNR 4).
    rows = rng.integers(0, len(t1), size=4096)
    clean = fingerprints[rows] * rng.uniform(0.5, 1.0, size=(4096, 1))
    sigma = np.sqrt(np.mean(clean ** 2, axis=1, keepdims=True)) / 4.0
    noisy = clean + rng.normal(size=clean.shape) * sigma
    _, raw_seconds = timed(match, dictionary, noisy)  # uncompressed input, incl. compile
    _, raw_seconds = timed(match, dictionary, noisy)
    compressed = np.tile(dictionary.compress(noisy), (voxels // 4096, 1))
    match(dictionary, compressed[:65536])  # compile
    match(dictionary, compressed[:65536], refine=False)
    _, grid_seconds = timed(match, dictionary, compressed, refine=False)
    maps, seconds = timed(match, dictionary, compressed)
    t1_error = np.median(np.abs(maps["t1_ms"][:4096] / t1[rows] - 1))
    return {
        "device": str(jax.devices()[0]), "num_trs": schedule.num_trs,
        "dictionary_entries": int(len(t1)),
        "epg_states_per_entry": {str(k): int(v) for k, v in zip(
            *np.unique(states_needed(t2, schedule.num_trs), return_counts=True), strict=True)},
        "build_seconds_first_call": round(first, 2), "build_seconds": round(build, 2),
        "svd_energy_kept_by_rank": {str(k): round(v, 7) for k, v in energy.items()},
        "jax_vs_numpy_epg_max_abs_diff": epg_error,
        "match_voxels_per_second_compressed": round(len(compressed) / seconds),
        "match_voxels_per_second_compressed_grid_only": round(len(compressed) / grid_seconds),
        "match_voxels_per_second_uncompressed": round(len(noisy) / raw_seconds),
        "match_median_t1_error_frame_snr4": round(float(t1_error), 4),
    }


# ------------------------------------------------------------------ input pipeline


RANGES = {"t1map": (700, 4200), "t2map": (50, 2000), "pdmap": (0.6, 1.0)}


def write_synthetic_cohort(root, *, subjects=3, shape=(192, 224, 150), seed=0):
    """Random values inside an ellipsoidal brain, every channel, uncompressed NIfTI."""
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    grid = np.indices(shape, dtype=np.float32)
    center = (np.array(shape, np.float32) - 1) / 2
    radii = np.array(shape, np.float32) * np.array([0.4, 0.42, 0.45])
    brain = (((grid - center[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0)
    brain = (brain < 1).astype(np.uint8)
    rows = []
    with io.staged_dir(root, if_exists="replace") as staging:
        for s in range(subjects):
            sid = f"bench{s:02d}"
            os.makedirs(os.path.join(staging, sid), exist_ok=True)
            row = [sid, "healthy", "A", "healthy_train"]
            for c in ALL_CHANNELS:
                lo, hi = RANGES.get(c, (0.05, 1.0))
                vol = np.where(brain, rng.uniform(lo, hi, shape), 0).astype(np.float32)
                nib.save(nib.Nifti1Image(vol, affine), os.path.join(staging, sid, f"{c}.nii"))
                row.append(f"{sid}/{c}.nii")
            nib.save(nib.Nifti1Image(brain, affine),
                     os.path.join(staging, sid, "brain_mask.nii"))
            rows.append(row + [f"{sid}/brain_mask.nii", ""])
        buffer = text_io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(
            [["subject", "group", "site", "split", *ALL_CHANNELS, "brain_mask", "labels"],
             *rows])
        io.write_text(os.path.join(staging, "manifest.csv"), buffer.getvalue())


def time_train(data_config, cohort, split, *, batch_size, context, steps, warmup):
    cfg = data_config.copy_and_resolve_references()
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


def bench_pipeline(data_config, args) -> dict:
    """Prepare a cohort (a synthetic one when args.cohort is empty) and time the training
    iterator for 2.5D context 0 and 1."""
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
        runs = [time_train(data_config, cohort, args.split, batch_size=args.batch_size, context=k,
                           steps=args.steps, warmup=3) for k in (0, 1)]
        result["train"] = runs
        result["required_slices_per_s"] = 5 * args.step_slices_per_s
        result["meets_5x"] = all(r["slices_per_s"] >= 5 * args.step_slices_per_s for r in runs)
        result["cpu_count"] = os.cpu_count()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


# ------------------------------------------------------------------ phantom cohort builds

PHANTOM_TARGETS = {"quick_seconds": 180, "paper_minutes": 30}  # issue 18's build times


def bench_phantom_quick(jobs: int) -> dict:
    """The whole quick preset built with the CLI's code path in `jobs` workers (measured)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        seconds = writer.build_into(tmp, presets.PRESETS["quick"], 0, jobs=jobs,
                                    log=lambda line: None)
        total = time.perf_counter() - start
    return {"quick_build_seconds_measured": round(total, 1),
            "quick_seconds_per_subject_measured": {k: round(v, 1) for k, v in
                                                   seconds.items()},
            "quick_target_seconds": PHANTOM_TARGETS["quick_seconds"]}


def alternating_specs(specs, count: int) -> list:
    """`count` subjects, healthy and GBM alternating (fewer if the preset runs out)."""
    groups = {"healthy": [s for s in specs if s.group == "healthy"],
              "gbm": [s for s in specs if s.group == "gbm"]}
    chosen = []
    for i in range(count):
        pool = groups["healthy" if i % 2 == 0 else "gbm"] or groups["healthy"] or groups["gbm"]
        if pool:
            chosen.append(pool.pop(0))
    return chosen


def extrapolate_build(first, later, counts, *, model_seconds: float, jobs: int) -> dict:
    """The full cohort's build time on `jobs` cores from measured subjects.

    ``first``: (group, seconds) of each worker's first subject, which also pays the worker's
    one-time start-up; ``later``: (group, seconds) of subjects built on warm workers (empty:
    the first ones stand in, start-up counted in every subject, pessimistic); ``counts``:
    ``{group: subjects in the cohort}``. Estimate: model + start-up + sum over groups of
    steady(group) x count(group) / jobs, steady(group) the mean later time of the group (the
    mean of all later subjects for a group none of them had), start-up the mean excess of a
    first subject over its group's steady time (>= 0).
    """
    result = {}
    if not later:
        later = first
        result["note"] = "one round: worker start-up counted in every subject (pessimistic)"
    steady = {g: [t for h, t in later if h == g] for g in counts}
    mean = {g: sum(v) / len(v) for g, v in steady.items() if v}
    startup = 0.0
    if "note" not in result:
        startup = max(0.0, sum(t - mean.get(g, t) for g, t in first) / len(first))
        result["worker_startup_seconds"] = round(startup, 1)
    overall = sum(t for _, t in later) / len(later)
    total = model_seconds + startup + sum(mean.get(g, overall) * n
                                          for g, n in counts.items()) / jobs
    result["steady_seconds_per_subject"] = {g: round(v, 1) for g, v in mean.items()}
    result["full_cohort_seconds_extrapolated"] = round(total, 1)
    result["full_cohort_minutes_extrapolated"] = round(total / 60.0, 1)
    return result


def bench_phantom_paper(rounds: int, jobs: int) -> dict:
    """The paper preset: the MRF model (timed), then `rounds` rounds of `jobs` 1 mm subjects
    (healthy and GBM alternating) built side by side with the CLI's code path, so every time
    is measured under a real build's load; the full cohort extrapolated
    (`extrapolate_build`)."""
    preset = presets.PRESETS["paper"]
    simulate.mrf_model.cache_clear()  # quick shares the MRF model: time it afresh
    start = time.perf_counter()
    simulate.model_for(preset)  # timed here; build_into below reuses the cached model
    model_s = time.perf_counter() - start
    chosen = alternating_specs(writer.subject_specs(preset, 0), rounds * jobs)
    with tempfile.TemporaryDirectory() as tmp:
        # Workers take the subjects in order, one at a time, and a subject takes minutes, so
        # the first `jobs` subjects land one per fresh worker and the rest on warm ones.
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
    return {"model_seconds": round(model_s, 1), "jobs": jobs, "subject_shape": list(shape),
            "subjects": counts, "built": len(chosen),
            "build_wall_seconds_measured": round(build_s, 1),
            "first_subject_per_worker_seconds": [[g, round(t, 1)] for g, t in first],
            **extrapolate_build(first, later, counts, model_seconds=model_s, jobs=jobs),
            "paper_target_minutes": PHANTOM_TARGETS["paper_minutes"]}
