"""One phantom subject at one site: anatomy -> tissue fractions -> MRF maps and contrasts.

MRF maps come from matching, not from the true parameters: each voxel's fingerprint is the
fraction- and PD-weighted sum of its compartments' fingerprints (simulated at the voxel's
transmit field B1+), times the complex receive field, plus complex noise, matched against
the B1-free dictionary. Partial volume and B1 therefore bias the maps as in a real MRF scan
without B1 correction, which is what makes signal-equation synthesis from the maps fail
(docs/design.md sections 5 and 8).

Fingerprints are handled in the dictionary's rank-k SVD subspace throughout: compression is
linear, so the compressed mixture is the mixture of compressed fingerprints, and white noise
of standard deviation sigma per time point stays white with the same sigma per coefficient.
The noisy complex coefficients are also written out (`mrf_subspace`).

Per-voxel tissue parameters vary smoothly inside each tissue, so there are as many distinct
(T1, T2, B1) as voxels. Every tissue gets a table of compressed fingerprints (and of each
contrast's centre echo) on a grid covering its population range and B1 0.76-1.24 (once per
cohort), and voxels interpolate it trilinearly in (log T1, log T2, B1); the interpolation
error is far below the noise (tests/test_phantom.py measures it).

Weighted contrasts (phantom v2) are sequence simulations (qsnet_jax.physics.sequences): the
TSE echo train by EPG at the site's refocusing angle, its k-space ordering turning the echo
amplitudes into an effective TE and a per-tissue blur along phase encode; T1w as MPRAGE-like
(site A) or spin echo (site B); magnetization transfer; B1+ on every angle; and the image is
formed on a grid 2x finer in-plane, then k-space is truncated to the acquisition matrix
(Gibbs ringing). Each effect can be switched off (`Preset.effects`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import scipy.fft

from data_pipelines.phantom import anatomy, lesion, resample, tissues
from data_pipelines.phantom.presets import Preset
from qsnet_jax.physics import dictionary as mrf_dictionary
from qsnet_jax.physics import epg, mrf, signal, swi

WEIGHTED = ("t1w", "t2w", "t1flair", "t2flair", "swi")
# Systematic MRF differences between scanners (slice profile, gradient timing) as
# multiplicative T1 and T2 factors; per subject a further +-0.5% jitter.
SITE_MRF_BIAS = {"A": (1.0, 1.0), "B": (0.97, 1.05)}
# Iron raises R2' (and so shortens T2*) of deep gray matter: 1/ms per ppm of susceptibility.
R2PRIME_PER_PPM_IRON = 0.07
DICTIONARY_RANK = 10
B0_TESLA = 3.0
FINE = 2  # in-plane refinement of the simulation grid (anatomy, Gibbs)
PHASE_ENCODE_AXIS = 1  # anterior-posterior
B1_RANGE = (0.8, 1.2)
B1_TABLE_HALF_WIDTH = 0.24
# Air minus tissue susceptibility (ppm): air +0.36, tissue -9.05 (Schenck 1996).
AIR_CHI_PPM = 9.4
# Air cavities near the brain (MNI mm): centre, semi-axes. Frontal sinus, ethmoid/sphenoid
# sinuses, and the ear canals / mastoid air cells; they give the frontal and temporal
# dropout of gradient-echo images.
AIR_CAVITIES = (((0.0, 62.0, 8.0), (14.0, 7.0, 11.0)),
                ((0.0, 30.0, -32.0), (10.0, 16.0, 8.0)),
                ((0.0, 2.0, -38.0), (11.0, 10.0, 9.0)),
                ((44.0, -22.0, -42.0), (8.0, 11.0, 8.0)),
                ((-44.0, -22.0, -42.0), (8.0, 11.0, 8.0)))


def b1_axis(table_step: float):
    """B1 values of the tables: 1 +- B1_TABLE_HALF_WIDTH in steps of 2 x table_step."""
    step = 2.0 * table_step
    n = int(np.ceil(B1_TABLE_HALF_WIDTH / step))
    return 1.0 + step * np.arange(-n, n + 1)


@dataclasses.dataclass
class TissueTable:
    """Values [n1, n2, nb, k] on a grid: t1 = t1_lo (1+step)^i, t2 likewise, b1 = b1[m]."""

    t1_lo: float
    t2_lo: float
    step: float
    b1: np.ndarray
    values: np.ndarray

    def interpolate(self, t1_ms, t2_ms, b1=1.0):
        """Trilinear in (log T1, log T2, B1): [V, k]."""
        n1, n2, nb, _ = self.values.shape
        log_step = np.log1p(self.step)
        b1 = np.broadcast_to(np.asarray(b1, np.float64), np.shape(t1_ms))
        fi = np.clip(np.log(t1_ms / self.t1_lo) / log_step, 0.0, n1 - 1.000001)
        fj = np.clip(np.log(t2_ms / self.t2_lo) / log_step, 0.0, n2 - 1.000001)
        fm = np.clip((b1 - self.b1[0]) / (self.b1[1] - self.b1[0]) if nb > 1 else 0 * b1,
                     0.0, max(nb - 1.000001, 0.0))
        i, j, m = fi.astype(int), fj.astype(int), fm.astype(int)
        wi, wj, wm = (fi - i)[:, None], (fj - j)[:, None], (fm - m)[:, None]
        m1 = np.minimum(m + 1, nb - 1)
        c = self.values
        out = 0.0
        for di, a in ((0, 1 - wi), (1, wi)):
            for dj, b in ((0, 1 - wj), (1, wj)):
                out = out + a * b * ((1 - wm) * c[i + di, j + dj, m] + wm * c[i + di, j + dj, m1])
        return out


def _table_grid(table_step: float):
    """Per tissue (t1_lo, t2_lo, n1, n2) and the concatenated (t1, t2, b1) of all entries."""
    axes = {}
    for name in tissues.TISSUE_NAMES:
        (t1_lo, t1_hi), (t2_lo, t2_hi) = tissues.field_bounds(name)
        n1 = int(np.ceil(np.log(t1_hi / t1_lo) / np.log1p(table_step))) + 1
        n2 = int(np.ceil(np.log(t2_hi / t2_lo) / np.log1p(table_step))) + 1
        axes[name] = (t1_lo, t2_lo, n1, n2)
    b1 = b1_axis(table_step)
    grids = [np.meshgrid(lo1 * (1 + table_step) ** np.arange(n1),
                         lo2 * (1 + table_step) ** np.arange(n2), b1, indexing="ij")
             for lo1, lo2, n1, n2 in axes.values()]
    columns = [np.concatenate([g[c].ravel() for g in grids]) for c in range(3)]
    return axes, b1, columns


def _split_tables(values, axes, b1, table_step):
    tables, start = {}, 0
    for name, (lo1, lo2, n1, n2) in axes.items():
        size = n1 * n2 * len(b1)
        block = values[start:start + size].reshape(n1, n2, len(b1), -1)
        tables[name] = TissueTable(lo1, lo2, table_step, b1, block.astype(np.float32))
        start += size
    return tables


@dataclasses.dataclass
class MRFModel:
    schedule: mrf.MRFSchedule
    dictionary: mrf_dictionary.MRFDictionary
    tables: dict  # tissue name -> TissueTable of compressed fingerprints


@functools.lru_cache(maxsize=2)
def mrf_model(num_trs: int, dictionary_step: float, table_step: float,
              num_states) -> MRFModel:
    """Schedule, B1-free matching dictionary and per-tissue fingerprint tables over B1."""
    schedule = mrf.fisp_schedule(num_trs)
    t1, t2, b1 = mrf_dictionary.dictionary_grid(step=dictionary_step)
    # None: the library's default (each tissue keeps the EPG states it needs)
    states = {} if num_states is None else {"num_states": num_states}
    dictionary = mrf_dictionary.build_dictionary(schedule, t1, t2, b1, rank=DICTIONARY_RANK,
                                                 **states)
    axes, b1_values, (t1_all, t2_all, b1_all) = _table_grid(table_step)
    fingerprints = np.asarray(epg.simulate_fisp(schedule, t1_all, t2_all, b1_all, **states))
    compressed = dictionary.compress(fingerprints)
    return MRFModel(schedule, dictionary, _split_tables(compressed, axes, b1_values,
                                                        table_step))


def model_for(preset: Preset) -> MRFModel:
    return mrf_model(preset.num_trs, preset.dictionary_step, preset.table_step,
                     preset.epg_states)


def picklable(model: MRFModel) -> MRFModel:
    """The model without the dictionary's cached device arrays (sent to worker processes)."""
    clean = {k: v for k, v in model.dictionary.__dict__.items() if not k.startswith("_")}
    return MRFModel(model.schedule, type(model.dictionary)(**clean), model.tables)


