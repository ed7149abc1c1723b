"""PyTorch twin of the project's Res-UNet training step (configs/resunet.py), for speed only.

Run by `experiments/bench_train.py --torch_python=...` in a separate interpreter that has
torch (never a dependency of the project, which never imports this file). Same network as
qsnet_jax.models.ResidualUNet with base_width 32, depth 4, two residual blocks per level,
bottleneck 512, GroupNorm (gcd(width, 32) groups) + SiLU, the up-sampling of
config.model.upsample (--upsample), one sigmoid 1x1 head; same parameter count. Same step:
100 * L1, Adam (b1 0.5, b2 0.999), global-norm clipping to 1, EMA of the weights.

  python benchmarks/torch_resunet_twin.py --variants=eager,channels_last,compile --steps=3
prints one JSON line per variant: {"variant", "params", "step_seconds_median", ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (32, 64, 128, 256)
BOTTLENECK = 512
MAX_GROUPS = 32


def group_norm(width: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(width, MAX_GROUPS), width, eps=1e-6)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_0 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm_0 = group_norm(cout)
        self.conv_1 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm_1 = group_norm(cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = F.silu(self.norm_0(self.conv_0(x)))
        h = self.norm_1(self.conv_1(h))
        return F.silu(h + self.skip(x))


def upsampling(below: int, width: int, kind: str) -> nn.Module:
    """As qsnet_jax.models.layers.make_upsample: "transposed" or resize + 3x3 conv."""
    if kind == "transposed":
        return nn.ConvTranspose2d(below, width, 2, stride=2)
    mode = kind.removesuffix("_conv")
    return nn.Sequential(nn.Upsample(scale_factor=2, mode=mode),
                         nn.Conv2d(below, width, 3, padding=1))


class ResidualUNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, upsample: str = "transposed"):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1)
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        for level, width in enumerate(WIDTHS):
            self.encoder.append(nn.Sequential(ResidualBlock(width, width),
                                              ResidualBlock(width, width)))
            below = WIDTHS[level + 1] if level + 1 < len(WIDTHS) else BOTTLENECK
            self.down.append(nn.Conv2d(width, below, 3, stride=2, padding=1))
        self.bottleneck = nn.Sequential(ResidualBlock(BOTTLENECK, BOTTLENECK),
                                        ResidualBlock(BOTTLENECK, BOTTLENECK))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level, width in enumerate(WIDTHS):
            below = WIDTHS[level + 1] if level + 1 < len(WIDTHS) else BOTTLENECK
            self.up.append(upsampling(below, width, upsample))
            self.decoder.append(nn.Sequential(ResidualBlock(2 * width, width),
                                              ResidualBlock(width, width)))
        self.head = nn.Conv2d(WIDTHS[0], out_channels, 1)

    def forward(self, x):
        h = self.stem(x)
        skips = []
        for encoder, down in zip(self.encoder, self.down, strict=True):
            h = encoder(h)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h)
        for level in reversed(range(len(WIDTHS))):
            h = self.up[level](h)
            h = self.decoder[level](torch.cat([h, skips[level]], dim=1))
        return torch.sigmoid(self.head(h))


def make_step(model, ema, optimizer):
    params, ema_params = list(model.parameters()), list(ema.parameters())

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = 100.0 * (model(x) - y).abs().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - 0.999)
        return loss.detach()

    return step


def time_variant(variant: str, args) -> dict:
    torch.manual_seed(0)
    memory_format = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    model = ResidualUNet(args.in_channels, args.out_channels, args.upsample).to(
        memory_format=memory_format)
    ema = ResidualUNet(args.in_channels, args.out_channels, args.upsample)
    ema.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    forward = torch.compile(model) if variant == "compile" else model
    step = make_step(forward, ema, optimizer)
    shape = (args.batch_size, args.in_channels, args.height, args.width)
    x = torch.rand(shape).contiguous(memory_format=memory_format)
    y = torch.rand((args.batch_size, args.out_channels, args.height, args.width))
    start = time.perf_counter()
    for _ in range(args.warmup):
        loss = step(x, y)
    warmup_seconds = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step(x, y)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"variant": f"torch_{variant}", "params": sum(p.numel() for p in model.parameters()),
            "step_seconds_median": round(seconds, 3),
            "step_seconds_all": [round(t, 3) for t in times],
            "slices_per_sec": round(args.batch_size / seconds, 3),
            "warmup_seconds": round(warmup_seconds, 1), "loss": float(loss),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="eager,channels_last,compile")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--in_channels", type=int, default=3)
    parser.add_argument("--out_channels", type=int, default=5)
    parser.add_argument("--upsample", default="transposed",
                        choices=("transposed", "nearest_conv", "bilinear_conv"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    for variant in args.variants.split(","):
        print(json.dumps(time_variant(variant, args)), flush=True)


if __name__ == "__main__":
    main()
