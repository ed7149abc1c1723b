"""Training throughput of a config's step on this machine, next to what the hardware and
PyTorch do with the same network. Prints JSON.

  python -m experiments.bench_train --config=configs/resunet.py      # 192x224, batch 8
  python -m experiments.bench_train --config=configs/resunet.py \
      --variants=default,model.conv_weight_grad=per_sample --torch_python=/path/venv/bin/python
  python -m experiments.bench_train --config=configs/resunet.py --torch_slices_per_s=2.17

Each entry of --variants is "default" or config overrides joined by "+" (e.g.
model.dtype=bfloat16+model.upsample=nearest_conv); all are timed in this one process, then
the PyTorch twin (benchmarks/torch_resunet_twin.py, the Res-UNet of configs/resunet.py) runs
in --torch_python, another interpreter that has torch; the project never imports torch.
The logic lives in qsnet_jax/benchmarking.py.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from qsnet_jax import benchmarking
from workflow import overrides

config_flags.DEFINE_config_file("config", "configs/default.py", "Training config file.")
flags.DEFINE_integer("height", 192, "Slice height (paper preset: 192).")
flags.DEFINE_integer("width", 224, "Slice width (paper preset: 224).")
flags.DEFINE_integer("batch_size", 8, "Global batch size.")
flags.DEFINE_integer("steps", 3, "Timed steps after one compile-and-warm-up step.")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square float32 matmul reference.")
flags.DEFINE_list("variants", ["default"], "Config variants to time, see the docstring.")
flags.DEFINE_float("torch_slices_per_s", 0.0, "A PyTorch figure measured elsewhere.")
flags.DEFINE_string("torch_python", "", "An interpreter with torch: run the twin in it.")
flags.DEFINE_string("torch_twin", os.path.join("benchmarks", "torch_resunet_twin.py"),
                    "The PyTorch twin script.")
flags.DEFINE_string("torch_variants", "eager,channels_last,compile", "Twin variants.")
FLAGS = flags.FLAGS


def apply_overrides(config, variant: str):
    """A copy of `config` with the "key=value+key=value" overrides of `variant`."""
    config = config.copy_and_resolve_references()
    for item in ([] if variant == "default" else variant.split("+")):
        overrides.apply_override(config, item)
    return config


def main(argv):
    config = cli.load_config(FLAGS, argv)

    size = {"height": FLAGS.height, "width": FLAGS.width, "batch_size": FLAGS.batch_size}
    configs = {variant: cli.run(apply_overrides, config, variant) for variant in FLAGS.variants}
    jax_records = []
    for variant, variant_config in configs.items():
        record = benchmarking.time_train_step(variant_config, steps=FLAGS.steps, **size)
        jax_records.append({"variant": f"jax_{variant}", **record})
    torch_records = []
    if FLAGS.torch_python:
        torch_records = benchmarking.run_torch_twin(
            FLAGS.torch_python, FLAGS.torch_twin, variants=FLAGS.torch_variants,
            steps=FLAGS.steps, upsample=config.model.upsample,
            in_channels=len(config.data.input_channels),
            out_channels=len(config.data.target_channels), **size)
    elif FLAGS.torch_slices_per_s > 0:
        torch_records = [{"variant": "torch_given", "slices_per_sec": FLAGS.torch_slices_per_s}]
    matmul_rate = benchmarking.matmul_flops_per_sec(FLAGS.matmul_size)
    for record in jax_records:
        record["share_of_matmul_rate"] = round(
            record["step_gflop_per_sec"] * 1e9 / matmul_rate, 3)
    print(json.dumps({"machine": benchmarking.machine(),
                      "jax": jax_records, "torch": torch_records,
                      f"matmul_{FLAGS.matmul_size}_gflop_per_sec": round(matmul_rate / 1e9, 1),
                      **benchmarking.comparison(jax_records, torch_records)}, indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser)