@dataclasses.dataclass
class SubjectSpec:
    subject: str
    group: str  # healthy | gbm
    site: str  # A | B
    split: str
    seed: tuple  # entropy for np.random.default_rng


def subject_rng(cohort_seed: int, index: int):
    # Per-subject streams: a subject is the same whatever the counts of the others.
    return np.random.default_rng([int(cohort_seed), int(index)])


def _stream(spec: SubjectSpec, name: str):
    """An independent random stream of the subject for one v2 component, so that switching
    an effect off leaves every other draw unchanged."""
    key = int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng(list(spec.seed) + [key])


def simulate_subject(spec: SubjectSpec, preset: Preset, *, model: MRFModel | None = None):
    """All volumes of one subject: dict of float32 [X, Y, Z] arrays (brain_mask and labels
    uint8, labels None for healthy), 'mrf_subspace' [X, Y, Z, 2k], 'affine', and the
    in-memory truth ('fractions', 'healthy_fractions' (before the lesion), 'params',
    'receive_field', 'b1', 'truth': the weighted images without receive field, scale or
    noise)."""
    model = model or model_for(preset)
    effects = preset.effects
    rng = np.random.default_rng(spec.seed)
    params = tissues.draw_tissue_params(rng)
    warp = anatomy.draw_warp(rng)
    lesion_spec = lesion.draw_lesion(rng, warp) if spec.group == "gbm" else None
    if lesion_spec is not None:
        warp.mass_centre = lesion_spec.centre_mm
        warp.mass_radius_mm = lesion_spec.mass_radius_mm
    sharp = anatomy.draw_sharp(_stream(spec, "anatomy"))
    anat = subject_anatomy(rng, warp, lesion_spec, preset, sharp)
    fractions, affine = anat["fractions"], anat["affine"]
    shape = fractions["wm"].shape
    brain_mask = (anat["brain"] >= 0.5).astype(np.uint8)
    fields = parameter_fields(rng, params, fractions, affine, anat["dgm_iron_ppm"])
    bias = anatomy.bias_field(rng, shape, affine, amplitude=rng.uniform(0.2, 0.4))
    b1 = b1_field(_stream(spec, "b1"), shape, affine, brain_mask)
    if "b1" not in effects:
        b1 = np.ones_like(b1)
    out = {"affine": affine, "brain_mask": brain_mask, "fractions": fractions,
           "receive_field": bias, "b1": b1, "fine_fractions": anat["fine_fractions"],
           "healthy_fractions": anat["healthy_fractions"], "params": params,
           "labels": lesion.label_map(fractions) if lesion_spec is not None else None}
    phase = receive_phase(_stream(spec, "phase"), shape, affine)
    out.update(mrf_maps(rng, model, fields, bias * np.exp(1j * phase), b1, brain_mask,
                        spec.site))
    context = {"fields": fields, "params": params, "bias": bias, "b1": b1,
               "brain_mask": brain_mask, "affine": affine, "site": spec.site,
               "fractions": fractions, "table_step": preset.table_step,
               "fine": anat["fine_fractions"], "effects": effects, "warp": warp,
               "brain_fraction": anat["brain"]}
    weighted, truth = weighted_contrasts(rng, context)
    out.update(weighted)
    out["truth"] = truth
    return out


