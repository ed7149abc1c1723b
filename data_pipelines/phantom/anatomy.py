"""Subject anatomy: the MNI152 tissue maps, deformed per subject, with sharp boundaries.

Source: nilearn's 1 mm MNI152 2009c GM and WM probability maps and brain mask (they ship in
the wheel and load offline). CSF = clip(brain - GM - WM).

Phantom v2 (docs/design.md section 8): population probabilities are not partial-volume
fractions (at 1 mm only ~18% of brain voxels would be > 95% one tissue). Each subject's tissue
model is a set of level sets with sub-voxel boundary positions: the probabilities are
thresholded at subject-specific, smoothly varying levels (ribbon thickness, sulcal CSF
width), and cortical sulci are carved as thin CSF sheets lined with gray matter (the zero set
of a random field: `sharp_fractions`). Each boundary is integrated exactly over the voxel box
for a locally planar boundary (`box_fraction`), on a grid 2x finer in-plane than the
acquisition; block averages then give the acquisition-grid fractions, so mixtures sit only at
boundaries.

Geometry is a backward map: for each voxel centre of the subject grid (world mm) we compute
the template point it came from, then interpolate the template fractions there. The chain,
subject -> template: tumor mass effect, ventricle enlargement, inverse affine (scale,
rotation), smooth elastic displacement.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from data_pipelines.phantom import resample

# MNI coordinates (mm) of the deep gray nuclei, one ellipsoid per side: centre, semi-axes, and
# the iron susceptibility (ppm, relative to cortex) that makes them dark on SWI (globus
# pallidus > putamen > caudate > thalamus, as in QSM atlases).
DEEP_GRAY_NUCLEI = (
    ("caudate", (13.0, 12.0, 10.0), (5.0, 11.0, 9.0), 0.07),
    ("putamen", (25.0, 2.0, 1.0), (5.5, 13.0, 9.0), 0.09),
    ("pallidum", (19.0, -3.0, 0.0), (4.0, 7.0, 5.0), 0.16),
    ("thalamus", (11.0, -18.0, 7.0), (7.0, 12.0, 8.0), 0.04),
)
# Lateral ventricle bodies (from the template's CSF centroid) and the extent of the local
# magnification that enlarges them.
VENTRICLE_CENTRES_MM = ((13.0, -16.0, 14.0), (-13.0, -16.0, 14.0))
VENTRICLE_SIGMA_MM = (9.0, 22.0, 9.0)


@dataclasses.dataclass
class Template:
    """Tissue fraction volumes on a template grid (world mm via `affine`)."""

    affine: np.ndarray
    volumes: dict  # name -> float32 [X, Y, Z]: gm, wm, csf, brain, dgm, dgm_iron_ppm

    @property
    def voxel_mm(self) -> float:
        return float(self.affine[0, 0])


# nilearn's own files (shipped in its wheel). They are read with nibabel exactly as
# nilearn.datasets.load_mni152_{gm,wm}_template / load_mni152_brain_mask(resolution=1) do
# (scale to max 1; mask = T1 template / max > 0.2; checked np.array_equal with nilearn)
# because importing nilearn.datasets pulls in scikit-learn and costs ~5 s.
MNI152_FILES = {"gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
                "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"}
BRAIN_MASK_THRESHOLD = 0.2


def mni152_path(name: str) -> str:
    import importlib.util
    import os

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed: the phantom needs its MNI152 templates")
    root = list(spec.submodule_search_locations)[0]
    return os.path.join(root, "datasets", "data", MNI152_FILES[name])


def load_mni152_1mm():
    """(gm, wm, brain_mask, affine) as nilearn's loaders return them at resolution=1."""
    import nibabel as nib

    images = {name: nib.load(mni152_path(name)) for name in MNI152_FILES}
    data = {name: np.asarray(img.dataobj, dtype=np.float32) for name, img in images.items()}
    data = {name: vol / vol.max() for name, vol in data.items()}
    mask = (data["t1"] > BRAIN_MASK_THRESHOLD).astype(np.float32)
    return data["gm"], data["wm"], mask, np.asarray(images["gm"].affine, np.float64)


