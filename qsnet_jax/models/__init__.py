"""Models built by name from config (docs/interfaces.md, "Models").

    generator = build_generator(config.model, input_channels=config.data.input_channels,
                                target_channels=config.data.target_channels,
                                context_slices=config.data.context_slices)
    out = generator.apply(variables, x, train=True, rngs={"dropout": key},
                          mutable=["batch_stats"])   # GeneratorOutput(prediction, aux)
    discriminator = build_discriminator(config.discriminator)  # None when name == "none"
    logits_per_scale = discriminator.apply(d_variables, x, out.prediction, train=True)

Generators: see GENERATORS. Channels may be given as names (needed by "physics") or counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from qsnet_jax.models import layers
from qsnet_jax.models.discriminators import ConditionalDiscriminator
from qsnet_jax.models.pervoxel import PerVoxelMLP
from qsnet_jax.models.physics_baseline import (
    PhysicsGenerator,
    check_physics_channels,
    fit_physics_scales,
    init_physics_variables,
)
from qsnet_jax.models.pix2pix import Pix2PixUNet
from qsnet_jax.models.qsnet import GeneratorOutput, ResidualUNet, seed_pointwise_path
from qsnet_jax.models.summary import count_params, model_summary
from qsnet_jax.models.swin import SwinUNet

__all__ = ["GENERATORS", "DISCRIMINATORS", "GeneratorOutput", "build_generator",
           "seed_pointwise_path",
           "build_discriminator", "is_encoder_param", "model_summary", "count_params",
           "fit_physics_scales", "init_physics_variables"]

ENCODER_PREFIXES = ("encoder", "stem")


def _count(channels) -> int:
    return channels if isinstance(channels, int) else len(channels)


def _residual_unet(model_config, *, deep_supervision, target_channels, **_):
    return ResidualUNet(
        out_channels=_count(target_channels),
        base_width=model_config.base_width,
        depth=model_config.depth,
        blocks_per_level=model_config.blocks_per_level,
        bottleneck_width=model_config.bottleneck_width,
        norm=layers.check_norm(model_config.norm),
        activation=model_config.activation,
        dropout=model_config.dropout,
        output_activation=model_config.output_activation,
        deep_supervision=deep_supervision,
        upsample=layers.check_upsample(model_config.get("upsample", "transposed")),
        conv_weight_grad=layers.check_conv_weight_grad(
            model_config.get("conv_weight_grad", "xla")),
        pointwise_width=model_config.get("pointwise_width", 0),
        pointwise_layers=model_config.get("pointwise_layers", 2),
        dtype=layers.compute_dtype(model_config.dtype),
    )


def _qsnet(model_config, **kwargs):
    return _residual_unet(model_config, deep_supervision=model_config.deep_supervision,
                          **kwargs)


def _resunet(model_config, **kwargs):
    return _residual_unet(model_config, deep_supervision=False, **kwargs)


def _pix2pix(model_config, *, target_channels, **_):
    return Pix2PixUNet(
        out_channels=_count(target_channels),
        base_width=model_config.pix2pix_base_width,
        norm=layers.check_norm(model_config.norm),
        output_activation=model_config.output_activation,
        dtype=layers.compute_dtype(model_config.dtype),
    )


def _swin(model_config, *, target_channels, **_):
    return SwinUNet(
        out_channels=_count(target_channels),
        embed_dim=model_config.embed_dim,
        depths=tuple(model_config.swin_depths),
        num_heads=tuple(model_config.swin_heads),
        window_size=model_config.window_size,
        output_activation=model_config.output_activation,
        dtype=layers.compute_dtype(model_config.dtype),
    )


def _physics(model_config, *, input_channels, target_channels, context_slices):
    if isinstance(input_channels, int) or isinstance(target_channels, int):
        raise ValueError("the physics baseline needs channel names, not counts")
    check_physics_channels(input_channels, target_channels, model_config.physics_site)
    return PhysicsGenerator(input_channels=tuple(input_channels),
                            target_channels=tuple(target_channels),
                            site=model_config.physics_site, context_slices=context_slices)


def _pervoxel(model_config, *, target_channels, **_):
    return PerVoxelMLP(out_channels=_count(target_channels), width=model_config.pervoxel_width,
                       num_layers=model_config.pervoxel_layers,
                       activation=model_config.activation,
                       output_activation=model_config.output_activation,
                       dtype=layers.compute_dtype(model_config.dtype))


# name -> builder(model_config, *, input_channels, target_channels, context_slices)
GENERATORS = {
    "qsnet": _qsnet,
    "resunet": _resunet,
    "pix2pix": _pix2pix,
    "swin": _swin,
    "physics": _physics,
    "pervoxel": _pervoxel,
}

# name -> number of scales (None: config.discriminator.num_scales)
DISCRIMINATORS = {"patchgan": 1, "multiscale_patchgan": None}


def build_generator(model_config, *, input_channels: Sequence[str] | int,
                    target_channels: Sequence[str] | int, context_slices: int = 0):
    """The generator named by model_config.name (a flax.linen.Module)."""
    try:
        builder = GENERATORS[model_config.name]
    except KeyError:
        raise ValueError(f"unknown model.name {model_config.name!r}; "
                         f"known: {sorted(GENERATORS)}") from None
    if context_slices < 0:
        raise ValueError(f"context_slices must be >= 0, got {context_slices}")
    for what, channels in (("input", input_channels), ("target", target_channels)):
        if _count(channels) < 1:
            raise ValueError(f"a generator needs at least one {what} channel")
    return builder(model_config, input_channels=input_channels,
                   target_channels=target_channels, context_slices=context_slices)


def build_discriminator(disc_config):
    """The discriminator named by disc_config.name, or None for "none"."""
    if disc_config.name == "none":
        return None
    if disc_config.name not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator.name {disc_config.name!r}; "
                         f"known: {sorted(DISCRIMINATORS) + ['none']}")
    num_scales = DISCRIMINATORS[disc_config.name] or disc_config.num_scales
    return ConditionalDiscriminator(
        base_width=disc_config.base_width, num_layers=disc_config.num_layers,
        num_scales=num_scales, norm=disc_config.norm,
        spectral_norm=disc_config.spectral_norm,
        conv_weight_grad=layers.check_conv_weight_grad(
            disc_config.get("conv_weight_grad", "xla")))


def is_encoder_param(path) -> bool:
    """Whether a parameter belongs to the generator encoder (frozen in early fine-tuning).

    path: a key tuple of flax.traverse_util.flatten_dict(params) (a leading "params" is
    allowed); the encoder is every top-level module named stem* or encoder*.
    """
    keys = [getattr(k, "key", k) for k in path]  # also accept jax tree paths (DictKey)
    if keys and keys[0] == "params":
        keys = keys[1:]
    return bool(keys) and str(keys[0]).startswith(ENCODER_PREFIXES)