def fine_grid(affine, shape):
    """Affine and shape of the simulation grid: FINE x finer in-plane, same slices; each
    FINE x FINE block of it is one acquisition voxel."""
    fine = affine.copy()
    fine[:3, :2] = affine[:3, :2] / FINE
    fine[:3, 3] = affine[:3, 3] - (affine[:3, 0] + affine[:3, 1]) * (FINE - 1) / (2.0 * FINE)
    return fine, (shape[0] * FINE, shape[1] * FINE, shape[2])


def block_mean(volume):
    """FINE x FINE in-plane block average: the acquisition-grid box integral."""
    x, y, z = volume.shape
    return volume.reshape(x // FINE, FINE, y // FINE, FINE, z).mean(axis=(1, 3)).astype(
        np.float32)


def upsample(volume):
    return np.repeat(np.repeat(volume, FINE, axis=0), FINE, axis=1)


def subject_anatomy(rng, warp, lesion_spec, preset: Preset, sharp):
    """Tissue fractions on the subject grid (cropped in Z to the brain) and on the fine
    simulation grid."""
    template = anatomy.template_at(preset.voxel_mm)
    shape, affine = anatomy.grid_affine(preset.voxel_mm, preset.in_plane, anatomy.MAX_SCALE)
    coords = anatomy.backward_map(warp, shape, affine)
    brain = anatomy.sample(template, ["brain"], coords)["brain"]
    zs = np.nonzero((brain >= 0.5).any(axis=(0, 1)))[0]
    z0, z1 = max(zs[0] - 1, 0), min(zs[-1] + 2, shape[2])
    coords = coords[..., z0:z1]
    affine = affine.copy()
    affine[:3, 3] += affine[:3, 2] * z0
    shape = coords.shape[1:]
    veins = anatomy.vein_fraction(rng, template)
    fine_affine, fine_shape = fine_grid(affine, shape)
    # The backward map is smooth: interpolate it onto the fine grid.
    at = [(np.arange(n) + 0.5) / FINE - 0.5 for n in fine_shape[:2]] + [
        np.arange(fine_shape[2])]
    fine_coords = np.stack([resample.on_grid(c, at, order=1, mode="nearest")
                            for c in coords])
    fine = tissue_model(fine_coords, fine_affine, template, veins,
                        sharp if "anatomy" in preset.effects else None)
    healthy_fine = {name: f.copy() for name, f in fine["fractions"].items()}
    frac = fine["fractions"]
    for name in tissues.LESION_TISSUES:
        frac[name] = np.zeros(fine_shape, np.float32)
    if lesion_spec is not None:
        add_lesion(frac, lesion_spec, fine["brain"], fine_affine)
    coarse = {name: block_mean(f) for name, f in frac.items()}
    dgm = np.maximum(block_mean(fine["dgm_template"]), 1e-6)
    return {"fractions": coarse, "fine_fractions": frac,
            "healthy_fractions": {n: block_mean(f) for n, f in healthy_fine.items()},
            "brain": block_mean(fine["brain"]), "affine": affine,
            "dgm_iron_ppm": block_mean(fine["dgm_iron_ppm"]) / dgm}


