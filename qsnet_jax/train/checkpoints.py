"""Orbax checkpoints of a stage, and loading a trained generator back.

Layout of a stage directory `WORKDIR/<stage>/`:
  checkpoints/<step>/{state, meta}          every config.train.checkpoint_every_steps and at
                                            the end; the last config.train.max_checkpoints_to_keep
  checkpoints_best/<step>/{generator, meta} the generator (params, EMA, collections) with the
                                            best validation score so far (one kept)
`state` is the whole TrainState (resume); `generator` only what inference needs; `meta` is
JSON: step, stage, the resolved config, the validation scores of that step (if any).
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from qsnet_jax import models
from qsnet_jax.train.state import TrainState

CHECKPOINTS = "checkpoints"
BEST_CHECKPOINTS = "checkpoints_best"


class CheckpointNotFoundError(FileNotFoundError):
    pass


def _options(max_to_keep, **kwargs):
    return ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                        cleanup_tmp_directories=True, **kwargs)


def latest_manager(stage_dir: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(os.path.join(os.path.abspath(stage_dir), CHECKPOINTS),
                                 options=_options(max_to_keep), item_names=("state", "meta"))


def best_manager(stage_dir: str, mode: str = "max") -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(stage_dir), BEST_CHECKPOINTS),
        options=_options(1, best_fn=lambda metrics: metrics["score"], best_mode=mode,
                         keep_checkpoints_without_metrics=False),
        item_names=("generator", "meta"))


def save_state(manager: ocp.CheckpointManager, state: TrainState, meta: dict):
    step = int(jax.device_get(state.step))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)


def generator_item(state: TrainState) -> dict:
    return {"params": state.gen_params, "ema_params": state.ema_params,
            "collections": state.gen_state}


def save_best(manager: ocp.CheckpointManager, state: TrainState, meta: dict, score: float):
    step = int(jax.device_get(state.step))
    manager.save(step, args=ocp.args.Composite(generator=ocp.args.StandardSave(
        generator_item(state)), meta=ocp.args.JsonSave(meta)), metrics={"score": score},
        force=True)


def save_generator(stage_dir: str, step: int, variables: dict, meta: dict):
    """Save generator `variables` (not trained by the loop: the physics baseline's closed-form
    fit) as the stage's latest checkpoint, loadable like any other (`load_generator`)."""
    params = variables["params"]
    collections = {k: v for k, v in variables.items() if k != "params"}
    item = {"params": params, "ema_params": params, "collections": collections}
    manager = ocp.CheckpointManager(os.path.join(os.path.abspath(stage_dir), CHECKPOINTS),
                                    options=_options(1), item_names=("generator", "meta"))
    if step in manager.all_steps():  # a fit interrupted before its stage was marked done
        manager.delete(step)
    manager.save(step, args=ocp.args.Composite(generator=ocp.args.StandardSave(item),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state, shardings):
    """Restore the whole TrainState with the given shardings (resume)."""
    target = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_state, shardings)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta


def read_meta(step_dir: str) -> dict:
    path = os.path.join(step_dir, "meta", "metadata")
    if not os.path.exists(path):
        return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
            os.path.join(step_dir, "meta"))
    with open(path) as f:
        return json.load(f)


def _step_dirs(root: str) -> list[str]:
    if not os.path.isdir(root):
        return []
    steps = sorted(int(name) for name in os.listdir(root)
                   if name.isdigit() and os.path.exists(os.path.join(root, name, "meta")))
    return [os.path.join(root, str(step)) for step in steps]


def _is_step_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "meta")) and (
        os.path.isdir(os.path.join(path, "state"))
        or os.path.isdir(os.path.join(path, "generator")))


def _last_stage_dir(workdir: str) -> str:
    with open(os.path.join(workdir, "config.json")) as f:
        stages = json.load(f).get("stages") or []
    for stage in reversed(stages):
        stage_dir = os.path.join(workdir, stage)
        if _step_dirs(os.path.join(stage_dir, CHECKPOINTS)):
            return stage_dir
    raise CheckpointNotFoundError(f"no checkpoint of any stage {list(stages)} in {workdir}")


def resolve_checkpoint(path: str, *, prefer_best: bool) -> str:
    """A work dir, stage dir or step dir -> a step dir (best-or-latest, or latest)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"no such checkpoint path: {path}")
    if _is_step_dir(path):
        return path
    if os.path.exists(os.path.join(path, "config.json")) and not os.path.isdir(
            os.path.join(path, CHECKPOINTS)):
        path = _last_stage_dir(path)
    best = _step_dirs(os.path.join(path, BEST_CHECKPOINTS))
    latest = _step_dirs(os.path.join(path, CHECKPOINTS))
    if prefer_best and best:
        return best[-1]
    if latest:
        return latest[-1]
    if os.path.basename(path) in (CHECKPOINTS, BEST_CHECKPOINTS) and _step_dirs(path):
        return _step_dirs(path)[-1]
    raise CheckpointNotFoundError(f"no checkpoint found under {path}")


def _restore_item(step_dir: str, item: str):
    return ocp.StandardCheckpointer().restore(os.path.join(step_dir, item))


def load_generator_item(step_dir: str) -> dict:
    """{"params", "ema_params", "collections"} as host arrays, from either item kind."""
    if os.path.isdir(os.path.join(step_dir, "generator")):
        restored = _restore_item(step_dir, "generator")
        return {"params": restored["params"], "ema_params": restored["ema_params"],
                "collections": restored.get("collections") or {}}
    restored = _restore_item(step_dir, "state")
    return {"params": restored["gen_params"], "ema_params": restored["ema_params"],
            "collections": restored.get("gen_state") or {}}


def _tuples(value):
    """JSON lists back to tuples, as the configs spell sequences."""
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
    config = meta["config"]
    if isinstance(config, str):
        config = json.loads(config)
    return ml_collections.ConfigDict(_tuples(config))


def load_generator(path: str, *, use_ema: bool = True):
    """(config, module, variables) of a trained generator, for evaluation and synthesis.

    `path`: a work dir (its last trained stage), a stage dir (its best checkpoint if there
    is one, else its latest), or a checkpoint step dir.
    """
    step_dir = resolve_checkpoint(path, prefer_best=True)
    config = config_from_meta(read_meta(step_dir))
    module = build_generator_from_config(models, config)
    item = load_generator_item(step_dir)
    variables = {"params": item["ema_params"] if use_ema else item["params"],
                 **item["collections"]}
    return config, module, variables


def build_generator_from_config(models, config):
    return models.build_generator(config.model, input_channels=tuple(config.data.input_channels),
                                  target_channels=tuple(config.data.target_channels),
                                  context_slices=int(config.data.context_slices))
