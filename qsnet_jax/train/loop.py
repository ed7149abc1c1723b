"""The training loop of one stage: init or resume, steps, logs, validation, checkpoints.

The loop takes plain callables for its data (it never sees tf.data or files):
  train_batches(start_step) -> iterator of per-process batch dicts (batch i of the stream is
      the same whether the stream started at 0 or at start_step=i: resume replays nothing);
  validate(predict, step) -> {"<contrast>/<metric>": value, ...} or None, where
      predict(inputs [N, H, W, C] numpy) -> numpy prediction; every process must call it the
      same number of times with the same inputs (it runs one sharded computation).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions

from qsnet_jax import io, models
from qsnet_jax.metrics import HIGHER_IS_BETTER
from qsnet_jax.train import checkpoints, optim, steps
from qsnet_jax.train import mesh as mesh_lib
from qsnet_jax.train.state import TrainState, init_train_state

NO_DISCRIMINATOR_MODELS = ("resunet", "physics", "pervoxel")


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/inf; the message names the step and the checkpoint."""


@dataclasses.dataclass
class StageResult:
    stage: str
    stage_dir: str
    state: TrainState
    steps: int
    best_score: float | None
    last_scores: dict


def build_models(config: ml_collections.ConfigDict):
    """(generator, discriminator or None) from the registry."""
    generator = checkpoints.build_generator_from_config(models, config)
    if config.model.name in NO_DISCRIMINATOR_MODELS or config.discriminator.name == "none":
        return generator, None
    return generator, models.build_discriminator(config.discriminator)


def encoder_mask(params) -> dict:
    """A params-shaped tree of bools: True for encoder parameters (frozen when asked)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(models.is_encoder_param(tuple(_key_name(k) for k in path))),
        params)


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def best_metric_mode(metric: str) -> str:
    """"max" or "min": how config.train.best_metric picks the best checkpoint."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown config.train.best_metric {metric!r}; "
                         f"known: {list(HIGHER_IS_BETTER)}")
    return "max" if HIGHER_IS_BETTER[metric] else "min"


def validation_score(scores: dict, metric: str) -> float | None:
    """The mean over contrasts of `metric` (e.g. "ssim"), the number that picks the best."""
    if f"mean/{metric}" in scores:
        return float(scores[f"mean/{metric}"])
    values = [v for k, v in scores.items() if k.endswith(f"/{metric}")]
    return float(np.mean(values)) if values else None


def poison_batch(batch: dict) -> dict:
    """Test hook (config.train.inject_nan_at_step): NaN in the inputs of one batch."""
    batch = dict(batch)
    inputs = np.array(batch["inputs"], copy=True)
    inputs.flat[0] = np.nan
    batch["inputs"] = inputs
    return batch


