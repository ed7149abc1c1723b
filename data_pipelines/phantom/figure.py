"""One subject at a glance: T1/T2/PD maps, the five contrasts and the label map.

    python -m data_pipelines.phantom.figure --cohort DIR --subject sub-004 --out fig.png

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


def render_subject(cohort_dir: str, subject: str, out_png: str, *, slice_index=None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    row = _row(cohort_dir, subject)
    volumes = {}
    for name, _ in PANELS + (("brain_mask", ""),):
        if row.get(name):
            volumes[name] = np.asarray(nib.load(os.path.join(cohort_dir, row[name])).dataobj)
    mask = volumes["brain_mask"] > 0
    if slice_index is None:
        labels = volumes.get("labels")
        area = (labels > 0).sum(axis=(0, 1)) if labels is not None else None
        if area is not None and area.max() > 0:
            slice_index = int(np.argmax(area))
        else:
            slice_index = int(np.argmax(mask.sum(axis=(0, 1))) * 0.9 + mask.shape[2] * 0.05)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(2.3 * len(PANELS), 3.2))
    for ax, (name, title) in zip(axes, PANELS, strict=True):
        ax.axis("off")
        ax.set_title(title, fontsize=9)
        if name not in volumes:
            ax.text(0.5, 0.5, "healthy:\nno lesion", ha="center", va="center")
            continue
        image = np.rot90(volumes[name][:, :, slice_index])
        if name == "labels":
            ax.imshow(np.rot90(volumes["t2flair"][:, :, slice_index]), cmap="gray")
            ax.imshow(np.ma.masked_equal(image, 0), cmap="brg", vmin=1, vmax=3,
                      interpolation="nearest", alpha=0.8)
            continue
        lo, hi = DISPLAY_RANGE_MS.get(name, (0.0, float(np.percentile(
            volumes[name][mask], 99.5))))
        shown = ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(f"{subject} ({row['group']}, site {row['site']}, {row['split']}), "
                 f"axial slice z={slice_index}; labels: 1 necrosis, 2 edema, 3 enhancing",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.phantom.figure")
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--slice", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        render_subject(args.cohort, args.subject, args.out, slice_index=args.slice)
    except (OSError, ValueError) as error:
        print(f"phantom.figure: {error}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
