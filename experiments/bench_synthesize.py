"""Seconds to synthesize the five contrasts of one paper-size volume, printed as JSON.

  python -m experiments.bench_synthesize [--depth 160] [--batch-size 16] [--config default]

Volume 192 x 224 x depth slices, 3 quantitative inputs, the default QS-Net config with
RANDOM weights (timing does not depend on the weights' values), through
qsnet_jax.inference.synthesize_volume exactly as experiments.synthesize runs it. Reports the
compile (first call) and the steady-state whole-volume time, plus SSIM/MAE/PSNR scoring time
of the five contrasts (qsnet_jax.metrics.score_volume).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from qsnet_jax import inference, metrics, models


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=160, help="axial slices")
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=0, help="default: config.eval")
    parser.add_argument("--config", default="default", help="a module in configs/")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    config = importlib.import_module(f"configs.{args.config}").get_config()
    inputs = tuple(config.data.input_channels)
    targets = tuple(config.data.target_channels)
    context = int(config.data.context_slices)
    batch_size = args.batch_size or int(config.eval.batch_size)
    module = models.build_generator(config.model, input_channels=inputs,
                                    target_channels=targets, context_slices=context)
    shape = (args.height, args.width)
    t0 = time.perf_counter()
    variables = jax.jit(lambda key: module.init(
        key, jnp.zeros((1, *shape, len(inputs) * (2 * context + 1))), train=False))(
        jax.random.PRNGKey(0))
    init_s = time.perf_counter() - t0
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))

    rng = np.random.default_rng(0)
    volume = rng.random((*shape, args.depth, len(inputs)), dtype=np.float32)
    predict_fn = inference.make_predict_fn(module, variables)
    t0 = time.perf_counter()
    np.asarray(predict_fn(inference.stack_context(volume, np.arange(batch_size), context)))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
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
        "model": config.model.name, "config": args.config, "params": num_params,
        "volume": [*shape, args.depth], "inputs": list(inputs), "targets": list(targets),
        "context_slices": context, "batch_size": batch_size,
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
        "init_seconds": round(init_s, 2), "compile_seconds": round(compile_s, 2),
        "synthesis_seconds": round(seconds, 2), "all_runs_seconds": [round(t, 2) for t in times],
        "slices_per_second": round(args.depth / seconds, 3),
        "scoring_seconds_5_contrasts": round(score_s, 2),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
