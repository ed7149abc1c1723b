"""One phantom subject at one site: anatomy -> tissue fractions -> MRF maps and contrasts.

MRF maps come from matching, not from the true parameters: each voxel's fingerprint is the
fraction- and PD-weighted sum of its compartments' fingerprints, times the receive field,
plus noise, matched against the dictionary. Partial volume therefore biases the maps exactly
as in a real MRF scan (a GM/CSF voxel maps to one intermediate (T1, T2)), which is what makes
signal-equation synthesis from the maps fail at tissue borders (DESIGN.md section 5).

Fingerprints are handled in the dictionary's rank-k SVD subspace throughout: compression is
linear, so the compressed mixture is the mixture of compressed fingerprints, and white noise
of standard deviation sigma per time point stays white with the same sigma per coefficient.
Matching in that subspace (as the dictionary does) sees exactly what it would see from the
full-length noisy fingerprint.

Per-voxel tissue parameters vary smoothly inside each tissue, so there are as many distinct
(T1, T2) as voxels. Instead of simulating each, every tissue gets a fingerprint table on a
log-spaced (T1, T2) grid covering its whole population range (once per cohort), and voxels
interpolate it bilinearly in (log T1, log T2); fingerprints are smooth in both, and the
interpolation error is far below the noise (tests/test_phantom.py measures it).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from data_pipelines.phantom import anatomy, lesion, tissues
from data_pipelines.phantom.presets import Preset
from qsnet_jax.physics import dictionary as mrf_dictionary
from qsnet_jax.physics import epg, mrf, signal, swi

WEIGHTED = ("t1w", "t2w", "t1flair", "t2flair", "swi")
# Systematic MRF differences between scanners (B1 calibration, slice profile, gradient
# timing) as multiplicative T1 and T2 factors; per subject a further +-0.5% jitter.
SITE_MRF_BIAS = {"A": (1.0, 1.0), "B": (0.97, 1.05)}
# Iron raises R2' (and so shortens T2*) of deep gray matter: 1/ms per ppm of susceptibility.
R2PRIME_PER_PPM_IRON = 0.07
DICTIONARY_RANK = 10
B0_TESLA = 3.0


@dataclasses.dataclass
class TissueTable:
    """Compressed fingerprints [n1, n2, k] on a log grid: t1 = t1_lo (1+step)^i, same for t2."""

    t1_lo: float
    t2_lo: float
    step: float
    compressed: np.ndarray

    def interpolate(self, t1_ms, t2_ms):
        """Bilinear in (log T1, log T2): [V, k]."""
        n1, n2, _ = self.compressed.shape
        log_step = np.log1p(self.step)
        fi = np.clip(np.log(t1_ms / self.t1_lo) / log_step, 0.0, n1 - 1.000001)
        fj = np.clip(np.log(t2_ms / self.t2_lo) / log_step, 0.0, n2 - 1.000001)
        i, j = fi.astype(int), fj.astype(int)
        wi, wj = (fi - i)[:, None], (fj - j)[:, None]
        c = self.compressed
        return ((1 - wi) * (1 - wj) * c[i, j] + wi * (1 - wj) * c[i + 1, j]
                + (1 - wi) * wj * c[i, j + 1] + wi * wj * c[i + 1, j + 1])


@dataclasses.dataclass
class MRFModel:
    schedule: mrf.MRFSchedule
    dictionary: mrf_dictionary.MRFDictionary
    tables: dict  # tissue name -> TissueTable


@functools.lru_cache(maxsize=2)
def mrf_model(num_trs: int, dictionary_step: float, table_step: float,
              num_states: int) -> MRFModel:
    """Schedule, matching dictionary and per-tissue fingerprint tables (once per cohort)."""
    schedule = mrf.fisp_schedule(num_trs)
    t1, t2, b1 = mrf_dictionary.dictionary_grid(step=dictionary_step)
    dictionary = mrf_dictionary.build_dictionary(schedule, t1, t2, b1, rank=DICTIONARY_RANK,
                                                 num_states=num_states)
    axes = {}
    for name in tissues.TISSUE_NAMES:
        (t1_lo, t1_hi), (t2_lo, t2_hi) = tissues.field_bounds(name)
        n1 = int(np.ceil(np.log(t1_hi / t1_lo) / np.log1p(table_step))) + 1
        n2 = int(np.ceil(np.log(t2_hi / t2_lo) / np.log1p(table_step))) + 1
        axes[name] = (t1_lo, t2_lo, n1, n2)
    grids = [np.meshgrid(lo1 * (1 + table_step) ** np.arange(n1),
                         lo2 * (1 + table_step) ** np.arange(n2), indexing="ij")
             for lo1, lo2, n1, n2 in axes.values()]
    t1_all = np.concatenate([g[0].ravel() for g in grids])
    t2_all = np.concatenate([g[1].ravel() for g in grids])
    fingerprints = np.asarray(epg.simulate_fisp(schedule, t1_all, t2_all,
                                                num_states=num_states))
    compressed = dictionary.compress(fingerprints)
    tables, start = {}, 0
    for name, (lo1, lo2, n1, n2) in axes.items():
        block = compressed[start:start + n1 * n2].reshape(n1, n2, -1)
        tables[name] = TissueTable(lo1, lo2, table_step, block.astype(np.float32))
        start += n1 * n2
    return MRFModel(schedule, dictionary, tables)


def model_for(preset: Preset) -> MRFModel:
    return mrf_model(preset.num_trs, preset.dictionary_step, preset.table_step,
                     preset.epg_states)


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


def simulate_subject(spec: SubjectSpec, preset: Preset, *, model: MRFModel | None = None):
    """All volumes of one subject: dict of float32 [X, Y, Z] arrays (brain_mask and labels
    uint8, labels None for healthy), 'affine', and the in-memory truth ('fractions',
    'healthy_fractions' (before the lesion), 'params', 'receive_field', 'truth': the
    weighted images without receive field, scale or noise)."""
    model = model or model_for(preset)
    rng = np.random.default_rng(spec.seed)
    params = tissues.draw_tissue_params(rng)
    warp = anatomy.draw_warp(rng)
    lesion_spec = lesion.draw_lesion(rng, warp) if spec.group == "gbm" else None
    if lesion_spec is not None:
        warp.mass_centre = lesion_spec.centre_mm
        warp.mass_radius_mm = lesion_spec.mass_radius_mm
    anat = subject_anatomy(rng, warp, lesion_spec, preset)
    fractions, affine = anat["fractions"], anat["affine"]
    shape = fractions["wm"].shape
    brain_mask = (anat["brain"] >= 0.5).astype(np.uint8)
    fields = parameter_fields(rng, params, fractions, affine, anat["dgm_iron_ppm"])
    bias = anatomy.bias_field(rng, shape, affine, amplitude=rng.uniform(0.2, 0.4))
    out = {"affine": affine, "brain_mask": brain_mask, "fractions": fractions,
           "receive_field": bias,
           "healthy_fractions": anat["healthy_fractions"], "params": params,
           "labels": lesion.label_map(fractions) if lesion_spec is not None else None}
    out.update(mrf_maps(rng, model, fields, fractions, bias, brain_mask, spec.site))
    weighted, truth = weighted_contrasts(rng, fields, params, bias, brain_mask, affine,
                                         spec.site)
    out.update(weighted)
    out["truth"] = truth
    return out


def subject_anatomy(rng, warp, lesion_spec, preset: Preset):
    """Tissue fractions on the subject grid, cropped in Z to the brain."""
    template = anatomy.template_at(preset.voxel_mm)
    shape, affine = anatomy.grid_affine(preset.voxel_mm, preset.in_plane, anatomy.MAX_SCALE)
    coords = anatomy.backward_map(warp, shape, affine)
    brain = anatomy.sample(template, "brain", coords)
    zs = np.nonzero((brain >= 0.5).any(axis=(0, 1)))[0]
    z0, z1 = max(zs[0] - 1, 0), min(zs[-1] + 2, shape[2])
    coords, brain = coords[..., z0:z1], brain[..., z0:z1]
    affine = affine.copy()
    affine[:3, 3] += affine[:3, 2] * z0
    veins = anatomy.vein_fraction(rng, template)
    template.volumes["vein"] = veins  # sampled like the others, then dropped
    try:
        sampled = {name: anatomy.sample(template, name, coords)
                   for name in ("gm", "wm", "csf", "dgm", "dgm_iron_ppm", "vein")}
    finally:
        del template.volumes["vein"]
    frac = {"wm": sampled["wm"], "cgm": sampled["gm"], "dgm": sampled["dgm"],
            "csf": sampled["csf"]}
    # Venous blood displaces the other tissues of its voxels.
    keep = 1.0 - np.minimum(sampled["vein"] / np.maximum(brain, 1e-6), 1.0)
    frac = {name: f * keep for name, f in frac.items()}
    frac["vein"] = np.minimum(sampled["vein"], brain)
    healthy = {name: f.copy() for name, f in frac.items()}
    for name in tissues.LESION_TISSUES:
        frac[name] = np.zeros_like(brain)
    if lesion_spec is not None:
        add_lesion(frac, lesion_spec, brain, affine)
    dgm = np.maximum(sampled["dgm"], 1e-6)
    return {"fractions": frac, "healthy_fractions": healthy, "brain": brain,
            "affine": affine, "dgm_iron_ppm": sampled["dgm_iron_ppm"] / dgm}


def add_lesion(frac, spec, brain, affine):
    """Replace tissue by tumor compartments (in place), then turn parenchyma into edema."""
    tumor = lesion.tumor_fractions(spec, brain.shape, affine)
    occupied = np.minimum(sum(tumor.values()), brain)
    keep = 1.0 - occupied / np.maximum(brain, 1e-6)
    for name in tissues.HEALTHY_TISSUES:
        frac[name] *= keep
    scale = np.where(sum(tumor.values()) > 0, occupied / np.maximum(sum(tumor.values()),
                                                                    1e-6), 0.0)
    for name, f in tumor.items():
        frac[name] = (f * scale).astype(np.float32)
    weight = lesion.edema_weight(spec, occupied, frac["wm"], frac["cgm"], frac["csf"], affine)
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
        t1_field = anatomy.smooth_field(rng, shape, voxel_mm, 25.0, at=where)
        t2_field = anatomy.smooth_field(rng, shape, voxel_mm, 25.0, at=where)
        p = params[name]
        t1 = p.t1_ms * np.exp(tissues.WITHIN_TISSUE_T1_STD * np.clip(t1_field, -4, 4))
        t2 = p.t2_ms * np.exp(tissues.WITHIN_TISSUE_T2_STD * np.clip(t2_field, -4, 4))
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


def mrf_maps(rng, model: MRFModel, fields, fractions, bias, brain_mask, site):
    """Matched T1, T2 and PD maps (zero outside the brain mask)."""
    shape = brain_mask.shape
    inside = np.nonzero(brain_mask.ravel())[0]
    position = np.full(brain_mask.size, -1, np.int64)
    position[inside] = np.arange(inside.size)
    compressed = np.zeros((inside.size, model.dictionary.rank), np.float32)
    for name, f in fields.items():
        rows = position[f["where"]]
        ok = rows >= 0
        if not ok.any():
            continue
        table = model.tables[name]
        fp = table.interpolate(f["t1_ms"][ok], f["t2_ms"][ok])
        # rows are unique within a tissue, so a fancy-index += is exact (and faster than add.at)
        compressed[rows[ok]] += (f["fraction"][ok] * f["pd"])[:, None] * fp
    compressed *= bias.ravel()[inside][:, None]
    # Noise: pure WM at the median receive gain has the drawn SNR (norm of the compressed
    # fingerprint over the norm of the noise in the k coefficients).
    wm = model.tables["wm"]
    wm_fp = wm.compressed[wm.compressed.shape[0] // 2, wm.compressed.shape[1] // 2]
    snr = rng.uniform(30.0, 60.0)
    sigma = 0.70 * np.linalg.norm(wm_fp) / (snr * np.sqrt(compressed.shape[1]))
    compressed += rng.normal(0.0, sigma, compressed.shape).astype(np.float32)
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
    return maps


@functools.partial(jax.jit, static_argnums=0)
def _synthesize_jit(protocol, pd, t1_ms, t2_ms, t2star_ms):
    return signal.synthesize(protocol, pd, t1_ms, t2_ms, t2star_ms)


def tissue_signal(protocol, fields, shape):
    """Fraction-weighted sum of per-tissue signals (no bias, no noise).

    All tissues' voxels go through the signal equation in one call, padded to a power of two
    so that jit compiles a handful of shapes per cohort instead of one per array.
    """
    parts = [f for f in fields.values() if f["where"].size]
    columns = [np.concatenate([np.broadcast_to(np.float32(f[key]), f["where"].shape)
                               if np.ndim(f[key]) == 0 else f[key] for f in parts])
               for key in ("pd", "t1_ms", "t2_ms", "t2star_ms")]
    n = columns[0].size
    size = max(4096, 1 << (n - 1).bit_length())
    padded = [np.pad(c, (0, size - n), constant_values=1.0) for c in columns]
    values = np.asarray(_synthesize_jit(protocol, *padded))[:n]
    total = np.zeros(int(np.prod(shape)), np.float32)
    start = 0
    for f in parts:
        stop = start + f["where"].size
        total[f["where"]] += f["fraction"] * values[start:stop]
        start = stop
    return total.reshape(shape)


def weighted_contrasts(rng, fields, params, bias, brain_mask, affine, site):
    """The five weighted images with receive field, global scale and noise; and the truth
    (fraction-weighted signals without field or noise)."""
    protocols = signal.site_protocols(site)
    shape = brain_mask.shape
    images, truth = {}, {}
    chi = np.zeros(int(np.prod(shape)), np.float32)
    for f in fields.values():
        chi[f["where"]] += f["fraction"] * f["chi_ppm"]
    chi = chi.reshape(shape)
    for name in WEIGHTED:
        protocol = protocols[name]
        clean = tissue_signal(protocol, fields, shape)
        truth[name] = clean
        scale = float(np.exp(rng.uniform(np.log(300.0), np.log(3000.0))))
        snr = rng.uniform(30.0, 60.0)
        wm_level = _pure_wm_signal(protocol, params)
        sigma = scale * wm_level / snr
        magnitude = scale * bias * clean
        noise = rng.normal(0.0, sigma, (2,) + shape).astype(np.float32)
        if name != "swi":
            images[name] = np.hypot(magnitude + noise[0], noise[1]).astype(np.float32)
            continue
        images[name] = swi_image(magnitude, noise, chi, affine, protocol, brain_mask)
    return images, truth


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


def swi_image(magnitude, noise, chi_ppm, affine, protocol, brain_mask):
    """Complex GRE with the dipole phase of the susceptibility map, noise added in the
    complex domain; then the SWI processing of the noisy data (high-pass phase, phase mask
    to the 4th power)."""
    voxel = tuple(float(abs(affine[i, i])) for i in range(3))
    field_ppm = np.asarray(swi.field_from_susceptibility(chi_ppm, voxel))
    phase = np.asarray(swi.phase_from_field(field_ppm, protocol.te_ms, b0_tesla=B0_TESLA))
    complex_image = magnitude * np.exp(1j * phase) + noise[0] + 1j * noise[1]
    measured_phase = np.angle(complex_image).astype(np.float32)
    magnitude_measured = np.abs(complex_image).astype(np.float32)
    local_phase = swi.highpass_phase(measured_phase, brain_mask, voxel_size_mm=voxel,
                                     magnitude=magnitude_measured)
    out = swi.swi(magnitude_measured, local_phase, power=4)
    return np.asarray(out, np.float32)
