"""The XLA CPU options the project sets (qsnet_jax.xla_cpu): added when missing, a user's own
value kept, and in effect in a fresh interpreter (the convolution runs in Eigen, not YNNPACK)."""

import os
import subprocess
import sys

import pytest

from qsnet_jax import xla_cpu

OPTION = "xla_cpu_experimental_ynn_fusion_type"


def test_missing_options_are_appended_to_the_users_flags():
    flags = xla_cpu.with_default_options("--xla_force_host_platform_device_count=8")
    assert flags.split() == ["--xla_force_host_platform_device_count=8",
                             f"--{OPTION}=individual_dot"]
    assert xla_cpu.with_default_options("") == f"--{OPTION}=individual_dot"


@pytest.mark.parametrize("users", [f"--{OPTION}=individual_dot,individual_convolution",
                                   f"-{OPTION}=", f"--{OPTION}"])
def test_a_users_own_value_wins(users):
    assert xla_cpu.with_default_options(f" {users} ") == users


def test_applying_twice_adds_nothing():
    environ = {}
    xla_cpu.apply_default_options(environ)
    once = environ["XLA_FLAGS"]
    xla_cpu.apply_default_options(environ)
    assert environ["XLA_FLAGS"] == once


PROBE = """
import qsnet_jax, jax, jax.numpy as jnp
conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
text = conv.lower(jnp.ones((8, 64, 64, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print("ynn" if "__ynn_fusion" in text else "eigen")
"""


@pytest.mark.parametrize("xla_flags, library", [
    ("", "eigen"),
    (f"--{OPTION}=individual_dot,individual_convolution", "ynn")])
def test_importing_the_library_gives_convolutions_to_eigen(xla_flags, library):
    """jaxlib 0.10.2 alone puts this 32-channel convolution in a YNNPACK fusion (the second
    case: the user asks for it back); importing qsnet_jax first moves it to Eigen."""
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, timeout=120, check=True)
    assert result.stdout.split()[-1] == library


def test_with_option_replaces_every_earlier_value_of_the_option():
    flags = f"--a=1 --{OPTION}=individual_dot -b -{OPTION}= --{OPTION}"
    assert xla_cpu.with_option(flags, OPTION, "x").split() == ["--a=1", "-b", f"--{OPTION}=x"]
    assert xla_cpu.with_option("", OPTION, "x") == f"--{OPTION}=x"