@functools.lru_cache(maxsize=1)
def mni_template_1mm() -> Template:
    gm, wm, mask, affine = load_mni152_1mm()
    gm_wm = gm + wm
    # The brain mask misses some GM/WM rim voxels: the brain is their union.
    brain = np.maximum(mask, np.clip(gm_wm, 0.0, 1.0))
    excess = np.maximum(gm_wm, 1.0)  # where GM + WM > 1, renormalize them
    gm, wm = gm / excess, wm / excess
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    dgm = _deep_gray(gm, wm, affine)
    volumes = {"gm": gm - dgm["from_gm"], "wm": wm - dgm["from_wm"], "csf": csf,
               "brain": brain, "dgm": dgm["from_gm"] + dgm["from_wm"],
               "dgm_iron_ppm": dgm["iron"], "dgm_prior": dgm["prior"],
               # raw probabilities: the sharp model thresholds these (parenchyma, WM)
               "parenchyma": np.clip(gm_wm, 0.0, 1.0), "wm_prob": wm}
    return Template(affine, {k: v.astype(np.float32) for k, v in volumes.items()})


def _deep_gray(gm, wm, affine):
    """Deep gray matter = the part of GM (and of the template's 'WM' inside the pallidum and
    thalamus, which the probabilistic maps call white) that lies inside smooth ellipsoid
    priors around the nuclei. Returns those fractions and the iron susceptibility carried by
    them (fraction x ppm, so that block averaging keeps the total)."""
    inv = np.linalg.inv(affine)
    lo = np.floor(inv[:3, :3] @ [-45.0, -45.0, -20.0] + inv[:3, 3]).astype(int)
    hi = np.ceil(inv[:3, :3] @ [45.0, 40.0, 35.0] + inv[:3, 3]).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))  # nuclei inside
    sub_affine = affine.copy()
    sub_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    world = _world_coords(gm[box].shape, sub_affine)
    prior = np.zeros(gm[box].shape, np.float32)
    iron = np.zeros(gm[box].shape, np.float32)
    for _, centre, semi_axes, chi in DEEP_GRAY_NUCLEI:
        for side in (1.0, -1.0):
            c = np.array(centre) * np.array([side, 1.0, 1.0])
            rho = np.sqrt(sum(((world[i] - c[i]) / semi_axes[i]) ** 2 for i in range(3)))
            p = 1.0 / (1.0 + np.exp((rho - 1.0) / 0.12))  # soft edge ~1 mm
            iron = np.where(p > prior, chi, iron)
            prior = np.maximum(prior, p)
    out = {name: np.zeros_like(gm) for name in ("from_gm", "from_wm", "iron", "prior")}
    out["prior"][box] = prior
    out["from_gm"][box] = prior * gm[box]
    out["from_wm"][box] = 0.7 * prior * wm[box]
    out["iron"][box] = iron * (out["from_gm"][box] + out["from_wm"][box])
    return out


def world_axes(shape, affine, dtype=np.float32):
    """The world coordinates of an axis-aligned grid, one vector per axis."""
    return [affine[i, 3] + affine[i, i] * np.arange(shape[i], dtype=dtype) for i in range(3)]


def _world_coords(shape, affine, dtype=np.float32):
    """The world coordinates of every voxel of an axis-aligned grid: three full grids."""
    return np.meshgrid(*world_axes(shape, affine, dtype), indexing="ij")


