"""Training-step throughput: the compiled step timed on random batches, the same machine's
matmul rate, and the PyTorch twin of the network (benchmarks/torch_resunet_twin.py) run in
another interpreter for a side-by-side figure. The project never imports torch.

Used by `experiments/bench_train.py`; numbers and how to read them: docs/design.md section 7.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from qsnet_jax import models
from qsnet_jax.train import loop, optim
from qsnet_jax.train import mesh as mesh_lib
from qsnet_jax.train import steps as steps_lib
from qsnet_jax.train.state import init_train_state

# Instruction-set extensions that change what a CPU benchmark means (matmul and convolution
# kernels differ with them), in the spelling of /proc/cpuinfo's flags.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_from_cpuinfo(text: str) -> dict:
    """The first processor's ``model name`` and its ``_ISA_FLAGS`` from /proc/cpuinfo text."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"cpu": model, "isa": [flag for flag in _ISA_FLAGS if flag in flags]}


def machine() -> dict:
    """What a benchmark ran on: CPU model, ISA extensions, cores (the JSON's ``machine``), so
    that figures taken on different machines are not compared as if they were one."""
    description = {"cpu": platform.processor() or platform.machine(), "isa": []}
    try:
        with open("/proc/cpuinfo") as f:
            description.update({k: v for k, v in cpu_from_cpuinfo(f.read()).items() if v})
    except OSError:  # not Linux
        pass
    return {**description, "cores": os.cpu_count(), "arch": platform.machine()}


def flops_of(compiled) -> float:
    """FLOPs of a compiled program from XLA's cost analysis (nan when it has none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def matmul_flops_per_sec(size: int, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.dot)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def random_batch(config: ml_collections.ConfigDict, batch_size: int, height: int,
                 width: int) -> dict:
    channels_in = len(config.data.input_channels) * (2 * config.data.context_slices + 1)
    channels_out = len(config.data.target_channels)
    rng = np.random.default_rng(0)
    return {"inputs": rng.uniform(size=(batch_size, height, width, channels_in)
                                  ).astype(np.float32),
            "targets": rng.uniform(size=(batch_size, height, width, channels_out)
                                   ).astype(np.float32)}


def time_train_step(config: ml_collections.ConfigDict, *, height: int, width: int,
                    batch_size: int, steps: int) -> dict:
    """Compile the real training step (the one train_stage runs: generator and discriminator
    updates, EMA, NaN gate) and time `steps` calls after one warm-up call."""
    generator, discriminator = loop.build_models(config)
    batch = random_batch(config, batch_size, height, width)
    schedule = optim.make_lr_schedule(config.optim, 2e-4, 1000)
    gen_opt = optim.make_optimizer(config.optim, schedule)
    disc_opt = optim.make_optimizer(config.optim, schedule) if discriminator else None
    mesh = mesh_lib.make_mesh(config.mesh)
    init = lambda key: init_train_state(key, generator, discriminator, gen_opt, disc_opt,
                                        batch["inputs"][:1], batch["targets"][:1])
    key = jax.random.PRNGKey(0)
    shardings = mesh_lib.state_shardings(jax.eval_shape(init, key), mesh, config.mesh)
    state = mesh_lib.place(jax.device_get(jax.jit(init)(key)), shardings)
    step = mesh_lib.compile_train_step(
        steps_lib.make_train_step(config, generator, discriminator, gen_opt, disc_opt,
                                  schedule), shardings, mesh, steps_lib.TRAIN_BATCH_KEYS)
    global_batch = mesh_lib.global_batch(batch, mesh)

    start = time.perf_counter()
    compiled = step.lower(state, global_batch).compile()
    compile_seconds = time.perf_counter() - start
    step_flops = flops_of(compiled)
    state, metrics = compiled(state, global_batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, global_batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    summary = models.model_summary(generator, (1, height, width, batch["inputs"].shape[-1]))
    return {
        "model": config.model.name,
        "discriminator": config.discriminator.name if discriminator else "none",
        "dtype": config.model.dtype,
        "conv_weight_grad": config.model.get("conv_weight_grad", "xla"),
        "upsample": config.model.get("upsample", "transposed"),
        "slice": [height, width], "batch_size": batch_size, "devices": jax.device_count(),
        "generator_params": summary["params"],
        "compile_seconds": round(compile_seconds, 2),
        "step_seconds_median": round(seconds, 3), "step_seconds_all": [round(t, 3) for t in times],
        "slices_per_sec": round(batch_size / seconds, 3),
        "step_gflop": round(step_flops / 1e9, 1),
        "step_gflop_per_sec": round(step_flops / seconds / 1e9, 1),
        "generator_forward_gflop_per_slice": round(summary["flops_per_slice"] / 1e9, 2),
        "finite": bool(np.isfinite(float(metrics["generator_loss"]))),
    }


def run_torch_twin(torch_python: str, twin_script: str, *, variants: str, batch_size: int,
                   height: int, width: int, in_channels: int, out_channels: int,
                   steps: int, upsample: str = "transposed") -> list[dict]:
    """Run the PyTorch twin in `torch_python` (a separate interpreter with torch) and return
    its one record per variant. Raises RuntimeError with the twin's last output on failure."""
    command = [torch_python, twin_script, f"--variants={variants}",
               f"--batch_size={batch_size}", f"--height={height}", f"--width={width}",
               f"--in_channels={in_channels}", f"--out_channels={out_channels}",
               f"--steps={steps}", f"--upsample={upsample}"]
    return json_lines_of(command, what="the torch twin")


def json_lines_of(command, env=None, *, what: str = "") -> list[dict]:
    """The JSON lines a child process prints; RuntimeError with its last output when it
    fails (`what` names it in the message)."""
    done = subprocess.run(list(command), capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{what or 'a child'} failed ({' '.join(command)}):\n"
                           f"{done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def comparison(jax_records: list[dict], torch_records: list[dict]) -> dict:
    """Each JAX variant's slices/s as a ratio to the fastest torch variant."""
    if not torch_records:
        return {}
    best = max(torch_records, key=lambda r: r["slices_per_sec"])
    return {"best_torch_variant": best["variant"],
            "best_torch_slices_per_sec": best["slices_per_sec"],
            "ratio_to_best_torch": {r["variant"]: round(r["slices_per_sec"]
                                                        / best["slices_per_sec"], 3)
                                    for r in jax_records + torch_records}}
