"""Single convolutions, layer by layer: forward, input gradient and weight gradient in GFLOP/s
with XLA's Eigen convolutions (the project's choice, qsnet_jax/xla_cpu.py), with YNNPACK's
(jaxlib's default) and, given an interpreter with torch, PyTorch's. Prints JSON.

  python -m experiments.bench_conv                                   # the 8 default layers
  python -m experiments.bench_conv --layers=192x224x32-32k3s1 --libraries=eigen,ynnpack \
      --torch_python=/path/venv/bin/python

A layer is HxWxCin-CoutkKsS (workflow.benchmarks.CONV_LAYERS: a paper-size step's Res-UNet
and PatchGAN layers). XLA reads its options once per process, so each library is timed in a
child process of its own, one after the other; PyTorch runs benchmarks/torch_conv_layers.py
in --torch_python (eager, NCHW and channels_last). Stride-2 layers also time XLA's own input
gradient, the one the project replaces by space-to-depth on the CPU. The parent process
imports JAX but never starts its backend. Measure on a quiet machine and compare within one
run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence

from experiments import cli
from qsnet_jax import xla_cpu
from workflow import benchmarks
from workflow.errors import UserError

# library -> the YNNPACK fusion option's value: YNNPACK keeps the matrix products in both;
# "eigen" is what the project sets, "ynnpack" jaxlib's default
LIBRARY_OPTIONS = {"eigen": xla_cpu.DEFAULT_OPTIONS[xla_cpu.YNN_FUSION_OPTION],
                   "ynnpack": "individual_dot,individual_convolution"}
TORCH_SCRIPT = os.path.join("benchmarks", "torch_conv_layers.py")


def build_parser():
    parser = cli.OneLineArgumentParser(prog="python -m experiments.bench_conv",
                                       description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=",".join(benchmarks.CONV_LAYERS),
                        help="comma-separated HxWxCin-CoutkKsS")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--libraries", default="eigen,ynnpack",
                        help=f"XLA convolution libraries to time: {', '.join(LIBRARY_OPTIONS)}")
    parser.add_argument("--torch_python", default="", help="an interpreter with torch")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def child_environment(library: str) -> dict:
    """This process's environment with XLA_FLAGS choosing ``library`` for convolutions."""
    return dict(os.environ, XLA_FLAGS=xla_cpu.with_option(
        os.environ.get("XLA_FLAGS", ""), xla_cpu.YNN_FUSION_OPTION, LIBRARY_OPTIONS[library]))


def run_lines(command: Sequence[str], env=None) -> list[dict]:
    """The JSON lines a child prints; RuntimeError with its last output when it fails."""
    done = subprocess.run(list(command), capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def check_layers(layers: Sequence[str]) -> None:
    for spec in layers:
        try:
            benchmarks.parse_conv_layer(spec)
        except ValueError as error:
            raise UserError(str(error)) from None


def main(argv: Sequence[str] | None = None):
    args = build_parser().parse_args(argv)
    layers = [spec for spec in args.layers.split(",") if spec]
    cli.run(check_layers, layers)
    if args.child:  # one library, this process (its XLA_FLAGS chose it): a line per layer
        for spec in layers:
            print(json.dumps(benchmarks.time_conv_layer(spec, batch=args.batch,
                                                        repeats=args.repeats)), flush=True)
        return None
    libraries = [name for name in args.libraries.split(",") if name]
    unknown = sorted(set(libraries) - set(LIBRARY_OPTIONS))
    if unknown:
        cli.fail(f"--libraries: unknown {unknown}; known: {list(LIBRARY_OPTIONS)}")
    common = [f"--layers={','.join(layers)}", f"--batch={args.batch}",
              f"--repeats={args.repeats}"]
    result = {"batch": args.batch, "repeats": args.repeats, "layers": {s: {} for s in layers}}
    for library in libraries:
        for record in run_lines([sys.executable, "-m", "experiments.bench_conv", "--child",
                                 *common], env=child_environment(library)):
            result["layers"][record["layer"]][library] = record
    if args.torch_python:
        for record in run_lines([args.torch_python, TORCH_SCRIPT, *common]):
            result["layers"][record["layer"]][f"torch_{record['memory_format']}"] = record
    result["gflop_per_sec"] = summary_rows(result["layers"])
    print(json.dumps(result, indent=2))
    return result


def summary_rows(by_layer: dict) -> dict:
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


if __name__ == "__main__":
    main()
