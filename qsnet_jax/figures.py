"""Figures of synthesized contrasts: per-subject grids and model comparisons.

Conventions: axial slice ``volume[:, :, z]`` shown as ``np.rot90`` (anterior up); images in
their normalized range on a fixed gray scale [0, 1]; absolute errors on one fixed scale
``[0, error_vmax]`` for every panel of a figure (and, with the default, of every figure), so
that panels and figures can be compared by eye. The slice goes through the tumor centroid, or
through the middle of the brain for a healthy subject; a subject with a tumor gets extra rows
cropped around the lesion's bounding box in that slice.

Functions return ``matplotlib.figure.Figure`` objects built without pyplot (no global state,
no display backend); ``png_bytes`` renders one for the caller to write.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from qsnet_jax.evaluation import contrast_title

ERROR_VMAX = 0.25  # absolute-error colour scale, in units of the normalized range
# The uncertainty row shows the interval half-width on the error row's scale: a calibrated
# half-width should look like the error map where the model errs, and be no darker.
PANEL_INCHES = 2.0
LABEL_COLORS = ListedColormap(["#00000000", "#e41a1c", "#ffd92f", "#4daf4a"])  # 0 1 2 3


def figure_slice(brain_mask, labels=None) -> int:
    """The axial slice through the tumor centroid, else through the brain's centroid."""
    brain_mask = np.asarray(brain_mask) > 0
    if labels is not None and np.any(np.asarray(labels) > 0):
        region = (np.asarray(labels) > 0) & brain_mask
        if not region.any():
            region = np.asarray(labels) > 0
    else:
        region = brain_mask
    if not region.any():
        return brain_mask.shape[2] // 2
    return int(round(float(np.nonzero(region)[2].mean())))


def display(slice_2d) -> np.ndarray:
    """An axial slice ``[X, Y]`` as shown: rotated 90° (anterior up)."""
    return np.rot90(np.asarray(slice_2d))


