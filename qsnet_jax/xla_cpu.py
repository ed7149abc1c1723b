"""The XLA CPU options this project runs with, applied before JAX starts its backend.

jaxlib 0.10.2 hands every CPU convolution to YNNPACK (`--xla_cpu_experimental_ynn_fusion_type`
defaults to individual dots and convolutions). On the convolutions of these networks YNNPACK
is the slower library: a 3x3 convolution with 32 channels at 192x224, batch 8, ran its forward
pass at 58 GFLOP/s against 128 for XLA's Eigen convolution, its weight gradient at 31 against
72 (2-core AMD EPYC with AVX-512, one process; README "Training step against PyTorch"). The
project keeps YNNPACK for matrix products and gives convolutions back to Eigen. Same
mathematics, other rounding.

XLA reads these options once, when the first computation starts its backend: importing
`qsnet_jax` first (every entry point, test and notebook does) is enough. A user's own value of
an option, in XLA_FLAGS, wins.
"""

from __future__ import annotations

import os

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# option -> value; YNNPACK keeps the dots, Eigen takes the convolutions.
DEFAULT_OPTIONS = {YNN_FUSION_OPTION: "individual_dot"}


def option_name(flag: str) -> str:
    """The option an XLA_FLAGS entry sets: "--name=value", "-name=" or "--name" -> name."""
    return flag.lstrip("-").split("=", 1)[0]


def with_option(xla_flags: str, name: str, value: str) -> str:
    """`xla_flags` with option `name` set to `value`, whatever it held before."""
    kept = [flag for flag in xla_flags.split() if option_name(flag) != name]
    return " ".join([*kept, f"--{name}={value}"])


def with_default_options(xla_flags: str) -> str:
    """`xla_flags` (an XLA_FLAGS string) with each default option the string does not set."""
    given = {option_name(flag) for flag in xla_flags.split()}
    added = [f"--{name}={value}" for name, value in DEFAULT_OPTIONS.items() if name not in given]
    return " ".join([xla_flags.strip(), *added]).strip()


def apply_default_options(environ=os.environ) -> None:
    """Set XLA_FLAGS in `environ` to `with_default_options` of its value."""
    environ["XLA_FLAGS"] = with_default_options(environ.get("XLA_FLAGS", ""))
