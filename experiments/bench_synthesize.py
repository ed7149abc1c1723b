"""Seconds to synthesize the five contrasts of one paper-size volume, printed as JSON
(workflow.benchmarks.bench_synthesis).

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

from workflow import benchmarks


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
    result = benchmarks.bench_synthesis(config, args.config, depth=args.depth,
                                        height=args.height, width=args.width,
                                        batch_size=args.batch_size, repeats=args.repeats)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