def lesion_box(shown_labels, *, margin: int = 6, min_size: int = 24):
    """``(row0, row1, col0, col1)`` of a square crop around the lesion in a displayed slice.

    The box holds the lesion's bounding box plus ``margin`` pixels, is at least ``min_size``
    pixels wide (or the whole slice if smaller), and stays inside the slice. None without
    lesion pixels.
    """
    rows, cols = np.nonzero(np.asarray(shown_labels) > 0)
    if rows.size == 0:
        return None
    height, width = np.asarray(shown_labels).shape
    size = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) + 2 * margin
    size = int(min(max(size, min_size), height, width))
    centre_r = (rows.min() + rows.max() + 1) // 2
    centre_c = (cols.min() + cols.max() + 1) // 2
    r0 = int(np.clip(centre_r - size // 2, 0, height - size))
    c0 = int(np.clip(centre_c - size // 2, 0, width - size))
    return r0, r0 + size, c0, c0 + size


def _hide_axes(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _image(ax, image, *, cmap="gray", vmin=0.0, vmax=1.0, title=None, box=None):
    artist = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=9)
    if box is not None:
        r0, r1, c0, c1 = box
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False,
                               edgecolor="#00bfff", linewidth=1.0))
    _hide_axes(ax)
    return artist


def _crop(image, box):
    r0, r1, c0, c1 = box
    return image[r0:r1, c0:c1]


def _prepare(volume, brain_mask, z):
    """Displayed slice z of every channel of ``[X, Y, Z, C]``, background zeroed."""
    volume = np.asarray(volume, dtype=np.float32)
    mask = np.asarray(brain_mask)[:, :, z] > 0
    return [display(np.where(mask, volume[:, :, z, c], 0.0)) for c in range(volume.shape[-1])]


def subject_figure(inputs, targets, prediction, brain_mask, labels=None, *,
                   input_names: Sequence[str], contrast_names: Sequence[str],
                   title: str = "", z: int | None = None,
                   error_vmax: float = ERROR_VMAX, uncertainty=None,
                   uncertainty_label: str = "interval half-width") -> Figure:
    """One subject: input maps; then per contrast ground truth, synthesized, |error|.

    ``inputs`` ``[X, Y, Z, C_in]``, ``targets``/``prediction`` ``[X, Y, Z, C_out]`` (all
    normalized), ``brain_mask`` and optional ``labels`` ``[X, Y, Z]``. Rows: inputs (plus the
    tumor labels), ground truth, synthesized, absolute error; with ``uncertainty`` (the
    interval half-width ``[X, Y, Z, C_out]``) one more row next to the error, on the error's
    colour scale, where voxels whose error the interval misses are marked in cyan; with a
    tumor the same rows again, zoomed on the lesion (its box drawn on the full-size rows).
    """
    brain_mask = np.asarray(brain_mask)
    if z is None:
        z = figure_slice(brain_mask, labels)
    shown_inputs = _prepare(inputs, brain_mask, z)
    shown_targets = _prepare(targets, brain_mask, z)
    shown_preds = _prepare(prediction, brain_mask, z)
    shown_labels = display(np.asarray(labels)[:, :, z]) if labels is not None else None
    box = lesion_box(shown_labels) if shown_labels is not None else None

    num_contrasts = len(contrast_names)
    has_label_panel = shown_labels is not None and np.any(shown_labels > 0)
    num_cols = max(num_contrasts, len(input_names) + int(has_label_panel))
    row_names = ["ground truth", "synthesized", "|error|"]
    shown_widths = None
    if uncertainty is not None:
        shown_widths = _prepare(uncertainty, brain_mask, z)
        row_names.append(uncertainty_label)
    per_view = len(row_names)
    num_rows = 1 + per_view * (2 if box is not None else 1)
    fig = Figure(figsize=(PANEL_INCHES * num_cols + 0.8, PANEL_INCHES * num_rows + 0.4),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(num_rows, num_cols, squeeze=False)
    for ax in axes.ravel():
        _hide_axes(ax)
        ax.set_visible(False)

    for c, name in enumerate(input_names):
        axes[0, c].set_visible(True)
        _image(axes[0, c], shown_inputs[c], title=f"input: {contrast_title(name)}", box=box)
    if has_label_panel:
        ax = axes[0, len(input_names)]
        ax.set_visible(True)
        _image(ax, shown_inputs[0], title="tumor labels", box=box)
        ax.imshow(np.ma.masked_equal(shown_labels, 0), cmap=LABEL_COLORS, vmin=-0.5,
                  vmax=3.5, interpolation="nearest", alpha=0.6)

    error_artist = None
    mask = display(brain_mask[:, :, z] > 0)
    for c, name in enumerate(contrast_names):
        error = np.abs(shown_preds[c] - shown_targets[c])
        panels = [shown_targets[c], shown_preds[c], error]
        missed = None
        if shown_widths is not None:
            panels.append(shown_widths[c])
            missed = (error > shown_widths[c]) & mask  # outside the interval
        for r, image in enumerate(panels):
            is_map = r >= 2  # |error| and half-width share the colour scale
            style = dict(cmap="inferno" if is_map else "gray",
                         vmax=error_vmax if is_map else 1.0)
            ax = axes[1 + r, c]
            ax.set_visible(True)
            artist = _image(ax, image, title=contrast_title(name) if r == 0 else None,
                            box=box, **style)
            if r == 3:
                _mark_missed(ax, missed)
            if r == 2:
                error_artist = artist
            if box is not None:
                zoom = axes[1 + per_view + r, c]
                zoom.set_visible(True)
                _image(zoom, _crop(image, box), **style)
                if r == 3:
                    _mark_missed(zoom, _crop(missed, box))
    for r, name in enumerate(row_names):
        axes[1 + r, 0].set_ylabel(name, fontsize=9)
        if box is not None:
            axes[1 + per_view + r, 0].set_ylabel(f"{name} (lesion zoom)", fontsize=9)
    if error_artist is not None:
        map_rows = [3] + ([4] if shown_widths is not None else [])
        if box is not None:
            map_rows += [row + per_view for row in map_rows]
        error_axes = [axes[row, c] for row in map_rows for c in range(num_contrasts)]
        label = "|error|, half-width (normalized)" if shown_widths is not None else \
            "|error| (normalized)"
        fig.colorbar(error_artist, ax=error_axes, shrink=0.8, label=label)
    fig.suptitle(f"{title}  (axial slice z = {z})".strip(), fontsize=11)
    return fig


def _mark_missed(ax, missed):
    """Cyan dots on the voxels whose |error| exceeds the interval half-width."""
    if missed is None or not np.any(missed):
        return
    rows, cols = np.nonzero(missed)
    ax.autoscale(False)  # keep the image's extent
    ax.scatter(cols, rows, s=1.5, c="#00ffff", marker="s", linewidths=0)


def comparison_figure(targets, predictions_by_model: Mapping[str, np.ndarray], brain_mask,
                      labels=None, *, contrast_names: Sequence[str], title: str = "",
                      z: int | None = None, error_vmax: float = ERROR_VMAX,
                      zoom: bool = True) -> Figure:
    """Several models on one subject: one column per model, ground truth first.

    For every contrast two rows: the images and their absolute errors (the ground-truth
    column of the error row is empty). With ``zoom`` and a tumor in the slice, every panel
    is cropped to the lesion's box instead of showing the whole slice.
    """
    brain_mask = np.asarray(brain_mask)
    if z is None:
        z = figure_slice(brain_mask, labels)
    shown_targets = _prepare(targets, brain_mask, z)
    shown = {model: _prepare(pred, brain_mask, z) for model, pred in predictions_by_model.items()}
    box = None
    if zoom and labels is not None:
        box = lesion_box(display(np.asarray(labels)[:, :, z]))
    view = (lambda image: _crop(image, box)) if box is not None else (lambda image: image)

    models = list(predictions_by_model)
    num_cols = 1 + len(models)
    num_rows = 2 * len(contrast_names)
    fig = Figure(figsize=(PANEL_INCHES * num_cols + 0.8, PANEL_INCHES * num_rows + 0.4),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(num_rows, num_cols, squeeze=False)
    error_artist = None
    for c, name in enumerate(contrast_names):
        image_row, error_row = axes[2 * c], axes[2 * c + 1]
        _image(image_row[0], view(shown_targets[c]),
               title="ground truth" if c == 0 else None)
        _hide_axes(error_row[0])
        error_row[0].set_visible(False)
        image_row[0].set_ylabel(contrast_title(name), fontsize=9)
        for m, model in enumerate(models):
            _image(image_row[1 + m], view(shown[model][c]), title=model if c == 0 else None)
            error = np.abs(shown[model][c] - shown_targets[c])
            error_artist = _image(error_row[1 + m], view(error), cmap="inferno",
                                  vmax=error_vmax)
        error_row[1].set_ylabel(f"{contrast_title(name)} |error|", fontsize=9)
    if error_artist is not None:
        fig.colorbar(error_artist, ax=[axes[2 * c + 1, -1] for c in range(len(contrast_names))],
                     shrink=0.8, label="|error| (normalized)")
    where = "lesion zoom, " if box is not None else ""
    fig.suptitle(f"{title}  ({where}axial slice z = {z})".strip(), fontsize=11)
    return fig


def png_bytes(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes (the caller writes them, atomically)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...] sorted by step} from the TensorBoard event files of
    `log_dir` (the training loop's `<stage>/tensorboard`); {} when there are none."""
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

    if not os.path.isdir(log_dir):
        return {}
    accumulator = event_accumulator.EventAccumulator(
        log_dir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})
    accumulator.Reload()
    scalars: dict[str, dict[int, float]] = {}
    tags = accumulator.Tags()
    for tag in tags.get("scalars", []):  # TF1-style summaries
        for event in accumulator.Scalars(tag):
            scalars.setdefault(tag, {})[int(event.step)] = float(event.value)
    for tag in tags.get("tensors", []):  # tf.summary.scalar in TF2 writes tensors
        for event in accumulator.Tensors(tag):
            value = np.asarray(_tensor_value(event.tensor_proto))
            if value.size == 1:
                scalars.setdefault(tag, {})[int(event.step)] = float(value.reshape(()))
    return {tag: sorted(values.items()) for tag, values in scalars.items()}


def _tensor_value(proto):
    from tensorboard.util import tensor_util  # noqa: PLC0415

    return tensor_util.make_ndarray(proto)


def training_curves_figure(scalars_by_stage: Mapping[str, Mapping[str, Sequence]], *,
                           contrast_names: Sequence[str], title: str = "") -> Figure:
    """Convergence of a run: the stages one after the other on a common step axis.

    Panels: training pixel L1 (every logged interval), validation MAE x100 and PSNR per
    contrast (whole brain), and validation tumor MAE x100 when it was logged. Validation of
    each stage runs on its own split (healthy before fine-tuning, GBM during it), so the
    curves jump at a stage boundary (dotted line).
    scalars_by_stage: {stage: {tag: [(step, value), ...]}} in stage order (read_scalars).
    """
    has_tumor = any(f"val/{c}/mae_tumor" in tags for tags in scalars_by_stage.values()
                    for c in contrast_names)
    panels = [("train/l1", "training L1 (normalized)"),
              ("mae", "validation MAE x100 (brain)"),
              ("psnr", "validation PSNR dB (brain)")]
    if has_tumor:
        panels.append(("mae_tumor", "validation MAE x100 (tumor)"))
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = {c: f"C{i}" for i, c in enumerate(contrast_names)}
    offset = 0
    for index, (stage, tags) in enumerate(scalars_by_stage.items()):
        last = 0
        for ax, (metric, label) in zip(axes, panels, strict=True):
            series = ([("l1", tags.get(metric, []))] if metric.startswith("train/")
                      else [(c, tags.get(f"val/{c}/{metric}", [])) for c in contrast_names])
            for name, points in series:
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                last = max(last, max(steps))
                # the L1 curve is dense; a single logged interval still needs a marker
                ax.plot(np.asarray(steps) + offset, values,
                        marker="." if name != "l1" or len(steps) == 1 else None,
                        color=colors.get(name, "k"),
                        label=(contrast_title(name) if name in colors else None)
                        if index == 0 else None)
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("step (stages in order)")
            if offset:
                ax.axvline(offset, color="gray", linestyle=":", linewidth=1)
        # at the stage's first step; kept out of the layout (in a run of a few steps step 0
        # lies outside the axis, and the layout would shrink the panels to reach it)
        axes[0].text(offset, 1.0, f" {stage}", transform=axes[0].get_xaxis_transform(),
                     fontsize=8, va="top", clip_on=True).set_in_layout(False)
        offset += last
    if any(tags.get("train/l1") for tags in scalars_by_stage.values()):
        axes[0].set_yscale("log")
    else:  # a run too short to log a training interval (only its validation)
        axes[0].text(0.5, 0.5, "no training interval logged", ha="center", va="center",
                     transform=axes[0].transAxes, fontsize=9, color="gray")
    if len(axes) > 1:
        axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