def tissue_model(coords, affine, template, veins, sharp):
    """Fractions of wm, cgm, dgm, csf, vein on a grid whose voxels map to template points
    `coords` [3, ...]: the subject's sharp model (`sharp` draws) or, when None, v1's
    population probabilities."""
    names = ["gm", "wm", "csf", "dgm", "dgm_iron_ppm", "brain"]
    if sharp is not None:
        names += ["parenchyma", "wm_prob", "dgm_prior"]
    full = anatomy.mni_template_1mm()
    sampled = anatomy.sample(full, names, coords)
    vein = anatomy.interpolate_at_world(resample.stack([veins]), template.affine, coords)[0]
    if sharp is None:
        brain = sampled["brain"]
        frac = {"wm": sampled["wm"], "cgm": sampled["gm"], "dgm": sampled["dgm"],
                "csf": sampled["csf"]}
    else:
        sampled["depth_mm"] = anatomy.depth_at(coords)
        world = anatomy.world_axes(coords.shape[1:], affine)
        spacing = [abs(float(affine[i, i])) for i in range(3)]
        frac = anatomy.sharp_fractions(sharp, sampled, world, spacing)
        brain = frac.pop("brain")
    # Venous blood displaces the other tissues of its voxels.
    keep = 1.0 - np.minimum(vein / np.maximum(brain, 1e-6), 1.0)
    frac = {name: (f * keep).astype(np.float32) for name, f in frac.items()}
    frac["vein"] = np.minimum(vein, brain).astype(np.float32)
    return {"fractions": frac, "brain": brain.astype(np.float32),
            "dgm_template": sampled["dgm"], "dgm_iron_ppm": sampled["dgm_iron_ppm"]}


def add_lesion(frac, spec, brain, affine):
    """Replace tissue by tumor compartments (in place), then turn parenchyma into edema."""
    tumor = lesion.tumor_fractions(spec, brain.shape, affine)
    total = sum(tumor.values())
    occupied = np.minimum(total, brain)
    keep = 1.0 - occupied / np.maximum(brain, 1e-6)
    for name in tissues.HEALTHY_TISSUES:
        frac[name] *= keep
    scale = np.where(total > 0, occupied / np.maximum(total, 1e-6), 0.0)
    for name, f in tumor.items():
        frac[name] = (f * scale).astype(np.float32)
    # Edema is smooth: its geodesic spread is computed on the acquisition grid.
    coarse = {name: block_mean(frac[name]) for name in ("wm", "cgm", "csf")}
    coarse_affine = affine.copy()
    coarse_affine[:3, :2] *= FINE
    coarse_affine[:3, 3] += (affine[:3, 0] + affine[:3, 1]) * (FINE - 1) / 2.0
    weight = upsample(lesion.edema_weight(spec, block_mean(occupied), coarse["wm"],
                                          coarse["cgm"], coarse["csf"], coarse_affine))
    # Vasogenic edema swells white matter; gray matter is involved less (half as much here).
    edema = weight * (frac["wm"] + 0.5 * (frac["cgm"] + frac["dgm"]))
    frac["wm"] = frac["wm"] * (1.0 - weight)
    frac["cgm"] = frac["cgm"] * (1.0 - 0.5 * weight)
    frac["dgm"] = frac["dgm"] * (1.0 - 0.5 * weight)
    frac["edema"] = edema.astype(np.float32)


def parameter_fields(rng, params, fractions, affine, dgm_iron_ppm):
    """Per tissue, at the voxels that hold it: indices, fraction, T1, T2, T2*, PD, chi."""
    shape = fractions["wm"].shape
    voxel_mm = float(affine[0, 0])
    fields = {}
    for name in tissues.TISSUE_NAMES:  # every tissue draws its fields: stable streams
        where = np.nonzero(fractions[name].ravel() > 1e-4)[0]
        t1_std, t2_std, correlation = tissues.within_tissue(name)
        t1_field = anatomy.smooth_field(rng, shape, voxel_mm, correlation, at=where)
        t2_field = anatomy.smooth_field(rng, shape, voxel_mm, correlation, at=where)
        p = params[name]
        t1 = p.t1_ms * np.exp(t1_std * np.clip(t1_field, -4, 4))
        t2 = p.t2_ms * np.exp(t2_std * np.clip(t2_field, -4, 4))
        chi = np.full(where.shape, p.chi_ppm, np.float32)
        r2prime = np.full(where.shape, p.r2prime_per_ms, np.float32)
        if name == "dgm":  # nucleus-specific iron
            iron = dgm_iron_ppm.ravel()[where]
            chi = chi + iron
            r2prime = r2prime + R2PRIME_PER_PPM_IRON * iron
        fields[name] = {"where": where, "fraction": fractions[name].ravel()[where],
                        "t1_ms": t1.astype(np.float32), "t2_ms": t2.astype(np.float32),
                        "pd": np.float32(p.pd), "chi_ppm": chi,
                        "t2star_ms": (1.0 / (1.0 / t2 + r2prime)).astype(np.float32)}
    return fields


