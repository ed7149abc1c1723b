"""Glioblastoma: an irregular enhancing tumor with a necrotic core, peritumoral edema that
spreads along white matter, mass effect, and hemorrhage in some tumors.

Geometry lives in subject world mm. The tumor surface is a sphere whose radius varies
smoothly with direction (R0 in 10-30 mm, +-30%) plus small-scale wobble; the enhancing rim is
1.5-6 mm thick on average and varies strongly around the tumor (1 mm to about twice the
mean), the rest is necrosis. Fractions are computed on 1 mm sub-samples of
each voxel, so the rim survives as partial volume at 4 mm. Edema is a geodesic neighbourhood
of the tumor in which travelling through white matter is cheap and through gray matter or
CSF expensive (vasogenic edema follows the fibre tracts and spares the cortex).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage
from skimage.graph import MCP_Geometric

from data_pipelines.phantom import anatomy

LABEL_NECROSIS, LABEL_EDEMA, LABEL_ENHANCING = 1, 2, 3


@dataclasses.dataclass
class LesionSpec:
    centre_mm: np.ndarray  # subject world mm
    radius_mm: float  # mean outer radius of the enhancing tumor
    rim_mm: float  # enhancing rim thickness
    edema_reach_mm: float  # geodesic reach of edema through white matter
    shape_seed: int
    hemorrhages: list  # [(centre_mm, radius_mm)] inside the tumor; may be empty

    @property
    def mass_radius_mm(self) -> float:
        """Radius of the displaced volume: the tumor bulk pushes tissue aside (the rest of
        its volume replaced tissue in place, i.e. infiltration)."""
        return 0.75 * self.radius_mm


def draw_lesion(rng, warp: anatomy.SubjectWarp) -> LesionSpec:
    """A tumor centred in deep white matter of either hemisphere, far enough from the brain
    surface for its size."""
    radius = float(rng.uniform(10.0, 30.0))
    template = anatomy.template_at(2)
    affine, depth, _ = anatomy._depth_2mm()
    world = np.stack(anatomy._world_coords(depth.shape, affine), axis=-1)
    ok = ((template.volumes["wm"] > 0.6) & (depth > 0.6 * radius + 10.0)
          & (np.abs(world[..., 0]) > 12.0) & (world[..., 2] > -25.0))
    candidates = world[ok]
    centre_template = candidates[int(rng.integers(len(candidates)))]
    centre = warp.to_subject(centre_template)
    rim = float(rng.uniform(1.5, 6.0))
    hemorrhages = []
    if rng.uniform() < 0.4:  # hemorrhage foci in some tumors
        for _ in range(int(rng.integers(1, 4))):
            offset = rng.standard_normal(3)
            offset *= rng.uniform(0.2, 0.7) * radius / np.linalg.norm(offset)
            hemorrhages.append((centre + offset, float(rng.uniform(2.0, 4.0))))
    return LesionSpec(centre_mm=centre, radius_mm=radius, rim_mm=rim,
                      edema_reach_mm=float(rng.uniform(25.0, 60.0)),
                      shape_seed=int(rng.integers(2**31)), hemorrhages=hemorrhages)


def _direction_field(rng, amplitude):
    """A smooth function on the unit sphere (via a smooth field on the cube [-1, 1]^3)."""
    lattice = ndimage.gaussian_filter(rng.standard_normal((9, 9, 9)), 1.0)
    lattice = amplitude * lattice / max(lattice.std(), 1e-12)

    def at(unit):  # unit [3, ...] -> values [...]
        return ndimage.map_coordinates(lattice, (unit + 1.0) * 4.0, order=1, mode="nearest")
    return at


def _box(spec: LesionSpec, shape, affine, margin_mm):
    """Index slices of the grid around the tumor (+ margin)."""
    inv = np.linalg.inv(affine)
    reach = 1.3 * spec.radius_mm + margin_mm
    lo = np.floor(inv[:3, :3] @ (spec.centre_mm - reach) + inv[:3, 3]).astype(int)
    hi = np.ceil(inv[:3, :3] @ (spec.centre_mm + reach) + inv[:3, 3]).astype(int) + 1
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def tumor_fractions(spec: LesionSpec, shape, affine):
    """Necrosis, enhancing and hemorrhage volume fractions on the grid (1 mm sub-samples)."""
    rng = np.random.default_rng(spec.shape_seed)
    radius_at = _direction_field(rng, 0.35)
    rim_at = _direction_field(rng, 0.6)
    box = _box(spec, shape, affine, 2.0)
    # ~1 mm sub-samples per axis (the grid may be anisotropic), offsets centred in the voxel
    subs = [max(int(round(abs(affine[i, i]))), 1) for i in range(3)]
    offsets = [(np.arange(n) + 0.5) / n - 0.5 for n in subs]
    box_shape = tuple(s.stop - s.start for s in box)
    idx = np.indices(box_shape, dtype=np.float32)
    starts = np.array([s.start for s in box], np.float32)
    wobble_lattice = ndimage.gaussian_filter(rng.standard_normal((12, 12, 12)), 1.0)
    wobble_lattice *= 1.5 / max(wobble_lattice.std(), 1e-12)  # mm of surface wobble
    out = {name: np.zeros(box_shape, np.float32) for name in ("necrosis", "enhancing",
                                                              "hemorrhage")}
    for ox in offsets[0]:
        for oy in offsets[1]:
            for oz in offsets[2]:
                p = [affine[i, i] * (idx[i] + starts[i] + o) + affine[i, 3]
                     for i, o in enumerate((ox, oy, oz))]
                d = np.stack([p[i] - spec.centre_mm[i] for i in range(3)])
                r = np.sqrt(np.sum(d * d, axis=0)) + 1e-6
                unit = d / r
                outer = spec.radius_mm * np.maximum(1.0 + radius_at(unit), 0.4)
                wobble = ndimage.map_coordinates(
                    wobble_lattice, (d / (1.3 * spec.radius_mm + 2.0) + 1.0) * 5.5, order=1,
                    mode="nearest")
                signed = r - outer + wobble  # < 0 inside the tumor
                rim = np.maximum(spec.rim_mm * (1.0 + rim_at(unit)), 1.0)
                inside = signed < 0.0
                necrotic = signed < -rim
                bleed = np.zeros_like(inside)
                for centre, radius in spec.hemorrhages:
                    q = np.stack([p[i] - centre[i] for i in range(3)])
                    bleed |= np.sum(q * q, axis=0) < radius**2
                bleed &= inside
                out["hemorrhage"] += bleed
                out["necrosis"] += necrotic & ~bleed
                out["enhancing"] += inside & ~necrotic & ~bleed
    full = {}
    for name, part in out.items():
        full[name] = np.zeros(shape, np.float32)
        full[name][box] = part / float(np.prod(subs))
    return full


def edema_weight(spec: LesionSpec, tumor, wm, gm, csf, affine):
    """Share (0..1) of each voxel's parenchyma turned into edema: 1 near the tumor, fading
    out at the geodesic reach, where distance through white matter counts once and through
    gray matter or CSF many times over."""
    voxel_mm = float(affine[0, 0])
    box = _box(spec, wm.shape, affine, spec.edema_reach_mm + 4.0)
    # cost per mm of travel: 1 in pure WM, ~7 in GM, ~50 in CSF
    cost = voxel_mm / (wm[box] + 0.15 * gm[box] + 0.02 * csf[box] + 1e-3)
    sources = np.argwhere(tumor[box] > 0.5)
    if len(sources) == 0:
        return np.zeros_like(wm)
    distance, _ = MCP_Geometric(cost).find_costs(sources)
    fade = 0.3 * spec.edema_reach_mm
    weight = np.clip((spec.edema_reach_mm - distance) / fade, 0.0, 1.0)
    full = np.zeros_like(wm)
    full[box] = ndimage.gaussian_filter(weight, 0.5).astype(np.float32)
    return full


def label_map(fractions):
    """1 necrosis (hemorrhage inside the core counts as necrosis), 2 edema, 3 enhancing: the
    dominant lesion compartment of voxels that are at least half lesion."""
    necrosis = fractions["necrosis"] + fractions["hemorrhage"]
    stack = np.stack([necrosis, fractions["edema"], fractions["enhancing"]])
    labels = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
    return np.where(stack.sum(axis=0) >= 0.5, labels, 0).astype(np.uint8)
