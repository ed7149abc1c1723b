"""experiments.bench_conv: the layer grammar, the FLOP count against the convolution's own
output shape, and one small layer timed end to end (no speed is asserted: benchmarks are not
tests)."""

import jax
import numpy as np
import pytest

from experiments import bench_conv
from qsnet_jax import benchmarking
from qsnet_jax.benchmarking import flops_of
from workflow import benchmarks


@pytest.mark.parametrize("spec", ["24x28x16-8k3s1", "20x26x8-16k4s2", "96x112x64-128k4s2"])
def test_conv_gflop_counts_every_tap_of_every_output_the_convolution_makes(spec):
    layer = benchmarks.parse_conv_layer(spec)
    pad = ((layer["pad"], layer["pad"]),) * 2
    x = jax.ShapeDtypeStruct((2, layer["height"], layer["width"], layer["in"]), np.float32)
    w = jax.ShapeDtypeStruct((layer["kernel"],) * 2 + (layer["in"], layer["out"]), np.float32)
    conv = jax.jit(lambda a, b: jax.lax.conv_general_dilated(
        a, b, (layer["stride"],) * 2, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")))
    outputs = np.prod(jax.eval_shape(conv, x, w).shape)  # batch x H' x W' x C_out
    nominal = 2 * outputs * layer["kernel"] ** 2 * layer["in"]
    assert benchmarks.conv_gflop(layer, 2) * 1e9 == pytest.approx(nominal, rel=1e-9)
    # XLA's cost analysis leaves out the taps that fall on the zero padding: a little less
    xla = flops_of(conv.lower(x, w).compile())
    assert 0.8 * nominal < xla <= nominal


def test_even_kernels_pad_like_the_patchgan_and_bad_specs_are_refused():
    assert benchmarks.parse_conv_layer("8x8x3-4k4s2")["pad"] == 1
    assert benchmarks.parse_conv_layer("8x8x3-4k3s1")["pad"] == 1
    with pytest.raises(ValueError, match="HxWxCin-CoutkKsS"):
        benchmarks.parse_conv_layer("8x8x3-4k3s3")


def test_a_small_layer_is_timed_in_every_pass():
    record = benchmarks.time_conv_layer("12x14x4-8k4s2", batch=2, repeats=1)
    assert set(record) >= {"forward", "input_grad", "input_grad_xla", "weight_grad"}
    assert record["conv_library"] in ("eigen", "ynnpack")
    for name in ("forward", "input_grad", "input_grad_xla", "weight_grad"):
        assert record[name]["ms"] > 0 and record[name]["gflop_per_sec"] > 0
    assert "input_grad_xla" not in benchmarks.time_conv_layer("6x6x2-2k3s1", batch=1,
                                                              repeats=1)


def test_the_command_refuses_a_bad_layer_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_conv.main(["--layers=192x224x32", "--libraries=eigen"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "192x224x32" in err[0]


# Two processors of a real /proc/cpuinfo, abridged (a Sapphire Rapids Xeon with AMX).
_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Other
flags\t\t: fpu
"""


def test_benchmarks_name_the_cpu_and_its_matmul_extensions():
    parsed = benchmarking.cpu_from_cpuinfo(_CPUINFO)
    assert parsed == {"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                      "isa": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}
    assert benchmarking.cpu_from_cpuinfo("processor\t: 0\n") == {"cpu": "", "isa": []}
    here = benchmarking.machine()
    assert here["cores"] >= 1 and here["cpu"] and isinstance(here["isa"], list)
