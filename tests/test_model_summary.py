"""model_summary and its table (workflow.reports) on the tiny config's models."""

from configs import default
from qsnet_jax import models
from workflow import reports


def conv(kernel, inputs, outputs, bias=True):
    return kernel * kernel * inputs * outputs + (outputs if bias else 0)


def residual_block(inputs, width):
    """conv3x3 (no bias) + GroupNorm, twice; a 1x1 projection (with bias) when the width
    changes (qsnet_jax/models/layers.py)."""
    projection = conv(1, inputs, width) if inputs != width else 0
    return conv(3, inputs, width, False) + 2 * width + conv(3, width, width, False) + 2 * width \
        + projection


def hand_counted_qsnet_params(model, inputs, outputs):
    """The architecture of qsnet_jax/models/qsnet.py layer by layer, written out (one block
    per level, deep supervision: one 1x1 head per decoder level)."""
    assert model.blocks_per_level == 1 and model.deep_supervision
    widths = [min(model.base_width * 2**level, model.bottleneck_width)
              for level in range(model.depth)]
    total = conv(3, inputs, widths[0])  # stem
    for level, width in enumerate(widths):
        following = widths[level + 1] if level + 1 < model.depth else model.bottleneck_width
        total += residual_block(width, width) + conv(3, width, following)  # block + down
    total += residual_block(model.bottleneck_width, model.bottleneck_width)
    below = model.bottleneck_width
    for width in reversed(widths):
        if model.upsample == "transposed":  # a [C, 2, 2, width] kernel + bias
            total += below * 4 * width + width
        else:  # resize, then a 3x3 conv with bias
            total += conv(3, below, width)
        total += residual_block(2 * width, width) + conv(1, width, outputs)  # block + head
        below = width
    if model.pointwise_width:  # the per-voxel path: 1x1 layers with bias
        hidden = model.pointwise_width
        total += conv(1, inputs, hidden) + (model.pointwise_layers - 1) * conv(1, hidden, hidden)
        total += conv(1, hidden, outputs)
    return total


def hand_counted_patchgan_params(disc, channels):
    """PatchGAN: conv4x4 + bias, then num_layers conv4x4 without bias + InstanceNorm (scale,
    offset), then conv4x4 to one logit with bias; one per scale."""
    total, width = conv(4, channels, disc.base_width), disc.base_width
    for n in range(1, disc.num_layers + 1):
        following = disc.base_width * min(2**n, 8)
        total += conv(4, width, following, False) + 2 * following
        width = following
    return disc.num_scales * (total + conv(4, width, 1))


def test_summary_rows_count_params_and_flops():
    config = default.get_config("tiny")
    rows = reports.model_summary_rows(config, ["qsnet", "physics"], 32, 40)
    names = [row[0] for row in rows]
    assert names == ["qsnet", "physics", "discriminator: multiscale_patchgan"]
    assert rows[0][1] == hand_counted_qsnet_params(config.model, 3, 5) == 54_663
    paper = default.get_config("tiny")  # the paper's layers: transposed conv, no MLP path
    paper.model.upsample, paper.model.pointwise_width = "transposed", 0
    paper_rows = reports.model_summary_rows(paper, ["qsnet"], 32, 40)
    assert paper_rows[0][1] == hand_counted_qsnet_params(paper.model, 3, 5) == 42_562
    assert rows[1][1] == 5  # one scale per contrast
    assert rows[2][1] == hand_counted_patchgan_params(config.discriminator, 3 + 5) == 11_881
    # a conv net of this size costs far more than the 5-scale signal equations
    assert rows[0][2] > 1e6 > rows[1][2] > 0
    table = reports.model_summary_table(rows, 32, 40)
    assert "qsnet" in table and f"{rows[0][1]:,d}" in table


def test_model_summary_flops_scale_with_the_slice_area():
    config = default.get_config("tiny")
    qsnet = models.build_generator(config.model, input_channels=3, target_channels=5)
    small = models.model_summary(qsnet, (32, 32, 3))
    large = models.model_summary(qsnet, (2, 64, 64, 3))  # per slice: batch divided out
    assert small["params"] == large["params"]
    assert 3.5 < large["flops_per_slice"] / small["flops_per_slice"] < 4.5
