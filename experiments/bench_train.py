"""Training throughput of QS-Net on this machine, next to what the hardware can do.

  python -m experiments.bench_train                       # paper slice 192x224, batch 8
  python -m experiments.bench_train --steps=2 --height=96 --width=112

Times the real compiled training step (generator + discriminator updates, EMA, NaN gate) on
random batches (the input pipeline is not part of it), reads the step's FLOPs from XLA's cost
analysis of the compiled program, and in the same run times a float32 2048x2048 matmul; the
ratio of the two FLOP rates says how close to the hardware the step runs. Prints JSON.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

flags.DEFINE_string("config", "configs/default.py", "Training config file (model, loss, optim).")
flags.DEFINE_integer("height", 192, "Slice height (paper preset: 192).")
flags.DEFINE_integer("width", 224, "Slice width (paper preset: 224).")
flags.DEFINE_integer("batch_size", 8, "Global batch size.")
flags.DEFINE_integer("steps", 3, "Timed steps after one compile-and-warm-up step.")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square float32 matmul reference.")
FLAGS = flags.FLAGS


def _flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def matmul_flops_per_sec(size: int, repeats: int = 10) -> float:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

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


def benchmark(config, *, height, width, batch_size, steps, matmul_size) -> dict:
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from qsnet_jax import models  # noqa: PLC0415
    from qsnet_jax.train import loop, optim  # noqa: PLC0415
    from qsnet_jax.train import mesh as mesh_lib  # noqa: PLC0415
    from qsnet_jax.train import steps as steps_lib  # noqa: PLC0415
    from qsnet_jax.train.state import init_train_state  # noqa: PLC0415

    generator, discriminator = loop.build_models(config)
    channels_in = len(config.data.input_channels) * (2 * config.data.context_slices + 1)
    channels_out = len(config.data.target_channels)
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.uniform(size=(batch_size, height, width, channels_in)),
             "targets": rng.uniform(size=(batch_size, height, width, channels_out))}
    batch = {k: v.astype(np.float32) for k, v in batch.items()}
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
    step_flops = _flops_of(compiled)
    state, metrics = compiled(state, global_batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, global_batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    matmul_rate = matmul_flops_per_sec(matmul_size)
    summary = models.model_summary(generator, (1, height, width, channels_in))
    return {
        "model": config.model.name,
        "discriminator": config.discriminator.name if discriminator else "none",
        "slice": [height, width], "batch_size": batch_size, "devices": jax.device_count(),
        "generator_params": summary["params"],
        "compile_seconds": round(compile_seconds, 2),
        "step_seconds_median": round(seconds, 3), "step_seconds_all": [round(t, 3) for t in times],
        "slices_per_sec": round(batch_size / seconds, 3),
        "step_gflop": round(step_flops / 1e9, 1),
        "step_gflop_per_sec": round(step_flops / seconds / 1e9, 1),
        f"matmul_{matmul_size}_gflop_per_sec": round(matmul_rate / 1e9, 1),
        "share_of_matmul_rate": round(step_flops / seconds / matmul_rate, 3),
        "generator_forward_gflop_per_slice": round(summary["flops_per_slice"] / 1e9, 2),
        "finite": bool(np.isfinite(float(metrics["generator_loss"]))),
    }


def main(argv):
    del argv
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("bench_config", FLAGS.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    result = benchmark(config, height=FLAGS.height, width=FLAGS.width,
                       batch_size=FLAGS.batch_size, steps=FLAGS.steps,
                       matmul_size=FLAGS.matmul_size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