def b1_field(rng, shape, affine, brain_mask):
    """A smooth transmit field B1+ (relative flip scale) as at 3 T in the head: brighter in
    the centre than at the periphery (the dielectric pattern), tilted and perturbed per
    subject, mapped so that the brain spans about B1_RANGE and clipped to it."""
    idx = np.indices(shape, dtype=np.float32)
    centre = np.array([(s - 1) / 2.0 for s in shape]) + rng.normal(0.0, 0.06, 3) * np.array(
        shape)
    voxel = np.array([abs(affine[i, i]) for i in range(3)])
    r2 = sum(((idx[i] - centre[i]) * voxel[i] / rng.uniform(55.0, 75.0)) ** 2
             for i in range(3))
    tilt = sum(rng.normal(0.0, 0.15) * (idx[i] - centre[i]) * voxel[i] / 80.0 for i in range(3))
    raw = np.exp(-0.5 * r2) + tilt + 0.1 * anatomy.smooth_field(
        rng, shape, float(voxel[0]), 60.0)
    inside = raw[brain_mask > 0]
    lo, hi = np.percentile(inside, [1.0, 99.0])
    target_lo, target_hi = rng.uniform(0.80, 0.87), rng.uniform(1.13, 1.20)
    b1 = target_lo + (raw - lo) / max(hi - lo, 1e-6) * (target_hi - target_lo)
    return np.clip(b1, *B1_RANGE).astype(np.float32)


def receive_phase(rng, shape, affine):
    """The smooth phase of the coil-combined receive field (rad): a constant, a tilt and
    a slow random pattern. MRF data are complex; magnitude matching ignores it."""
    idx = np.indices(shape, dtype=np.float32)
    phase = rng.uniform(-np.pi, np.pi) + sum(
        rng.normal(0.0, 1.0) * (idx[i] / shape[i] - 0.5) for i in range(3))
    return (phase + 0.5 * anatomy.smooth_field(rng, shape, float(affine[0, 0]), 60.0)).astype(
        np.float32)


