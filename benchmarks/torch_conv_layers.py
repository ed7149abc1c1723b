"""PyTorch's speed on single convolutions, for experiments/bench_conv.py (speed only).

Run by `experiments/bench_conv.py --torch_python=...` in a separate interpreter that has
torch (never a dependency of the project, which never imports this file). The layers are
given as the project writes them, HxWxCin-CoutkKsS (workflow.benchmarks.parse_conv_layer,
same padding); each is timed eager in NCHW and in channels_last: the forward pass, and the
input and weight gradients each alone (aten.convolution_backward with one output asked for).

  python benchmarks/torch_conv_layers.py --layers=192x224x32-32k3s1 --batch=8 --repeats=5
prints one JSON line per layer and memory format.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time

import torch
import torch.nn.functional as F

PATTERN = re.compile(r"(\d+)x(\d+)x(\d+)-(\d+)k(\d+)s([12])")


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_layer(spec: str, batch: int, repeats: int, memory_format) -> dict:
    height, width, cin, cout, kernel, stride = (int(v) for v in PATTERN.fullmatch(spec).groups())
    pad = kernel // 2 if kernel % 2 else kernel // 2 - 1
    torch.manual_seed(0)
    x = torch.randn(batch, cin, height, width).contiguous(memory_format=memory_format)
    w = (torch.randn(cout, cin, kernel, kernel) * 0.1).contiguous(memory_format=memory_format)
    with torch.no_grad():
        y = F.conv2d(x, w, stride=stride, padding=pad)
    g = torch.randn_like(y).contiguous(memory_format=memory_format)
    out_h, out_w = y.shape[2], y.shape[3]
    gflop = 2.0 * batch * out_h * out_w * kernel * kernel * cin * cout / 1e9

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, mask)

    passes = {"forward": lambda: F.conv2d(x, w, stride=stride, padding=pad),
              "input_grad": backward([True, False, False]),
              "weight_grad": backward([False, True, False])}
    record = {"layer": spec, "batch": batch, "gflop": round(gflop, 3),
              "memory_format": "channels_last" if memory_format is torch.channels_last
              else "nchw", "threads": torch.get_num_threads()}
    with torch.no_grad():
        for name, fn in passes.items():
            seconds = median_seconds(fn, repeats)
            record[name] = {"ms": round(seconds * 1e3, 2),
                            "gflop_per_sec": round(gflop / seconds, 1)}
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", required=True, help="comma-separated HxWxCin-CoutkKsS")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for spec in args.layers.split(","):
        for memory_format in (torch.contiguous_format, torch.channels_last):
            print(json.dumps(time_layer(spec, args.batch, args.repeats, memory_format)),
                  flush=True)


if __name__ == "__main__":
    main()
