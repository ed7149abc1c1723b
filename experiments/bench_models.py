"""Forward and forward+backward seconds per slice of each generator on this machine; prints
JSON.

  python -m experiments.bench_models [--models qsnet,resunet,pix2pix,swin,physics]
      [--batch 2 --height 192 --width 224 --repeats 3]

The default config's widths, 3 inputs -> 5 contrasts, float32. "forward" is the jitted
inference pass; "train" is the value and gradient of an L1 loss with respect to the
parameters (what a generator step costs without the optimizer and the discriminator).
Each timing is the median of `repeats` runs after one warm-up (compilation excluded). XLA CPU
step times vary about +-10% between runs here (DESIGN.md section 7): compare within a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from configs import default
from qsnet_jax import models


def _median_seconds(fn, repeats):
    jax.block_until_ready(fn())  # warm-up: compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name, *, batch, height, width, repeats):
    config = default.get_config()
    config.model.name = name
    module = models.build_generator(config.model, input_channels=config.data.input_channels,
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.GENERATORS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in models.GENERATORS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; known: {', '.join(models.GENERATORS)}")
    results = {"device": str(jax.devices()[0]), "batch": args.batch,
               "slice": [args.height, args.width], "models": {}}
    for name in names:
        results["models"][name] = bench_model(name, batch=args.batch, height=args.height,
                                              width=args.width, repeats=args.repeats)
        print(json.dumps({name: results["models"][name]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
