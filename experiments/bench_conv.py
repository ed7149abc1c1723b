"""Single convolutions, layer by layer: forward, input gradient and weight gradient in GFLOP/s
with XLA's Eigen convolutions (the project's choice, qsnet_jax/xla_cpu.py), with YNNPACK's
(jaxlib's default) and, given an interpreter with torch, PyTorch's. Prints JSON.

  python -m experiments.bench_conv                                   # the 8 default layers
  python -m experiments.bench_conv --layers=192x224x32-32k3s1 --libraries=eigen,ynnpack \
      --torch_python=/path/venv/bin/python

A layer is HxWxCin-CoutkKsS (workflow.benchmarks.CONV_LAYERS: a paper-size step's Res-UNet
and PatchGAN layers). XLA reads its options once per process, so each library is timed in a
child process of its own, one after the other; PyTorch runs benchmarks/torch_conv_layers.py
in --torch_python (eager, NCHW and channels_last); workflow.benchmarks.bench_conv_libraries
runs them. Stride-2 layers also time XLA's own input gradient, the one the project replaces
by space-to-depth on the CPU. The parent process imports JAX but never starts its backend.
Measure on a quiet machine and compare within one run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from experiments import cli
from workflow import benchmarks
from workflow.errors import UserError


def build_parser():
    parser = cli.OneLineArgumentParser(prog="python -m experiments.bench_conv",
                                       description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=",".join(benchmarks.CONV_LAYERS),
                        help="comma-separated HxWxCin-CoutkKsS")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--libraries", default="eigen,ynnpack",
                        help="XLA convolution libraries to time: "
                             f"{', '.join(benchmarks.CONV_LIBRARY_OPTIONS)}")
    parser.add_argument("--torch_python", default="", help="an interpreter with torch")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


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
    unknown = sorted(set(libraries) - set(benchmarks.CONV_LIBRARY_OPTIONS))
    if unknown:
        cli.fail(f"--libraries: unknown {unknown}; known: "
                 f"{list(benchmarks.CONV_LIBRARY_OPTIONS)}")
    result = benchmarks.bench_conv_libraries(layers, batch=args.batch, repeats=args.repeats,
                                             libraries=libraries,
                                             torch_python=args.torch_python)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
