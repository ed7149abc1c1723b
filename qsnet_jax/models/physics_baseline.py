"""The physics baseline: synthesize each contrast from the quantitative maps with the closed-
form signal equation of a site protocol (qsnet_jax.physics.signal), times one learnable scale
per contrast (targets are normalized per volume, so only the scale is unknown).

Inputs are normalized maps (channels.py): T1 and T2 are mapped back to ms with the inverse of
their fixed log transform; PD is relative and used as is (1 when not an input). Voxels whose
normalized T1 is 0 are background and give 0. With 2.5D context only the centre slice is used.
Predictions are clipped to [0, 1], the range of the normalized targets.

SWI: without a susceptibility map there is no phase, so the baseline gives the GRE magnitude
(T2* from T2 with a fixed R2'); veins and hemorrhage are not darkened as in a real SWI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qsnet_jax.models.qsnet import GeneratorOutput
from qsnet_jax.physics import channels, signal

REQUIRED_INPUTS = ("t1map", "t2map")


def check_physics_channels(input_channels, target_channels, site: str) -> dict:
    """The site's protocols; ValueError (one line) for inputs or targets the baseline cannot
    use. The registry calls it when it builds the module, so a bad config fails at once."""
    missing = [name for name in REQUIRED_INPUTS if name not in input_channels]
    if missing:
        raise ValueError(f"the physics baseline needs input channels {list(REQUIRED_INPUTS)}"
                         f" (pdmap optional); missing {missing} in {list(input_channels)}")
    multi = [n for n in input_channels if n in channels.MULTI_PLANE_CHANNELS]
    if multi:  # it reads one plane per input channel (_centre)
        raise ValueError(f"the physics baseline reads maps only; drop {multi} from its "
                         "input channels")
    protocols = signal.site_protocols(site)
    unknown = [name for name in target_channels if name not in protocols]
    if unknown:
        raise ValueError(f"the physics baseline has no signal equation for {unknown}; "
                         f"known: {sorted(protocols)}")
    return protocols


class PhysicsGenerator(nn.Module):
    input_channels: Sequence[str]
    target_channels: Sequence[str]
    site: str = "A"
    context_slices: int = 0

    def setup(self):
        protocols = check_physics_channels(self.input_channels, self.target_channels, self.site)
        self.protocols = [protocols[name] for name in self.target_channels]
        self.contrast_scale = self.param("contrast_scale", nn.initializers.ones,
                                         (len(self.target_channels),))

    def _centre(self, x, name):
        # Input-major channel order: input i, slices z-k .. z+k.
        span = 2 * self.context_slices + 1
        return x[..., list(self.input_channels).index(name) * span + self.context_slices]

    def raw_signals(self, x):
        """[B, H, W, C_out] signal-equation images before the scales (0 in background)."""
        x = x.astype(jnp.float32)
        t1_norm, t2_norm = self._centre(x, "t1map"), self._centre(x, "t2map")
        t1_ms = channels.TIMING_SCALES["t1map"].inverse(t1_norm)
        t2_ms = channels.TIMING_SCALES["t2map"].inverse(t2_norm)
        pd = self._centre(x, "pdmap") if "pdmap" in self.input_channels else jnp.ones_like(
            t1_norm)
        images = jnp.stack([signal.synthesize(p, pd, t1_ms, t2_ms) for p in self.protocols],
                           axis=-1)
        return jnp.where((t1_norm > 0)[..., None], images, 0.0)

    def __call__(self, x, train: bool = False) -> GeneratorOutput:
        del train
        prediction = jnp.clip(self.raw_signals(x) * self.contrast_scale, 0.0, 1.0)
        return GeneratorOutput(prediction=prediction, aux=())


def init_physics_variables(module: PhysicsGenerator):
    """The baseline's variables before the fit: every scale 1 (its only parameter)."""
    span = 2 * module.context_slices + 1
    x = jnp.zeros((1, 8, 8, len(module.input_channels) * span), jnp.float32)
    return {"params": dict(module.init(jax.random.PRNGKey(0), x)["params"])}


def fit_physics_scales(module: PhysicsGenerator, variables, batches: Iterable[dict]):
    """Least-squares per-contrast scales inside the brain mask over `batches` (dicts with
    "inputs", "targets" and optionally "brain_mask"; without it, T1 > 0 is the mask):
    s_c = sum(m * raw_c * target_c) / sum(m * raw_c**2). Returns new variables."""
    raw_fn = jax.jit(lambda v, x: module.apply(v, x, method=PhysicsGenerator.raw_signals))
    numerator = denominator = 0.0
    for batch in batches:
        raw = np.asarray(raw_fn(variables, jnp.asarray(batch["inputs"])), np.float64)
        target = np.asarray(batch["targets"], np.float64)
        mask = batch.get("brain_mask")
        mask = (raw.max(axis=-1, keepdims=True) > 0) if mask is None else np.asarray(mask) > 0
        if "valid" in batch:  # padding slices of an evaluation batch carry no data
            mask = mask & (np.asarray(batch["valid"]) > 0)[:, None, None, None]
        numerator = numerator + (mask * raw * target).sum(axis=(0, 1, 2))
        denominator = denominator + (mask * raw * raw).sum(axis=(0, 1, 2))
    if np.ndim(denominator) == 0:
        raise ValueError("fit_physics_scales got no batches")
    scales = np.where(denominator > 0, numerator / np.maximum(denominator, 1e-30), 1.0)
    params = dict(variables["params"], contrast_scale=jnp.asarray(scales, jnp.float32))
    return dict(variables, params=params)