def mrf_maps(rng, model: MRFModel, fields, receive, b1, brain_mask, site):
    """Matched T1, T2 and PD maps (zero outside the brain mask) and the noisy complex
    subspace coefficients the matching saw ('mrf_subspace', float32 [X, Y, Z, 2k])."""
    shape = brain_mask.shape
    inside = np.nonzero(brain_mask.ravel())[0]
    position = np.full(brain_mask.size, -1, np.int64)
    position[inside] = np.arange(inside.size)
    real = np.zeros((inside.size, model.dictionary.rank), np.float32)
    b1_flat = b1.ravel()
    for name, f in fields.items():
        rows = position[f["where"]]
        ok = rows >= 0
        if not ok.any():
            continue
        table = model.tables[name]
        fp = table.interpolate(f["t1_ms"][ok], f["t2_ms"][ok], b1_flat[f["where"][ok]])
        # rows are unique within a tissue, so a fancy-index += is exact (and faster than add.at)
        real[rows[ok]] += (f["fraction"][ok] * f["pd"])[:, None] * fp
    compressed = real * receive.ravel()[inside][:, None]
    # Noise: pure WM at the median receive gain has the drawn SNR (norm of the compressed
    # fingerprint over the norm of the noise in the k coefficients, per real channel).
    wm = model.tables["wm"].values
    wm_fp = wm[wm.shape[0] // 2, wm.shape[1] // 2, wm.shape[2] // 2]
    snr = rng.uniform(30.0, 60.0)
    sigma = 0.70 * np.linalg.norm(wm_fp) / (snr * np.sqrt(compressed.shape[1]))
    noise = rng.normal(0.0, sigma, (2,) + compressed.shape).astype(np.float32)
    compressed = (compressed + noise[0] + 1j * noise[1]).astype(np.complex64)
    matched = mrf_dictionary.match(model.dictionary, compressed)
    t1_bias, t2_bias = SITE_MRF_BIAS[site]
    t1_bias *= 1.0 + rng.normal(0.0, 0.005)
    t2_bias *= 1.0 + rng.normal(0.0, 0.005)
    maps = {}
    for key, name, factor in (("t1_ms", "t1map", t1_bias), ("t2_ms", "t2map", t2_bias),
                              ("pd", "pdmap", 1.0)):
        vol = np.zeros(brain_mask.size, np.float32)
        vol[inside] = np.maximum(matched[key], 0.0) * factor
        maps[name] = vol.reshape(shape)
    coefficients = np.zeros((brain_mask.size, compressed.shape[1]), np.complex64)
    coefficients[inside] = compressed
    coefficients = coefficients.reshape(shape + (compressed.shape[1],))
    maps["mrf_subspace"] = np.concatenate([coefficients.real, coefficients.imag],
                                          axis=-1).astype(np.float32)
    return maps


# ------------------------------------------------------------------ weighted contrasts


@functools.partial(jax.jit, static_argnums=0)
def _synthesize_jit(protocol, pd, t1_ms, t2_ms, t2star_ms):
    return signal.synthesize(protocol, pd, t1_ms, t2_ms, t2star_ms)


def _padded_call(fn, columns):
    """fn(*columns) with the columns padded to a power of two (a handful of jit shapes)."""
    n = columns[0].size
    size = max(4096, 1 << (n - 1).bit_length())
    padded = [np.pad(np.asarray(c, np.float32), (0, size - n), constant_values=1.0)
              for c in columns]
    return np.asarray(fn(*padded))[:n]


def _columns(fields, key):
    return [np.broadcast_to(np.float32(f[key]), f["where"].shape) if np.ndim(f[key]) == 0
            else f[key] for f in fields.values()]


def textbook_signal(protocol, fields):
    """Per tissue, the textbook signal of each of its voxels (PD included): {name: [V_t]}."""
    parts = {n: f for n, f in fields.items() if f["where"].size}
    columns = [np.concatenate(_columns(parts, key)) for key in
               ("pd", "t1_ms", "t2_ms", "t2star_ms")]
    values = _padded_call(lambda *c: _synthesize_jit(protocol, *c), columns)
    return _split(values, parts)


def _split(values, parts):
    out, start = {}, 0
    for name, f in parts.items():
        out[name] = values[start:start + f["where"].size]
        start += f["where"].size
    return out


@functools.lru_cache(maxsize=32)
def sequence_tables(protocol, table_step: float):
    """Per tissue, the centre echo (PD = 1, no MT) of `protocol.sequence` tabulated over
    the tissue's (T1, T2) range and B1 (TissueTable, values [..., 1])."""
    from qsnet_jax.physics import sequences

    axes, b1_values, (t1_all, t2_all, b1_all) = _table_grid(table_step)
    centre = np.asarray(sequences.centre_signal(protocol, 1.0, t1_all, t2_all, b1_all))
    return _split_tables(centre[:, None], axes, b1_values, table_step)


def sequence_signal(protocol, fields, b1, table_step):
    """Per tissue, each voxel's k-space-centre signal of the simulated sequence (signed,
    PD included, no MT)."""
    tables = sequence_tables(protocol, table_step)
    out = {}
    for name, f in fields.items():
        if f["where"].size:
            centre = tables[name].interpolate(f["t1_ms"], f["t2_ms"], b1.ravel()[f["where"]])
            out[name] = f["pd"] * centre[:, 0]
    return out


def mt_factors(protocol, fields):
    """Per tissue, the MT saturation factor of each voxel (1 without an MT sequence)."""
    from qsnet_jax.physics import sequences

    w = getattr(protocol.sequence, "mt_w_per_s", 0.0) if protocol.sequence else 0.0
    out = {}
    for name, f in fields.items():
        if f["where"].size:
            fraction = sequences.TYPICAL_BOUND_POOL_FRACTION.get(name, 0.0)
            out[name] = (_padded_call(functools.partial(sequences.mt_saturation, fraction, w),
                                      [f["t1_ms"]])
                         if w > 0 and fraction > 0 else np.ones(f["where"].size, np.float32))
    return out


def echo_kernels(protocol, params, b1_typical, num_lines):
    """Per tissue, the k-space weighting along phase encode [num_lines] (in fftshift order,
    centre line = num_lines // 2): the echo (or readout) that acquires each line over the
    centre echo, for the tissue's nominal T1, T2 at the typical B1."""
    from qsnet_jax.physics import sequences

    seq = protocol.sequence
    order = sequences.kspace_echo_index(num_lines, _num_echoes(seq), sequences.centre_index(
        protocol), seq.ordering)
    names = list(params)
    t1 = np.array([params[n].t1_ms for n in names], np.float32)
    t2 = np.array([params[n].t2_ms for n in names], np.float32)
    echoes = np.asarray(sequences.simulate_protocol(protocol, 1.0, t1, t2, b1_typical))
    centre = echoes[:, sequences.centre_index(protocol)]
    safe = np.where(np.abs(centre) > 1e-9, centre, 1.0)
    return {n: (echoes[i, order] / safe[i]).astype(np.float32) for i, n in enumerate(names)}


def _num_echoes(seq):
    return seq.etl if hasattr(seq, "etl") else seq.num_readouts


def form_image(per_tissue, fractions, kernels, shape, *, fine: bool):
    """The reconstructed image on the acquisition grid [X, Y, Z] (complex, or real without
    any k-space step) from per-tissue voxel signals (dense, acquisition grid) and fractions
    (fine or acquisition grid): each tissue's k-space is weighted along phase encode by its
    echo kernel (absent or None: none), and a fine grid's k-space is truncated to the
    acquisition matrix (the acquisition voxel centre is between FINE fine voxels: a linear
    phase moves the samples there)."""
    kernels = kernels or {}
    images = {n: (upsample(v) if fine else v) * fractions[n] for n, v in per_tissue.items()}
    if not fine and not any(kernels.get(n) is not None for n in images):
        return sum(images.values())
    ny = shape[PHASE_ENCODE_AXIS]
    groups = [(img, kernels.get(n)) for n, img in images.items()
              if kernels.get(n) is not None]
    plain = [img for n, img in images.items() if kernels.get(n) is None]
    if plain:
        groups.append((sum(plain), None))
    accumulated = 0.0
    for image, kernel in groups:
        spectrum = _centre_crop(scipy.fft.fft(image, axis=PHASE_ENCODE_AXIS, workers=1), ny,
                                PHASE_ENCODE_AXIS)
        if kernel is not None:
            spectrum = spectrum * kernel[None, :, None]
        accumulated = accumulated + spectrum
    if fine:
        accumulated = accumulated * _subsample_shift(ny, ny * FINE)[None, :, None]
    image = scipy.fft.ifft(np.fft.ifftshift(accumulated, axes=PHASE_ENCODE_AXIS),
                           axis=PHASE_ENCODE_AXIS, workers=1)
    if fine:
        nx = shape[0]
        spectrum = _centre_crop(scipy.fft.fft(image, axis=0, workers=1), nx, 0)
        spectrum = spectrum * _subsample_shift(nx, nx * FINE)[:, None, None]
        image = scipy.fft.ifft(np.fft.ifftshift(spectrum, axes=0), axis=0, workers=1)
    return image


def _centre_crop(spectrum, size, axis):
    """The `size` central frequencies of an FFT along `axis`, centred (DC at size // 2):
    fftshift then crop, done as two slices of the unshifted spectrum (negative frequencies,
    then DC and the positive ones), which copies only what is kept."""
    n = spectrum.shape[axis]
    negative, positive = size // 2, size - size // 2

    def part(start, stop):
        index = [slice(None)] * spectrum.ndim
        index[axis] = slice(start, stop)
        return spectrum[tuple(index)]
    return np.concatenate([part(n - negative, n), part(0, positive)], axis=axis)


def _subsample_shift(size, fine_size):
    """Per centred frequency: the 1/FINE amplitude of a truncation to size/fine_size and the
    linear phase that samples at the acquisition voxel centres, (FINE - 1) / 2 fine voxels
    after the first fine voxel centre."""
    k = np.arange(size) - size // 2
    return np.exp(2j * np.pi * k * (FINE - 1) / 2.0 / fine_size) / FINE


def weighted_contrasts(rng, ctx):
    """The five weighted images with receive field, global scale and noise; and the truth
    (the noise-free acquisition without receive field or scale)."""
    protocols = signal.site_protocols(ctx["site"])
    shape = ctx["brain_mask"].shape
    images, truth = {}, {}
    for name in WEIGHTED:
        protocol = protocols[name]
        clean = contrast_image(name, protocol, ctx)
        truth[name] = np.abs(clean).astype(np.float32)
        scale = float(np.exp(rng.uniform(np.log(300.0), np.log(3000.0))))
        snr = rng.uniform(30.0, 60.0)
        wm_level = _white_matter_level(truth[name], ctx, protocol)
        sigma = scale * wm_level / snr
        noise = rng.normal(0.0, sigma, (2,) + shape).astype(np.float32)
        if name != "swi":
            measured = scale * ctx["bias"] * clean + noise[0] + 1j * noise[1]
            images[name] = np.abs(measured).astype(np.float32)
            continue
        images[name], truth[name] = swi_image(scale * ctx["bias"] * np.abs(clean), noise, ctx,
                                              protocol, sigma_free=scale)
    return images, truth


def contrast_image(name, protocol, ctx):
    """The noise-free image of one contrast (complex or real, signed before |.|)."""
    fields, effects, b1 = ctx["fields"], ctx["effects"], ctx["b1"]
    shape = ctx["brain_mask"].shape
    sequence = protocol.sequence is not None and (
        ("tse" in effects and name in ("t2w", "t1flair", "t2flair"))
        or ("t1_sequence" in effects and name == "t1w"))
    if name == "swi":
        per_voxel = gre_signal(protocol, fields, b1)
    elif sequence:
        per_voxel = sequence_signal(protocol, fields, b1, ctx["table_step"])
    else:
        per_voxel = textbook_signal(protocol, fields)
    if "mt" in effects and name != "swi" and protocol.sequence is not None:
        factors = mt_factors(protocol, fields)
        per_voxel = {n: v * factors[n] for n, v in per_voxel.items()}
    dense = {}
    for tissue, values in per_voxel.items():
        volume = np.zeros(int(np.prod(shape)), np.float32)
        volume[fields[tissue]["where"]] = values
        dense[tissue] = volume.reshape(shape)
    kernels = None
    if sequence:
        b1_typical = float(np.median(b1[ctx["brain_mask"] > 0]))
        # Every tissue's kernel (one compiled shape whichever tissues the subject has).
        kernels = echo_kernels(protocol, ctx["params"], b1_typical, shape[PHASE_ENCODE_AXIS])
    fine = "gibbs" in effects
    fractions = ctx["fine"] if fine else ctx["fractions"]
    return form_image(dense, fractions, kernels, shape, fine=fine)


def gre_signal(protocol, fields, b1):
    """Per tissue, the spoiled-GRE magnitude of each voxel at its B1-scaled flip angle."""
    parts = {n: f for n, f in fields.items() if f["where"].size}
    columns = [np.concatenate(_columns(parts, key)) for key in
               ("pd", "t1_ms", "t2star_ms")]
    flip = np.concatenate([protocol.flip_deg * b1.ravel()[f["where"]] for f in parts.values()])

    def fn(pd, t1, t2star, flip_deg):
        return signal.gre_magnitude(pd, t1, t2star, protocol.tr_ms, protocol.te_ms, flip_deg)
    return _split(_padded_call(jax.jit(fn), columns + [flip]), parts)


def _white_matter_level(image, ctx, protocol):
    """The median noise-free signal of nearly pure white matter in `image`: the level the SNR
    is defined against. Taken from the simulated acquisition itself, since a sequence (an
    MPRAGE's small-flip readout, say) can sit far below the textbook equation's level; the
    textbook value stands in only when a subject has no such voxel."""
    pure_wm = (ctx["fractions"]["wm"] > 0.95) & (ctx["brain_mask"] > 0)
    if np.count_nonzero(pure_wm) >= 10:
        return max(float(np.median(image[pure_wm])), 1e-6)
    return _pure_wm_signal(protocol, ctx["params"])


def _pure_wm_signal(protocol, params):
    """Signal of the subject's nominal WM (closed form in numpy: no jit per scalar)."""
    wm = params["wm"]
    t2star = 1.0 / (1.0 / wm.t2_ms + wm.r2prime_per_ms)
    e1 = np.exp(-protocol.tr_ms / wm.t1_ms)
    if protocol.kind == "spin_echo":
        s = (1.0 - e1) * np.exp(-protocol.te_ms / wm.t2_ms)
    elif protocol.kind == "inversion_recovery":
        s = abs(1.0 - 2.0 * np.exp(-protocol.ti_ms / wm.t1_ms) + e1) * np.exp(
            -protocol.te_ms / wm.t2_ms)
    else:
        a = np.deg2rad(protocol.flip_deg)
        s = np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-protocol.te_ms / t2star)
    return max(float(wm.pd * s), 1e-6)