@functools.lru_cache(maxsize=4)
def template_at(voxel_mm: int) -> Template:
    """The template block-averaged to `voxel_mm`: block means are exactly the partial-volume
    fractions of the coarse voxels."""
    fine = mni_template_1mm()
    if voxel_mm == 1:
        return fine
    f = int(voxel_mm)
    volumes = {}
    for name, vol in fine.volumes.items():
        pad = [(0, (-s) % f) for s in vol.shape]
        vol = np.pad(vol, pad)
        shape = [s // f for s in vol.shape]
        volumes[name] = vol.reshape(shape[0], f, shape[1], f, shape[2], f).mean(
            axis=(1, 3, 5)).astype(np.float32)
    affine = fine.affine.copy()
    affine[:3, :3] *= f
    affine[:3, 3] += (f - 1) / 2.0  # block centre
    return Template(affine, volumes)


@functools.lru_cache(maxsize=1)
def template_brain_box_mm():
    """World-mm bounding box (lo, hi) of the 1 mm template brain."""
    t = mni_template_1mm()
    idx = np.argwhere(t.volumes["brain"] > 0.5)
    lo = t.affine[:3, :3] @ idx.min(0) + t.affine[:3, 3]
    hi = t.affine[:3, :3] @ idx.max(0) + t.affine[:3, 3]
    return lo, hi


def grid_affine(voxel_mm: int, in_plane: tuple[int, int], max_scale: float):
    """The full subject grid of a preset: in-plane size fixed, Z tall enough for the largest
    scaled brain (each subject is then cropped in Z to its brain). Centred on the template
    brain. Returns (shape, affine)."""
    lo, hi = template_brain_box_mm()
    centre = (lo + hi) / 2.0
    nz = int(np.ceil((hi[2] - lo[2]) * max_scale / voxel_mm)) + 4
    shape = (in_plane[0], in_plane[1], nz)
    affine = np.eye(4)
    affine[:3, :3] *= voxel_mm
    affine[:3, 3] = centre - voxel_mm * (np.array(shape) - 1) / 2.0
    return shape, affine


def smooth_field(rng, shape, voxel_mm, correlation_mm, *, coarse_mm=None, at=None):
    """A smooth zero-mean, unit-std random field on a voxel grid.

    White noise on a coarse lattice (spacing ~ correlation / 2), Gaussian-smoothed, then
    interpolated to the grid: the cost is set by the lattice, not by the volume size.
    `at`: flat voxel indices; the field is then evaluated there only ([len(at)]), with the
    same random draws as for the whole grid.
    """
    coarse_mm = coarse_mm or correlation_mm / 2.0
    coarse_shape = [max(int(np.ceil(s * voxel_mm / coarse_mm)) + 3, 4) for s in shape]
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap")
    noise = (noise - noise.mean()) / max(noise.std(), 1e-12)
    # Voxel i of the grid sits at i * voxel / coarse + 1 lattice units (1-cell margin).
    if at is not None and len(at) < np.prod(shape) // 8:  # few points: scipy is cheaper
        idx = np.unravel_index(at, shape)
        mesh = [i.astype(np.float32) * voxel_mm / coarse_mm + 1.0 for i in idx]
        return ndimage.map_coordinates(noise, mesh, order=1, mode="nearest").astype(np.float32)
    coords = [np.arange(s, dtype=np.float32) * voxel_mm / coarse_mm + 1.0 for s in shape]
    field = resample.on_grid(noise, coords, order=1, mode="nearest")
    return field if at is None else field.ravel()[at]


def rotation_matrix(angles_rad):
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclasses.dataclass
class SubjectWarp:
    """One subject's deformation of the template."""

    linear: np.ndarray  # 3x3: template -> subject (rotation @ scale), about `centre`
    centre: np.ndarray  # world mm, the template brain centre
    ventricle_gain: float  # local magnification at the ventricles (0 = none)
    elastic_amplitude_mm: float
    elastic_seed: int
    mass_centre: np.ndarray | None = None  # tumor mass effect (subject world mm)
    mass_radius_mm: float = 0.0

    def to_subject(self, template_mm):
        """Approximate forward map (affine only) of template points: for placing a lesion."""
        return (np.asarray(template_mm) - self.centre) @ self.linear.T + self.centre


MAX_SCALE = 1.08


def draw_warp(rng) -> SubjectWarp:
    scale = np.diag(rng.uniform(2.0 - MAX_SCALE, MAX_SCALE, 3))
    rot = rotation_matrix(np.deg2rad(rng.uniform(-7.0, 7.0, 3)))
    lo, hi = template_brain_box_mm()
    return SubjectWarp(linear=rot @ scale, centre=(lo + hi) / 2.0,
                       ventricle_gain=float(rng.uniform(0.0, 0.4)),
                       elastic_amplitude_mm=float(rng.uniform(1.5, 3.0)),
                       elastic_seed=int(rng.integers(2**31)))


def backward_map(warp: SubjectWarp, shape, affine):
    """Template world-mm coordinates [3, X, Y, Z] of every voxel of the subject grid."""
    voxel_mm = float(affine[0, 0])
    p = np.stack(_world_coords(shape, affine))
    if warp.mass_centre is not None and warp.mass_radius_mm > 0:
        p = _deflate(p, warp.mass_centre, warp.mass_radius_mm)
    for centre in VENTRICLE_CENTRES_MM:
        p = _demagnify(p, warp.to_subject(centre), warp)
    inverse = np.linalg.inv(warp.linear).astype(np.float32)
    c = warp.centre.astype(np.float32)[:, None, None, None]
    q = np.einsum("ij,j...->i...", inverse, p - c) + c
    rng = np.random.default_rng(warp.elastic_seed)
    for i in range(3):  # elastic displacement, correlation ~30 mm
        q[i] += warp.elastic_amplitude_mm * smooth_field(rng, shape, voxel_mm, 30.0)
    return q


def _demagnify(p, centre, warp):
    """Backward map of a local magnification around `centre`: points within ~sigma come from
    closer to the centre, so whatever sits there (ventricular CSF) appears enlarged. The map
    r -> r (1 - g exp(-r^2/2)) (r in sigma units) is monotone for g < 1."""
    sigma = np.array(VENTRICLE_SIGMA_MM, np.float32)[:, None, None, None]
    c = np.asarray(centre, np.float32)[:, None, None, None]
    d = (p - c) / sigma
    shrink = 1.0 - warp.ventricle_gain * np.exp(-0.5 * np.sum(d * d, axis=0))
    return c + (p - c) * shrink


def _deflate(p, centre, radius_mm):
    """Backward map of a mass that inflated to `radius_mm` in incompressible tissue: the
    tissue now at distance r came from r' = (r^3 - R^3)^(1/3) (volume between the spheres is
    conserved), so the displacement falls off as R^3 / 3r^2 away from the tumor."""
    c = np.asarray(centre, np.float32)[:, None, None, None]
    d = p - c
    r = np.sqrt(np.sum(d * d, axis=0)) + 1e-6
    r_src = np.cbrt(np.maximum(r**3 - radius_mm**3, 0.0))
    return c + d * (r_src / r)


def interpolate_at_world(table, affine, coords_mm) -> list:
    """The volumes of `table` (a `resample.stack` on an axis-aligned grid with `affine`)
    interpolated (trilinear, 0 outside the grid) at world-mm coordinates [3, ...]."""
    inv = np.linalg.inv(affine)
    idx = [inv[i, i] * coords_mm[i] + inv[i, 3] for i in range(3)]
    return resample.trilinear(table, idx)


def sample(template: Template, names, coords_mm) -> dict:
    """{name: template volume `name` at world-mm coordinates [3, ...]} for each of `names`,
    in one pass over the points (`interpolate_at_world`)."""
    values = interpolate_at_world(_stacked(template, tuple(names)), template.affine, coords_mm)
    return dict(zip(names, values, strict=True))


def _stacked(template: Template, names: tuple) -> np.ndarray:
    """The template's volumes `names` as one table, kept on the template (the same dozen
    1 mm volumes are sampled for every subject)."""
    cache = template.__dict__.setdefault("_stacks", {})
    if names not in cache:
        cache[names] = resample.stack([template.volumes[name] for name in names])
    return cache[names]


def bias_field(rng, shape, affine, amplitude):
    """Smooth multiplicative receive field exp(cubic polynomial of position), rescaled so that
    its extreme over the grid's central region is 1 +- `amplitude`."""
    idx = np.indices(shape, dtype=np.float32)
    u = [(idx[i] - (shape[i] - 1) / 2.0) / max(shape[i] / 2.0, 1.0) for i in range(3)]
    log_b = np.zeros(shape, np.float32)
    for px in range(4):
        for py in range(4 - px):
            for pz in range(4 - px - py):
                if px + py + pz == 0:
                    continue
                log_b += rng.standard_normal() / (px + py + pz) * u[0]**px * u[1]**py * u[2]**pz
    core = tuple(slice(s // 4, s - s // 4) for s in shape)
    log_b -= np.median(log_b[core])
    peak = np.abs(log_b[core]).max() + 1e-6
    return np.exp(log_b * (np.log1p(amplitude) / peak)).astype(np.float32)


# ------------------------------------------------------------------------------------ veins


@functools.lru_cache(maxsize=1)
def _depth_2mm():
    """Distance (mm) to the brain surface on a 2 mm template grid, and its gradient: guides the
    random walks of the cortical and medullary veins."""
    t = template_at(2)
    depth = ndimage.distance_transform_edt(t.volumes["brain"] > 0.5) * 2.0
    return t.affine, depth.astype(np.float32), np.stack(np.gradient(depth, 2.0))


def _lookup(volume, affine, points_mm):
    inv = np.linalg.inv(affine)
    idx = np.round(points_mm @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    idx = np.clip(idx, 0, np.array(volume.shape[-3:]) - 1)
    return volume[..., idx[0], idx[1], idx[2]]


def _walk(rng, start, direction, length_mm, curvature, depth_band):
    """A smooth random curve (1 mm steps) that keeps its depth below the surface in
    `depth_band` (mm) by nudging along the depth gradient."""
    affine, depth, grad = _depth_2mm()
    points = [np.asarray(start, np.float64)]
    d = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    for _ in range(int(length_mm)):
        p = points[-1]
        here = float(_lookup(depth, affine, p))
        if here <= 0.5:  # left the brain
            break
        g = _lookup(grad, affine, p)
        lo, hi = depth_band
        if here > hi:
            d = d - 0.5 * g  # towards the surface
        elif here < lo:
            d = d + 0.5 * g
        d = d + curvature * rng.standard_normal(3)
        d /= np.linalg.norm(d) + 1e-12
        points.append(p + d)
    return np.array(points)


def _superior_sagittal_sinus():
    """Midline curve just under the top of the brain, frontal pole to occipital pole."""
    t = mni_template_1mm()
    inv = np.linalg.inv(t.affine)
    x0 = int(round(inv[0, 3]))  # x = 0 mm
    midline = t.volumes["brain"][x0 - 1:x0 + 2].max(axis=0) > 0.5  # [Y, Z]
    points = []
    for j in range(midline.shape[0]):
        ks = np.nonzero(midline[j])[0]
        if ks.size == 0:
            continue
        y_mm = t.affine[1, 1] * j + t.affine[1, 3]
        z_mm = t.affine[2, 2] * ks.max() + t.affine[2, 3]
        if z_mm > 0.0 and y_mm < 55.0:
            points.append((0.0, y_mm, z_mm - 3.0))
    return np.array(points)


def _segment(a, b, step=1.0):
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = max(int(np.linalg.norm(b - a) / step), 1)
    return a + (b - a) * np.linspace(0, 1, n + 1)[:, None]


def vein_fraction(rng, template: Template):
    """Venous blood volume fraction on the template grid: dural sinuses, internal cerebral
    veins, medullary veins (radial, ventricles -> cortex) and cortical surface veins.

    Each curve deposits its volume (pi r^2 per mm of length) into the voxels it crosses and a
    Gaussian of width ~r spreads it over the tube, so thin veins are faint partial-volume
    streaks at coarse resolution and thick sinuses fill their voxels.
    """
    curves = [(_superior_sagittal_sinus(), rng.uniform(3.0, 4.0)),
              (_segment((0, -45, 12), (0, -92, 2)), rng.uniform(2.0, 3.0))]  # straight sinus
    for side in (1.0, -1.0):  # internal cerebral veins
        curves.append((_segment((2 * side, 0, 18), (2 * side, -42, 12)), rng.uniform(0.9, 1.3)))
    for _ in range(int(rng.integers(30, 50))):  # medullary veins
        centre = np.array(VENTRICLE_CENTRES_MM[int(rng.integers(2))], float)
        out = rng.standard_normal(3) * np.array([1.0, 0.6, 1.0])
        out[0] = abs(out[0]) * np.sign(centre[0])
        start = centre + 8.0 * out / np.linalg.norm(out)
        curves.append((_walk(rng, start, out, rng.uniform(25, 50), 0.15, (0.0, 1e9)),
                       rng.uniform(0.4, 0.8)))
    surface = _surface_points()
    for _ in range(int(rng.integers(25, 40))):  # cortical veins
        start = surface[int(rng.integers(len(surface)))]
        curves.append((_walk(rng, start, rng.standard_normal(3), rng.uniform(20, 60), 0.1,
                             (1.0, 4.0)), rng.uniform(0.6, 1.2)))
    return _rasterize(curves, template)


@functools.lru_cache(maxsize=1)
def _surface_points():
    affine, depth, _ = _depth_2mm()
    idx = np.argwhere((depth > 0) & (depth <= 4.0))
    pts = idx @ affine[:3, :3].T + affine[:3, 3]
    return pts[pts[:, 2] > -10.0]  # above the skull base


def _rasterize(curves, template: Template):
    v = template.voxel_mm
    shape = template.volumes["brain"].shape
    inv = np.linalg.inv(template.affine)
    thin = np.zeros(shape, np.float32)
    thick = np.zeros(shape, np.float32)
    for points, radius in curves:
        if len(points) < 2:
            continue
        # resample at v/4 so that every crossed voxel gets its share of the length
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        fine_s = np.arange(0.0, s[-1], v / 4.0)
        fine = np.stack([np.interp(fine_s, s, points[:, i]) for i in range(3)], axis=1)
        idx = np.round(fine @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        keep = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
        target = thick if radius > 1.5 else thin
        np.add.at(target, tuple(idx[keep].T), np.pi * radius**2 * (v / 4.0) / v**3)
    fraction = ndimage.gaussian_filter(thin, 0.5)
    fraction += ndimage.gaussian_filter(thick, max(0.5, 2.5 / v))
    return np.minimum(np.minimum(fraction, 1.0), template.volumes["brain"])


# ------------------------------------------------------------------- sharp tissue model

# Subject-specific variation of the level sets: std of the threshold fields (probability
# units) and their correlation length.
THRESHOLD_STD = 0.10
THRESHOLD_CORRELATION_MM = 25.0
# Sulci: the zero set of a random field of this correlation length (~ gyral spacing), CSF
# sheets of this width lined with this much gray matter, down to this depth below the
# brain surface and only where the population WM probability is below WM_CORE.
SULCUS_CORRELATION_MM = 16.0
SULCUS_CSF_WIDTH_MM = (0.8, 1.6)
CORTEX_THICKNESS_MM = (2.2, 3.0)
SULCUS_DEPTH_MM = 14.0
WM_CORE = 0.85


def box_fraction(values, spacing):
    """Fraction of each voxel box where `values` > 0, for a boundary that is planar across
    the voxel: signed distance d = v / |grad v|, and the fraction of a box of sides h cut by
    a plane of normal n at distance d, approximated by a ramp of the same variance
    (width sqrt(sum (n_i h_i)^2); exact for a plane parallel to a face)."""
    grads = np.gradient(values, *spacing)
    norm = gradient_norm(grads)
    # In place, term by term in the order of the plain expression
    # clip(0.5 + v / (norm * max(sqrt(sum((g / norm * h)^2)), 1e-6)), 0, 1): the same bits,
    # without a fresh full-size temporary per operation (the fine 1 mm grid has ~2e7 voxels).
    width = None
    for g, h in zip(grads, spacing, strict=True):
        np.divide(g, norm, out=g)
        g *= h
        np.square(g, out=g)
        width = g if width is None else np.add(width, g, out=width)
    np.sqrt(width, out=width)
    np.maximum(width, 1e-6, out=width)
    width *= norm
    fraction = values / width  # in the dtype the plain expression has
    fraction += 0.5
    return np.clip(fraction, 0.0, 1.0, out=fraction).astype(np.float32, copy=False)


def gradient_norm(grads):
    """sqrt(g_x^2 + g_y^2 + g_z^2) + 1e-9, summed in that order, into a new array."""
    total = np.square(grads[0])
    for g in grads[1:]:
        total += g * g
    np.sqrt(total, out=total)
    total += 1e-9
    return total


def random_field_at(rng, axes_mm, correlation_mm):
    """Smooth zero-mean, unit-std field on the axis-aligned grid of world coordinates
    `axes_mm` (one vector per axis): a cubic spline of a smoothed noise lattice of spacing
    correlation/2 over the grid's bounding box."""
    lo = np.array([a.min() for a in axes_mm]) - correlation_mm
    hi = np.array([a.max() for a in axes_mm]) + correlation_mm
    spacing = correlation_mm / 2.0
    shape = [int(np.ceil((b - a) / spacing)) + 1 for a, b in zip(lo, hi, strict=True)]
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0, mode="wrap")
    noise = (noise - noise.mean()) / max(noise.std(), 1e-12)
    coeffs = ndimage.spline_filter(noise, order=3)
    idx = [(axes_mm[i] - lo[i]) / spacing for i in range(3)]
    return resample.on_grid(coeffs, idx, order=3, mode="nearest")


@dataclasses.dataclass
class SharpAnatomyDraw:
    """One subject's draws for the sharp model (drawn even when the effect is off, so that
    switching it off changes nothing else)."""

    seed: int
    sulcus_width_mm: float
    cortex_thickness_mm: float


def draw_sharp(rng) -> SharpAnatomyDraw:
    return SharpAnatomyDraw(int(rng.integers(2**31)), float(rng.uniform(*SULCUS_CSF_WIDTH_MM)),
                            float(rng.uniform(*CORTEX_THICKNESS_MM)))


def sharp_fractions(draw: SharpAnatomyDraw, sampled, world_axes_mm, spacing):
    """Tissue fractions (wm, cgm, dgm, csf; of the voxel) of the subject's sharp model on a
    grid, from the template maps `sampled` there (parenchyma, wm_prob, brain, dgm_prior,
    depth_mm), the grid's world coordinates (mm, one vector per axis) and its spacing (mm per
    axis)."""
    rng = np.random.default_rng(draw.seed)
    theta_p = 0.5 + THRESHOLD_STD * random_field_at(rng, world_axes_mm, THRESHOLD_CORRELATION_MM)
    theta_w = 0.5 + THRESHOLD_STD * random_field_at(rng, world_axes_mm, THRESHOLD_CORRELATION_MM)
    sulcal = random_field_at(rng, world_axes_mm, SULCUS_CORRELATION_MM)
    brain = box_fraction(sampled["brain"] - 0.5, spacing)
    parenchyma = box_fraction(sampled["parenchyma"] - theta_p, spacing) * brain
    wm = np.minimum(box_fraction(sampled["wm_prob"] - theta_w, spacing), 1.0) * parenchyma
    # Distance to the sulcal sheet: |g| / |grad g| (mm); gated to the outer cortex.
    distance = np.abs(sulcal) / gradient_norm(np.gradient(sulcal, *spacing))
    gate = (np.clip((SULCUS_DEPTH_MM - sampled["depth_mm"]) / 3.0, 0.0, 1.0)
            * np.clip((WM_CORE - sampled["wm_prob"]) / 0.1, 0.0, 1.0))
    half = draw.sulcus_width_mm / 2.0
    sulcus_csf = gate * box_fraction(half - distance, spacing)
    lining = gate * box_fraction(half + draw.cortex_thickness_mm - distance, spacing)
    wm = wm * (1.0 - lining)
    parenchyma_after = parenchyma * (1.0 - sulcus_csf)
    wm = np.minimum(wm, parenchyma_after)
    gm = parenchyma_after - wm
    nucleus = box_fraction(sampled["dgm_prior"] - 0.5, spacing)
    nucleus = nucleus * (sampled["depth_mm"] > SULCUS_DEPTH_MM)  # nuclei are deep
    dgm = nucleus * (gm + 0.7 * wm)
    return {"wm": wm * (1.0 - 0.7 * nucleus), "cgm": gm * (1.0 - nucleus), "dgm": dgm,
            "csf": np.clip(brain - parenchyma_after, 0.0, 1.0), "brain": brain}


def depth_at(points_mm):
    """Depth below the template brain surface (mm) at template points [3, ...]."""
    affine, depth, _ = _depth_2mm()
    return interpolate_at_world(resample.stack([depth]), affine, points_mm)[0]


def purity(fractions, brain_mask, threshold=0.95):
    """Share of brain-mask voxels in which one tissue holds more than `threshold`."""
    stack = np.stack([np.asarray(f) for f in fractions.values()])
    total = np.maximum(stack.sum(axis=0), 1e-9)
    top = stack.max(axis=0) / total
    inside = np.asarray(brain_mask) > 0
    return float(np.mean(top[inside] > threshold))