def format_duration(seconds: float) -> str:
    """``12m05s`` or ``1h02m``; ``?`` for an unknown (infinite) duration."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _image_grid(inputs, targets, prediction) -> dict:
    """One example as [1, H', W', 1] rows: inputs | targets over predictions, anterior up."""
    def row(stack):
        return np.concatenate([np.rot90(stack[..., c]) for c in range(stack.shape[-1])], axis=1)

    clip = lambda a: np.clip(np.asarray(a, np.float32), 0.0, 1.0)
    contrast = np.concatenate([row(clip(targets)), row(clip(prediction))], axis=0)
    return {"images/inputs": row(clip(inputs))[None, ..., None],
            "images/target_top_synthesized_bottom": contrast[None, ..., None]}


class _Predictor:
    """predict(inputs numpy) -> numpy: sharded over "data", gathered on every process."""

    def __init__(self, generator, mesh, variables_sharding):
        self._mesh = mesh
        self._fn = mesh_lib.compile_predict(steps.make_predict_fn(generator),
                                            variables_sharding, mesh)
        self.variables = None

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = np.asarray(inputs, np.float32)
        count = inputs.shape[0]
        multiple = mesh_lib.data_axis_size(self._mesh)
        padded = -(-count // multiple) * multiple
        if padded != count:
            inputs = np.concatenate([inputs, np.zeros((padded - count,) + inputs.shape[1:],
                                                      inputs.dtype)])
        global_inputs = jax.make_array_from_callback(
            inputs.shape, mesh_lib.batch_sharding(self._mesh), lambda index: inputs[index])
        return np.asarray(self._fn(self.variables, global_inputs))[:count]


def train_stage(config: ml_collections.ConfigDict, *, stage: str, stage_dir: str,
                train_batches: Callable[[int], Iterator[dict]],
                validate: Callable | None = None, init_generator_variables=None,
                summary_path: str | None = None,
                log: Callable[[str], None] | None = None) -> StageResult:
    """Train one stage to `config[stage].steps`, resuming from its latest checkpoint.

    `init_generator_variables`: generator params (+ collections) to start from when there is
    no checkpoint yet. `summary_path`: where to write the generator's model summary (JSON:
    parameter count, FLOPs per slice) if it is not there yet.
    """
    stage_config = config[stage]
    total_steps = int(stage_config.steps)
    train_config = config.train
    is_chief = jax.process_index() == 0
    log = log or (lambda line: print(line, flush=True) if is_chief else None)
    os.makedirs(stage_dir, exist_ok=True)

    mesh = mesh_lib.make_mesh(config.mesh)
    generator, discriminator = build_models(config)
    gen_schedule = optim.make_lr_schedule(config.optim, float(stage_config.learning_rate),
                                          total_steps)
    disc_schedule = optim.make_lr_schedule(
        config.optim, float(stage_config.learning_rate) * config.optim.disc_learning_rate_factor,
        total_steps)
    disc_optimizer = (optim.make_optimizer(config.optim, disc_schedule)
                      if discriminator is not None else None)

    manager = checkpoints.latest_manager(stage_dir, int(train_config.max_checkpoints_to_keep))
    # Checkpoints are written with their state's step, so the latest one names where the
    # data stream resumes.
    start_step = manager.latest_step() or 0
    batch_iterator = train_batches(start_step)
    first_batch = next(batch_iterator)
    sample_inputs = np.asarray(first_batch["inputs"][:1])
    sample_targets = np.asarray(first_batch["targets"][:1])

    if summary_path and is_chief and not os.path.exists(summary_path):
        summary = models.model_summary(generator, sample_inputs.shape)
        io.write_json(summary_path, {"model": config.model.name, "stage": stage,
                                  "input_shape": list(sample_inputs.shape[1:]), **summary})

    freeze_steps = int(stage_config.freeze_encoder_steps)

    def build_gen_optimizer(params):
        mask = encoder_mask(params) if freeze_steps > 0 else None
        return optim.make_optimizer(config.optim, gen_schedule, frozen_mask=mask,
                                    freeze_steps=freeze_steps)

    abstract_gen_vars = (init_generator_variables if init_generator_variables is not None
                         else jax.eval_shape(lambda: generator.init(
                             {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)},
                             sample_inputs, train=False)))
    gen_optimizer = build_gen_optimizer(abstract_gen_vars["params"])

    # The starting generator weights are an argument, not a closure constant: baked into the
    # program they would make XLA compile (and hash) megabytes of literals.
    def init_fn(rng, start_variables):
        return init_train_state(rng, generator, discriminator, gen_optimizer, disc_optimizer,
                                sample_inputs, sample_targets, start_variables)

    rng = jax.random.PRNGKey(int(config.seed))
    abstract_state = jax.eval_shape(init_fn, rng, init_generator_variables)
    state_sharding = mesh_lib.state_shardings(abstract_state, mesh, config.mesh)
    if start_step:
        state, _ = checkpoints.restore_state(manager, start_step, abstract_state,
                                             state_sharding)
        log(f"[{stage}] resumed from {manager.directory}/{start_step}")
    else:
        # Initialized on one device and then laid out: the values do not depend on the mesh
        # (8 devices start from exactly the weights 1 device starts from).
        state = mesh_lib.place(jax.device_get(jax.jit(init_fn)(rng, init_generator_variables)),
                               state_sharding)

    batch_keys = steps.TRAIN_BATCH_KEYS
    train_step = mesh_lib.compile_train_step(
        steps.make_train_step(config, generator, discriminator, gen_optimizer, disc_optimizer,
                              gen_schedule),
        state_sharding, mesh, batch_keys)
    # L1-only warm-up: its own step function for the first steps of the stage
    adversarial_start = int(config.loss.get("adversarial_start_step", 0)) if discriminator else 0
    warmup_step = mesh_lib.compile_train_step(
        steps.make_train_step(config, generator, discriminator, gen_optimizer, disc_optimizer,
                              gen_schedule, warmup=True),
        state_sharding, mesh, batch_keys) if adversarial_start > 0 else None
    variables_sharding = {"params": state_sharding.ema_params, **state_sharding.gen_state}
    predictor = _Predictor(generator, mesh, variables_sharding)
    use_ema = bool(config.eval.use_ema)

    metric_mode = best_metric_mode(train_config.best_metric)
    best = checkpoints.best_manager(stage_dir, metric_mode)
    best_score = recorded_best_score(best)
    writer = metric_writers.create_default_writer(os.path.join(stage_dir, "tensorboard"),
                                                  just_logging=not is_chief)
    report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                                      writer=writer, every_secs=None,
                                                      every_steps=train_config.log_every_steps)
    config_json = config.to_json_best_effort()
    per_process_batch = None
    pending_metrics = []
    last_scores = {}
    timer = StepTimer()
    nan_step = int(train_config.get("inject_nan_at_step", -1))

    def meta(step, scores=None):
        return {"stage": stage, "step": step, "config": config_json, "scores": scores or {}}

    def check_finite(step):
        bad = int(jax.device_get(state.first_bad_step))
        if bad >= 0:
            manager.wait_until_finished()
            kept = manager.latest_step()
            where = (f"the last good checkpoint is {manager.directory}/{kept}"
                     if kept is not None else "no checkpoint was written")
            raise NonFiniteLossError(
                f"[{stage}] non-finite loss or gradient at step {bad + 1}: training stopped "
                f"(detected at step {step}); {where}")

    def run_validation(step):
        nonlocal best_score, last_scores
        if validate is None:
            return
        predictor.variables = state.generator_variables(use_ema=use_ema)
        scores = validate(predictor, step)
        if not scores:
            return
        last_scores = {k: float(v) for k, v in scores.items()}
        writer.write_scalars(step, {f"val/{k}": v for k, v in last_scores.items()})
        score = validation_score(last_scores, train_config.best_metric)
        summary = " ".join(f"{k}={v:.4f}" for k, v in sorted(last_scores.items())
                           if k.startswith("mean/"))
        log(f"[{stage}] validation at step {step}: {summary or last_scores}")
        if score is None or not math.isfinite(score):
            return
        better = (best_score is None or (score > best_score if metric_mode == "max"
                                         else score < best_score))
        if better:
            best_score = score
            checkpoints.save_best(best, state, {**meta(step, last_scores), "best_score": score},
                                  score)

    for step in range(start_step + 1, total_steps + 1):
        input_start = time.perf_counter()
        batch = first_batch if first_batch is not None else next(batch_iterator)
        first_batch = None
        if step == nan_step:
            batch = poison_batch(batch)
        per_process_batch = per_process_batch or int(np.asarray(batch["inputs"]).shape[0])
        global_batch = mesh_lib.global_batch(batch, mesh, batch_keys)
        timer.input_seconds += time.perf_counter() - input_start
        step_fn = warmup_step if warmup_step is not None and step <= adversarial_start \
            else train_step
        state, metrics = step_fn(state, global_batch)  # dispatched; runs while we loop on
        pending_metrics.append(metrics)
        if step == start_step + 1:
            # The first call compiles: wait for it once so the logged step time starts after
            # the compilation (the only host sync outside the logging steps).
            jax.block_until_ready(metrics)
            log(f"[{stage}] first step (compilation included) took "
                f"{time.perf_counter() - timer.start:.1f}s")
            timer.restart()
        else:
            timer.steps += 1
        report_progress(step, time.time())

        is_last = step == total_steps
        logged = step % train_config.log_every_steps == 0 or is_last
        if logged:
            check_finite(step)
            means = {k: float(np.mean([float(m[k]) for m in jax.device_get(pending_metrics)]))
                     for k in pending_metrics[-1]}
            pending_metrics = []
            means.update(timer.rates(per_process_batch * jax.process_count()))
            writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
            steps_per_sec = 1.0 / means["step_seconds"] if means.get("step_seconds") else 0.0
            eta = (total_steps - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
            losses = " ".join(f"{k}={means[k]:.4g}" for k in
                              ("generator_loss", "l1", "deep_supervision", "adversarial",
                               "ssim_loss", "discriminator_loss") if k in means)
            timing = (f"{means['step_seconds']:.3f} s/step, {means['slices_per_sec']:.2f} "
                      f"slices/s, input {means['input_seconds_per_step']:.3f} s/step"
                      if "step_seconds" in means else "timing from the next interval")
            log(f"[{stage}] step {step}/{total_steps} | {losses} | lr={means['learning_rate']:.3g}"
                f" | {timing} | ETA {format_duration(eta)}")

        if step % train_config.image_every_steps == 0 or is_last:
            predictor.variables = state.generator_variables(use_ema=use_ema)
            example = {k: np.asarray(batch[k][:1]) for k in ("inputs", "targets")}
            prediction = predictor(example["inputs"])
            if is_chief:
                writer.write_images(step, _image_grid(example["inputs"][0],
                                                      example["targets"][0], prediction[0]))
        if step % train_config.eval_every_steps == 0 or is_last:
            check_finite(step)
            run_validation(step)
        if step % train_config.checkpoint_every_steps == 0 or is_last:
            check_finite(step)
            checkpoints.save_state(manager, state, meta(step, last_scores))
        if logged:
            # Images, validation and checkpoints (which follow a logging step, if any) are
            # not training steps: the next interval starts after them.
            timer.restart(sync=state.step)
    check_finite(total_steps)
    if start_step >= total_steps and validate is not None and best.latest_step() is None:
        run_validation(total_steps)
    manager.wait_until_finished()
    best.wait_until_finished()
    writer.flush()
    return StageResult(stage, stage_dir, state, total_steps, best_score, last_scores)


class StepTimer:
    """Wall time per training step over a logging interval, and the host's share of it spent
    getting batches. Steps run asynchronously; the interval ends when the host reads the
    interval's metrics, which waits for its last step, so wall time / steps is the step
    time the benchmark (experiments/bench_train.py) measures plus any host overhead."""

    def __init__(self):
        self.restart()

    def restart(self, sync=None):
        if sync is not None:
            jax.block_until_ready(sync)
        self.start = time.perf_counter()
        self.steps = 0
        self.input_seconds = 0.0

    def rates(self, global_batch_size: int) -> dict:
        """{"step_seconds", "slices_per_sec", "input_seconds_per_step"} since the last restart
        ({} before any timed step); call after the interval's metrics were read."""
        if self.steps == 0:
            return {}
        step_seconds = (time.perf_counter() - self.start) / self.steps
        return {"step_seconds": step_seconds, "slices_per_sec": global_batch_size / step_seconds,
                "input_seconds_per_step": self.input_seconds / self.steps}


def recorded_best_score(best_manager) -> float | None:
    """The validation score of the kept best checkpoint (a resumed run keeps comparing)."""
    step = best_manager.latest_step()
    if step is None:
        return None
    meta = checkpoints.read_meta(os.path.join(str(best_manager.directory), str(step)))
    score = (meta or {}).get("best_score")
    return None if score is None else float(score)


def final_generator_variables(stage_dir: str) -> dict:
    """The raw (non-EMA) generator params + collections of a stage's latest checkpoint: what
    the next stage starts from."""
    step_dir = checkpoints.resolve_checkpoint(stage_dir, prefer_best=False)
    item = checkpoints.load_generator_item(step_dir)
    return {"params": item["params"], **item["collections"]}