def susceptibility(ctx, *, background: bool):
    """Susceptibility (ppm, relative to cortex) on the acquisition grid: the tissues', plus
    (background) air in the sinuses and ear canals, outside the brain."""
    fields, shape = ctx["fields"], ctx["brain_mask"].shape
    chi = np.zeros(int(np.prod(shape)), np.float32)
    for f in fields.values():
        chi[f["where"]] += f["fraction"] * f["chi_ppm"]
    chi = chi.reshape(shape)
    if background:
        chi = chi + AIR_CHI_PPM * air_fraction(ctx["warp"], ctx["affine"], shape) * (
            1.0 - np.clip(ctx["brain_fraction"], 0.0, 1.0))
    return chi


def air_fraction(warp, affine, shape):
    """Soft-edged ellipsoids of air at the subject's sinuses and ear canals."""
    world = anatomy._world_coords(shape, affine)
    air = np.zeros(shape, np.float32)
    for centre, semi_axes in AIR_CAVITIES:
        c = warp.to_subject(np.array(centre))
        rho = np.sqrt(sum(((world[i] - c[i]) / semi_axes[i]) ** 2 for i in range(3)))
        air = np.maximum(air, np.clip((1.0 - rho) * 4.0 + 0.5, 0.0, 1.0))
    return air


