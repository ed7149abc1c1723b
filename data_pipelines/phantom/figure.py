"""Subjects at a glance: T1/T2/PD maps, the five contrasts and the label map, one row each.

    python -m data_pipelines.phantom.figure --cohort DIR --subject sub-001,sub-004 --out fig.png

The axial slice goes through the tumor (largest lesion area) or, for a healthy subject, the
middle of the brain. Slices are shown with np.rot90 (anterior up).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

PANELS = (("t1map", "T1 map (ms)"), ("t2map", "T2 map (ms)"), ("pdmap", "PD (relative)"),
          ("t1w", "T1w (a.u.)"), ("t2w", "T2w (a.u.)"), ("t1flair", "T1-FLAIR (a.u.)"),
          ("t2flair", "T2-FLAIR (a.u.)"), ("swi", "SWI (a.u.)"), ("labels", "labels"))
DISPLAY_RANGE_MS = {"t1map": (0.0, 4500.0), "t2map": (0.0, 300.0)}


def _row(cohort_dir, subject):
    with open(os.path.join(cohort_dir, "manifest.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["subject"] == subject:
                return row
    raise ValueError(f"subject {subject!r} is not in {cohort_dir}/manifest.csv")


def _load_subject(cohort_dir, subject):
    import nibabel as nib

    row = _row(cohort_dir, subject)
    volumes = {}
    for name, _ in PANELS + (("brain_mask", ""),):
        if row.get(name):
            volumes[name] = np.asarray(nib.load(os.path.join(cohort_dir, row[name])).dataobj)
    return row, volumes


def _default_slice(volumes):
    mask = volumes["brain_mask"] > 0
    labels = volumes.get("labels")
    area = (labels > 0).sum(axis=(0, 1)) if labels is not None else None
    if area is not None and area.max() > 0:
        return int(np.argmax(area))
    # a slice through the lateral ventricles and the basal ganglia (~55% up the brain)
    zs = np.nonzero(mask.any(axis=(0, 1)))[0]
    return int(zs[0] + 0.55 * (zs[-1] - zs[0]))


def render_subject(cohort_dir: str, subject: str, out_png: str, *, slice_index=None) -> str:
    return render_subjects(cohort_dir, [subject], out_png,
                           slice_indices=None if slice_index is None else [slice_index])


def render_subjects(cohort_dir: str, subjects, out_png: str, *, slice_indices=None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qsnet_jax.io import staged_file

    fig, grid = plt.subplots(len(subjects), len(PANELS),
                             figsize=(2.3 * len(PANELS), 3.0 * len(subjects)), squeeze=False)
    for r, subject in enumerate(subjects):
        row, volumes = _load_subject(cohort_dir, subject)
        mask = volumes["brain_mask"] > 0
        z = _default_slice(volumes) if slice_indices is None else slice_indices[r]
        for ax, (name, title) in zip(grid[r], PANELS, strict=True):
            ax.axis("off")
            ax.set_title(title if r == 0 else "", fontsize=9)
            if name not in volumes:
                ax.text(0.5, 0.5, "healthy:\nno lesion", ha="center", va="center")
                continue
            image = np.rot90(volumes[name][:, :, z])
            if name == "labels":
                ax.imshow(np.rot90(volumes["t2flair"][:, :, z]), cmap="gray",
                          vmax=float(np.percentile(volumes["t2flair"][mask], 99.5)))
                ax.imshow(np.ma.masked_equal(image, 0), cmap="brg", vmin=1, vmax=3,
                          interpolation="nearest", alpha=0.8)
                continue
            lo, hi = DISPLAY_RANGE_MS.get(name, (0.0, float(np.percentile(
                volumes[name][mask], 99.5))))
            shown = ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        grid[r][0].text(-0.08, 0.5, f"{subject}\n{row['group']}, site {row['site']}\nz={z}",
                        transform=grid[r][0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("Phantom v2 (axial, anterior up, patient right on the right); labels: "
                 "1 necrosis, 2 edema, 3 enhancing", fontsize=10)
    fig.tight_layout()
    with staged_file(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out_png


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.phantom.figure")
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--subject", required=True, help="one id or several, comma-separated")
    parser.add_argument("--out", required=True)
    parser.add_argument("--slice", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        subjects = [x for x in args.subject.split(",") if x]
        render_subjects(args.cohort, subjects, args.out,
                        slice_indices=None if args.slice is None else [args.slice] * len(
                            subjects))
    except (OSError, ValueError) as error:
        print(f"phantom.figure: {error}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
