"""Fit, store and load the volume rescaling levels of a trained generator
(the file policy around qsnet_jax.volume_rescale).

  STAGE_DIR/rescale.json   one level per target contrast, the fit splits and subjects, the
                           checkpoint and cohort they belong to

The levels are fitted on the stage's training split (or config.rescale.fit_splits), never on
the calibration or test splits, once per checkpoint; `evaluate` fits them before the
uncertainty (whose residuals are those of the rescaled synthesis), on any cohort after
reuses them, and `synthesize` applies them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from qsnet_jax import io
from qsnet_jax import volume_rescale as vr
from qsnet_jax.train import checkpoints
from workflow import cohorts
from workflow.errors import UserError
from workflow.uncertainty import (
    checkpoint_id,
    section,
    split_subjects,
    stage_train_splits,
)

RESCALE_FILE = "rescale.json"


def enabled(config) -> bool:
    """Whether the config asks for rescaling (a stored config that predates the section:
    no)."""
    settings = section(config, "rescale")
    return settings is not None and bool(settings.enabled)


def fit_splits(config, stage_dir: str) -> tuple[str, ...]:
    """The splits the levels are fitted on: config.rescale.fit_splits, or the stage's
    training split."""
    stage = os.path.basename(os.path.normpath(stage_dir))
    return stage_train_splits(config, stage, section(config, "rescale").fit_splits,
                              key="rescale.fit_splits")


def fit_rescale(config, stage_dir: str, predict_fn: Callable, root: str, *,
                stream=sys.stderr) -> tuple[float, ...]:
    """Fit one level per target contrast on the fit splits; write STAGE_DIR/rescale.json."""
    splits = fit_splits(config, stage_dir)
    targets = tuple(config.data.target_channels)
    started = time.time()
    samples, names = [[] for _ in targets], []
    for split in splits:
        for record, _, target, prediction, subject in split_subjects(config, root, split,
                                                                     predict_fn):
            for c in range(len(targets)):
                samples[c].append(vr.fit_samples(prediction[..., c], target[..., c],
                                                 subject.brain_mask))
            names.append(record.subject)
    if not names:
        raise UserError(f"{root}: no subject in the rescaling fit split(s) {list(splits)} "
                        "(config.rescale.fit_splits)")
    levels = tuple(vr.fit_level(s) for s in samples)
    meta = {"levels": dict(zip(targets, levels, strict=True)), "fit_splits": list(splits),
            "fit_subjects": names, "checkpoint": checkpoint_id(stage_dir),
            "cohort": os.path.abspath(root), "convention": vr.CONVENTION}
    io.write_json(os.path.join(stage_dir, RESCALE_FILE), meta)
    print(f"rescale: levels {_pairs(targets, levels)} fitted on {len(names)} subject(s) of "
          f"{', '.join(splits)} in {time.time() - started:.1f} s", file=stream, flush=True)
    return levels


def load_rescale(stage_dir: str, target_channels) -> tuple[tuple[float, ...], dict] | None:
    """``(levels in target order, stored record)`` of a stage, or None when it has none."""
    path = os.path.join(stage_dir, RESCALE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
        return tuple(float(meta["levels"][name]) for name in target_channels), meta
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: unreadable rescaling levels ({error})") from None


def rescale_for(config, stage_dir: str, predict_fn: Callable, root: str, *,
                stream=sys.stderr) -> tuple[tuple[float, ...] | None, str]:
    """The stage's levels and, when there are none, a note saying why.

    The levels belong to the model, like its weights: fitted once on the training split of
    the cohort it is first evaluated on, then reused on any cohort (`evaluate --cohort`),
    fitted again only for another checkpoint or other fit splits. None when the config does
    not rescale, or when nothing was fitted and this cohort lacks the fit splits.
    """
    if not enabled(config):
        return None, "not rescaled (config.rescale.enabled = False)"
    wanted = fit_splits(config, stage_dir)
    stored = load_rescale(stage_dir, tuple(config.data.target_channels))
    if stored is not None:
        levels, meta = stored
        if meta.get("checkpoint") == checkpoint_id(stage_dir) and \
                meta.get("fit_splits") == list(wanted):
            return levels, ""
    present = {r.split for r in cohorts.read_records(root)}
    missing = [split for split in wanted if split not in present]
    if missing:
        return None, (f"not rescaled: no levels fitted for this checkpoint and the cohort has "
                      f"no {', '.join(missing)} split to fit them on (config.rescale.fit_splits)")
    return fit_rescale(config, stage_dir, predict_fn, root, stream=stream), ""


def record(config, levels, note: str = "") -> dict:
    """metrics.json's ``rescale`` entry."""
    if levels is None:
        return {"levels": None, "note": note}
    return {"levels": dict(zip(config.data.target_channels, levels, strict=True)),
            "convention": vr.CONVENTION}


def describe(config, stage_dir: str, levels, note: str = "") -> str:
    """One line for a report: whether and how the synthesis was rescaled, and on which
    splits the levels were fitted."""
    if levels is None:
        return f"synthesis {note or 'not rescaled'}"
    return (f"synthesis rescaled per volume: brain 99.5th percentile set to "
            f"{_pairs(config.data.target_channels, levels)} "
            f"(fitted on {', '.join(fit_splits(config, stage_dir))})")


def _pairs(names, levels) -> str:
    return ", ".join(f"{n} {v:.3f}" for n, v in zip(names, levels, strict=True))


def stage_rescale(model_path: str, config) -> tuple[float, ...] | None:
    """The levels fitted for the checkpoint ``model_path`` resolves to (for `synthesize`), or
    None with a note on stderr when the config asks for them and none were fitted for it."""
    if not enabled(config):
        return None
    try:
        step_dir = checkpoints.resolve_checkpoint(model_path, prefer_best=True)
    except (FileNotFoundError, ValueError):
        return None
    stage_dir = os.path.dirname(os.path.dirname(step_dir))
    stored = load_rescale(stage_dir, tuple(config.data.target_channels))
    if stored is None or stored[1].get("checkpoint") != checkpoint_id(stage_dir, step_dir):
        which = "no fitted rescaling levels" if stored is None else (
            f"rescaling levels fitted for {stored[1].get('checkpoint')}, not for "
            f"{os.path.relpath(step_dir, stage_dir)}")
        print(f"note: {stage_dir} has {which} (run experiments.evaluate on it): the synthesis "
              "is not rescaled per volume", file=sys.stderr, flush=True)
        return None
    return stored[0]