def swi_image(magnitude, noise, ctx, protocol, *, sigma_free):
    """Complex GRE with the dipole phase of the susceptibility map (and, with the effect on,
    the background field of the air cavities and its intra-voxel dephasing), noise added in
    the complex domain; then the SWI processing of the noisy data (high-pass phase, phase
    mask to the 4th power). Returns (SWI, noise-free SWI)."""
    affine, brain_mask = ctx["affine"], ctx["brain_mask"]
    voxel = tuple(float(abs(affine[i, i])) for i in range(3))
    background = "swi_background" in ctx["effects"]
    chi = susceptibility(ctx, background=background)
    # Pad so that the air cavities below the brain's lowest slice still act on it.
    pad = [(8, 8), (8, 8), (12, 4)]
    field_ppm = np.asarray(swi.field_from_susceptibility(np.pad(chi, pad), voxel))
    field_ppm = field_ppm[8:-8, 8:-8, 12:-4]
    phase = np.asarray(swi.phase_from_field(field_ppm, protocol.te_ms, b0_tesla=B0_TESLA))
    if background:  # intra-voxel dephasing: sinc of the phase change across the voxel
        for axis in range(3):
            magnitude = magnitude * np.abs(np.sinc(np.gradient(phase, axis=axis) / (2 * np.pi)))
    outputs = []
    for with_noise in (True, False):
        complex_image = magnitude * np.exp(1j * phase)
        if with_noise:
            complex_image = complex_image + noise[0] + 1j * noise[1]
        measured_phase = np.angle(complex_image).astype(np.float32)
        magnitude_measured = np.abs(complex_image).astype(np.float32)
        local_phase = swi.highpass_phase(measured_phase, brain_mask, voxel_size_mm=voxel,
                                         magnitude=magnitude_measured)
        out = np.asarray(swi.swi(magnitude_measured, local_phase, power=4), np.float32)
        outputs.append(out if with_noise else out / (sigma_free * ctx["bias"]))
    return outputs[0], outputs[1]
