"""Train and evaluate as a config says: check every cheap thing, prepare the work dir, get the
cohort, train the stages in order (or fit the physics baseline), evaluate after each.

Stage chaining: a stage that is not the first starts from the previous stage's final (latest
checkpoint, raw not EMA) generator weights; its discriminator, optimizers, EMA (reset to the
loaded weights) and learning-rate schedule start fresh. The first stage starts from
`config.init_from` when set (a work dir, stage dir or checkpoint dir), else from scratch.
Re-running the same command in the same work dir resumes: a finished stage (its `done.json`
names the same step count) is skipped, an interrupted one continues from its latest checkpoint.

The physics baseline (`model.name == "physics"`) is not trained by gradient descent: its
per-contrast scales are fitted in closed form (`qsnet_jax.models.fit_physics_scales`) on every
slice of the stages' training splits and saved as an ordinary generator checkpoint in the last
stage's folder, which evaluation, synthesis and the studies load like any other
(docs/design.md, "The physics baseline").
"""

from __future__ import annotations

import json
import math
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from data_pipelines import input_pipeline
from qsnet_jax import figures, io, losses, metrics, models
from qsnet_jax.physics import channels
from qsnet_jax.train import checkpoints, loop, optim
from qsnet_jax.train import mesh as mesh_lib
from workflow import cohorts, evaluate
from workflow.errors import UserError

STAGE_DONE = "done.json"
MODEL_SUMMARY = "model_summary.json"
PHYSICS = "physics"
PREFIT_STAGE = "prefit"
TRAINING_CURVES = "training_curves.png"


# ------------------------------------------------------------------ checks before any work


def validate_config(config: ml_collections.ConfigDict):
    """Every mistake a person can make in a config, as one line (UserError). The registries
    (models, losses, optim, mesh, channels) word their own errors; this only collects them."""
    stages = tuple(config.stages)
    if not stages:
        raise UserError("config.stages is empty; use e.g. ('pretrain', 'finetune')")
    for stage in stages:
        if stage not in config or not isinstance(config[stage], ml_collections.ConfigDict) \
                or "train_split" not in config[stage]:
            raise UserError(f"unknown stage {stage!r} in config.stages: there is no "
                            f"config.{stage}.train_split (known: pretrain, finetune)")
        if int(config[stage].steps) < 1:
            raise UserError(f"config.{stage}.steps must be >= 1, got {config[stage].steps}")
    if len(set(stages)) != len(stages):
        raise UserError(f"config.stages names a stage twice: {stages}")
    for every in ("log_every_steps", "eval_every_steps", "image_every_steps",
                  "checkpoint_every_steps"):
        if int(config.train[every]) < 1:
            raise UserError(f"config.train.{every} must be >= 1")
    prefit = config.get("pointwise_prefit", {})
    if int(prefit.get("steps", 0)) < 0:
        raise UserError("config.pointwise_prefit.steps must be >= 0 (0 = no pre-fit)")
    if int(prefit.get("voxel_stride", 1)) < 1:
        raise UserError("config.pointwise_prefit.voxel_stride must be >= 1")
    if int(config.optim.disc_steps_per_gen_step) < 0:
        raise UserError("config.optim.disc_steps_per_gen_step must be >= 0")
    if not 0.0 <= float(config.optim.ema_decay) < 1.0:
        raise UserError("config.optim.ema_decay must be in [0, 1)")
    try:
        channels.check_channel_names(tuple(config.data.input_channels), what="input channel")
        channels.check_channel_names(tuple(config.data.target_channels),
                                     allowed=channels.ALL_CHANNELS, what="target channel")
        checkpoints.build_generator_from_config(models, config)
        models.build_discriminator(config.discriminator)
        losses.check_gan_loss(config.loss.gan_loss)
        optim.make_optimizer(config.optim, optim.make_lr_schedule(config.optim, 1e-3, 2))
        loop.best_metric_mode(config.train.best_metric)
        mesh = mesh_lib.make_mesh(config.mesh)
        mesh_lib.state_shardings({}, mesh, config.mesh)  # checks config.mesh.param_sharding
    except ValueError as error:
        raise UserError(str(error)) from None
    check_batch_size(config, mesh)


def check_batch_size(config: ml_collections.ConfigDict, mesh):
    data_size, processes = mesh_lib.data_axis_size(mesh), jax.process_count()
    multiple = math.lcm(data_size, processes)
    batch = int(config.train.batch_size)
    if batch < 1 or batch % multiple:
        raise UserError(f"config.train.batch_size={batch} must be a multiple of {multiple} "
                        f"(the data-axis size {data_size} over {processes} process(es))")


def check_init_from(config: ml_collections.ConfigDict) -> str | None:
    """The checkpoint config.init_from names (resolved), or None; a missing one says what to
    run first. Cheap (a directory listing), so it runs before any cohort is built."""
    if not config.init_from or config.model.name == PHYSICS:
        return None
    path = os.path.abspath(os.path.expanduser(config.init_from))
    hint = ("run configs/pretrain.py first or set --config.init_from "
            "(python -m experiments.main --config=configs/pretrain.py)")
    if not os.path.exists(path):
        raise UserError(f"config.init_from={config.init_from} does not exist: {hint}")
    try:
        return checkpoints.resolve_checkpoint(path, prefer_best=False)
    except checkpoints.CheckpointNotFoundError as error:
        raise UserError(f"config.init_from={config.init_from}: {error}: {hint}") from None


def check_workdir(workdir: str, *, make_parents: bool = False) -> str:
    """The absolute work dir; its parent must exist (a typo is not silently created) unless
    `make_parents` (the default work dir runs/<config name>)."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    parent = os.path.dirname(workdir)
    if not make_parents and not os.path.isdir(parent):
        raise UserError(f"the parent of --workdir does not exist: {parent}")
    return workdir


def is_chief() -> bool:
    return jax.process_index() == 0


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    if is_chief():
        io.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    return workdir


# ------------------------------------------------------------------ runtime


def initialize_distributed(config: ml_collections.ConfigDict):
    """jax.distributed.initialize() before anything touches a device (multi-host runs)."""
    dist = config.distributed
    if not dist.initialize:
        return
    kwargs = {}
    if dist.coordinator_address:
        kwargs["coordinator_address"] = dist.coordinator_address
    if dist.num_processes > 0:
        kwargs["num_processes"] = int(dist.num_processes)
    if dist.process_id >= 0:
        kwargs["process_id"] = int(dist.process_id)
    # Cross-process collectives of CPU devices need an implementation (gloo ships with
    # jaxlib); the option only concerns the CPU client, so it is harmless on GPU/TPU hosts.
    # (jax.default_backend() cannot be asked here: it would start the backend too early.)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def configure_runtime(config: ml_collections.ConfigDict):
    """Quiet library INFO logs (the loop prints its own progress lines) and turn on XLA's
    persistent compilation cache."""
    logging.set_verbosity(logging.WARNING)
    cache_dir = config.train.get("compilation_cache_dir", "")
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir",
                          os.path.abspath(os.path.expanduser(cache_dir)))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# ------------------------------------------------------------------ validation in training


def validation_split(config: ml_collections.ConfigDict, stage: str, cohort_dir: str) -> str:
    """config[stage].validation_split, or "" (no validation during training, the last
    checkpoint is used) when it is empty or the cohort has no subject in it (said once)."""
    split = str(config[stage].get("validation_split", ""))
    if not split:
        return ""
    present = {record.split for record in cohorts.read_records(cohort_dir)}
    if split not in present:
        print(f"[{stage}] {cohort_dir} has no subject in the validation split {split!r} "
              f"(config.{stage}.validation_split; splits: {sorted(present)}): no validation "
              "during training, the last checkpoint is used", flush=True)
        return ""
    return split


def make_validator(config: ml_collections.ConfigDict, cohort_dir: str, split: str):
    """validate(predict, step) -> {"<contrast>/<metric>", "mean/<metric>": value} on the first
    config.train.eval_max_subjects subjects of `split` (every process scores all of them, so
    the sharded prediction runs the same number of times everywhere)."""
    view = input_pipeline.open_split(cohort_dir, split, config.data)
    subjects = [s["subject"] for s in view.subjects][:max(1, int(config.train.eval_max_subjects))]
    target_names = tuple(config.data.target_channels)

    def validate(predict, step):
        del step
        # Every process runs the (collective) predictions; process 0 alone scores them and
        # broadcasts the numbers, so every process takes the same best-checkpoint decision.
        batches = []
        for batch in input_pipeline.make_eval_iterator(
                cohort_dir, split, config.data, batch_size=int(config.eval.batch_size),
                process_index=0, process_count=1, subjects=subjects):
            batch = dict(batch)
            batch["prediction"] = predict(batch["inputs"])
            batches.append(batch)
        scores = score(batches) if jax.process_index() == 0 else {}
        return _broadcast_json(scores) if jax.process_count() > 1 else scores

    def score(batches):
        per_subject = {}
        for subject, volume in input_pipeline.assemble_volumes(batches).items():
            per_subject[subject] = metrics.score_volume(
                volume["prediction"], volume["targets"], volume["brain_mask"][..., 0],
                volume["labels"][..., 0], channel_names=target_names)
        scores = {}
        for contrast in target_names:
            for metric in per_subject[subjects[0]][contrast]:
                values = [s[contrast][metric] for s in per_subject.values()
                          if metric in s[contrast]]
                scores[f"{contrast}/{metric}"] = float(np.mean(values))
        for metric in metrics.METRIC_NAMES:
            scores[f"mean/{metric}"] = float(np.mean([scores[f"{c}/{metric}"]
                                                      for c in target_names]))
        return scores

    return validate


def _broadcast_json(value):
    """Process 0's JSON-able value on every process (two collective broadcasts)."""
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    length = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    padded = np.zeros(length, np.uint8)
    padded[:min(length, data.size)] = data[:length]
    received = np.asarray(multihost_utils.broadcast_one_to_all(padded), np.uint8)
    return json.loads(received.tobytes().decode())


# ------------------------------------------------------------------ stages


def write_training_curves(config: ml_collections.ConfigDict, workdir: str):
    """WORKDIR/training_curves.png: loss and validation scores against steps, every stage."""
    scalars = {stage: figures.read_scalars(os.path.join(workdir, stage, "tensorboard"))
               for stage in config.stages
               if os.path.isdir(os.path.join(workdir, stage, "tensorboard"))}
    if not scalars:
        return
    validated_on = ", ".join(f"{stage} on {config[stage].get('validation_split', '')}"
                             for stage, tags in scalars.items()
                             if any(tag.startswith("val/") for tag in tags)) or "none"
    fig = figures.training_curves_figure(
        scalars, contrast_names=tuple(config.data.target_channels),
        title=f"{config.model.name}: convergence ({os.path.basename(workdir.rstrip('/'))}; "
              f"validated: {validated_on})")
    io.write_bytes(os.path.join(workdir, TRAINING_CURVES), figures.png_bytes(fig))


def mark_done(config: ml_collections.ConfigDict, stage_dir: str, *, steps: int,
              best_score: float | None = None, last_scores: dict | None = None, **extra):
    """Write the stage's done.json (what makes a rerun skip it; `extra` fields beside): the
    steps, the best validation score, the cohort it was trained on."""
    if is_chief():
        io.write_json(os.path.join(stage_dir, STAGE_DONE), {
            "steps": steps, **extra, "best_score": best_score,
            "best_metric": config.train.best_metric, "last_scores": last_scores or {},
            "cohort": cohorts.run_cohort_path(config)})


def mark_trained(config: ml_collections.ConfigDict, result: loop.StageResult):
    mark_done(config, result.stage_dir, steps=result.steps, best_score=result.best_score,
              last_scores=result.last_scores)


def stage_done(stage_dir: str, steps: int, cohort: str | None = None) -> bool:
    """Whether the stage finished `steps` steps. A stage finished on another cohort than
    `cohort` (the run's: another folder, or a phantom cache of another preset, seed or cohort
    format) is refused with a UserError: reusing it would score a model of other data."""
    path = os.path.join(stage_dir, STAGE_DONE)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        record = json.load(f)
    trained_on = record.get("cohort")  # absent in runs made before it was recorded
    if cohort and trained_on and os.path.normpath(trained_on) != os.path.normpath(cohort):
        raise UserError(f"{stage_dir} was trained on the cohort {trained_on}, not on this "
                        f"run's {cohort}: remove it or use another --workdir")
    return record.get("steps") == steps


def is_trained(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Whether every stage of `config` is finished in `workdir` (nothing left to train); the
    physics baseline has one fit, recorded in the last stage."""
    cohort = cohorts.run_cohort_path(config)
    stages = config.stages[-1:] if config.model.name == PHYSICS else config.stages
    return all(stage_done(os.path.join(workdir, stage), int(config[stage].steps), cohort)
               for stage in stages)


def evaluate_stage(config, stage_dir: str, split: str, cohort_dir: str, *, final: bool = True):
    """workflow.evaluate on the stage's best-or-latest generator: WORKDIR/<stage>/eval/.

    An intermediate stage (`final=False`, pre-training) is scored only: the uncertainty and
    the downstream segmenter are fitted for the model a run ends with (each fit costs minutes
    on a CPU)."""
    if jax.process_count() > 1:
        # evaluation restores and predicts on one host; run experiments.evaluate afterwards
        print(f"note: multi-process run: evaluate {stage_dir} with experiments.evaluate",
              flush=True)
        return None
    if not final:
        config = ml_collections.ConfigDict(config.to_dict())
        config.uncertainty.enabled = False
        config.segmentation.enabled = False
    return evaluate.evaluate_run(config, stage_dir, split, cohort_dir=cohort_dir)


def fit_physics(config: ml_collections.ConfigDict, workdir: str, cohort_dir: str) -> str:
    """Fit the physics baseline's per-contrast scales in closed form on every slice of the
    stages' training splits; save them as the last stage's checkpoint. Returns its stage dir."""
    stage = config.stages[-1]
    stage_dir = os.path.join(workdir, stage)
    splits = [str(config[s].train_split) for s in config.stages]
    module = checkpoints.build_generator_from_config(models, config)
    variables = models.init_physics_variables(module)

    def batches():
        for split in splits:
            yield from input_pipeline.make_eval_iterator(
                cohort_dir, split, config.data, batch_size=int(config.eval.batch_size),
                process_index=0, process_count=1)

    fitted = models.fit_physics_scales(module, variables, batches())
    scales = [float(s) for s in np.asarray(fitted["params"]["contrast_scale"])]
    meta = {"stage": stage, "step": 0, "config": config.to_json_best_effort(), "scores": {},
            "fit": "closed-form least squares inside the brain mask over every slice of "
                   + ", ".join(splits)}
    if is_chief():
        checkpoints.save_generator(stage_dir, 0, fitted, meta)
    print(f"[{stage}] physics baseline: scales fitted on {', '.join(splits)}: "
          + ", ".join(f"{c} {s:.3f}" for c, s in zip(config.data.target_channels, scales,
                                                      strict=True)), flush=True)
    return stage_dir


def run(config: ml_collections.ConfigDict, workdir: str, *, make_parents: bool = False):
    """Train (or fit) config.stages in order in `workdir`, evaluating after each; returns the
    trained stages' StageResults (empty for a finished run or the physics baseline).
    Everything cheap is checked before the cohort is built or anything is written."""
    configure_runtime(config)
    initialize_distributed(config)
    validate_config(config)
    check_init_from(config)
    workdir = check_workdir(workdir, make_parents=make_parents)
    cohort_dir = cohorts.get_cohort(config)
    workdir = prepare_workdir(config, workdir)
    if config.model.name == PHYSICS:
        return _run_physics(config, workdir, cohort_dir)
    results = []
    for index, stage in enumerate(config.stages):
        stage_config = config[stage]
        stage_dir = os.path.join(workdir, stage)
        if stage_done(stage_dir, int(stage_config.steps), cohort_dir):
            print(f"[{stage}] already trained to {stage_config.steps} steps in {stage_dir}; "
                  "skipped", flush=True)
            continue
        if index == 0:
            start = check_init_from(config)
            init_variables = (loop.final_generator_variables(start) if start
                              else prefit_pointwise_path(config, workdir, cohort_dir))
        else:
            init_variables = loop.final_generator_variables(
                os.path.join(workdir, config.stages[index - 1]))
        result = _train(config, stage, stage_dir, cohort_dir, init_variables,
                        summary_path=os.path.join(workdir, MODEL_SUMMARY))
        if config.eval.after_each_stage:
            evaluate_stage(config, stage_dir, stage_config.eval_split, cohort_dir,
                           final=index == len(config.stages) - 1)
        mark_trained(config, result)
        results.append(result)
    if is_chief():
        write_training_curves(config, workdir)
        print_outputs(config, workdir)
    return results


def _train(config, stage: str, stage_dir: str, cohort_dir: str, init_variables,
           summary_path: str | None = None, voxel_stride: int = 1) -> loop.StageResult:
    """loop.train_stage on config[stage]'s splits of the cohort (resumes when interrupted);
    `voxel_stride` > 1 trains on every n-th voxel of each slice (per-voxel models only)."""
    stage_config = config[stage]
    per_process_batch = int(config.train.batch_size) // jax.process_count()

    def train_batches(start_step):
        return input_pipeline.every_nth_voxel(input_pipeline.make_train_iterator(
            cohort_dir, stage_config.train_split, config.data, batch_size=per_process_batch,
            seed=int(config.seed), start_step=start_step), voxel_stride)

    split = validation_split(config, stage, cohort_dir)
    try:
        return loop.train_stage(
            config, stage=stage, stage_dir=stage_dir, train_batches=train_batches,
            validate=make_validator(config, cohort_dir, split) if split else None,
            init_generator_variables=init_variables, summary_path=summary_path)
    except loop.NonFiniteLossError as error:
        raise UserError(str(error)) from None


# ------------------------------------------------------------------ the per-voxel pre-fit


def prefit_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """The per-voxel MLP's training config for the pre-fit of config's first stage (one
    stage, PREFIT_STAGE, on that stage's splits, no adversary), or None when there is none:
    config.pointwise_prefit.steps = 0, config.init_from set, or no per-voxel path."""
    prefit = config.get("pointwise_prefit")
    if prefit is None or int(prefit.steps) <= 0 or config.init_from:
        return None
    generator = checkpoints.build_generator_from_config(models, config)
    if getattr(generator, "pointwise_width", 0) <= 0:
        return None
    first = config[config.stages[0]]
    mlp = config.copy_and_resolve_references()
    with mlp.unlocked():
        mlp.model.name = "pervoxel"
        mlp.model.pervoxel_width = int(config.model.pointwise_width)
        mlp.model.pervoxel_layers = int(config.model.pointwise_layers)
        mlp.discriminator.name = "none"
        mlp.stages = (PREFIT_STAGE,)
        mlp[PREFIT_STAGE] = ml_collections.ConfigDict({
            "train_split": first.train_split, "eval_split": first.eval_split,
            "validation_split": first.get("validation_split", ""),
            "steps": int(prefit.steps), "learning_rate": float(prefit.learning_rate),
            "freeze_encoder_steps": 0})
    return mlp


def prefit_pointwise_path(config: ml_collections.ConfigDict, workdir: str,
                          cohort_dir: str) -> dict | None:
    """Train the per-voxel MLP into WORKDIR/prefit (once: a finished pre-fit is reused, an
    interrupted one resumes) and return the first stage's starting generator variables:
    fresh weights with the per-voxel path set to the MLP and the full-resolution head at
    zero (models.seed_pointwise_path). None when config has no pre-fit."""
    mlp_config = prefit_config(config)
    if mlp_config is None:
        return None
    stage_dir = os.path.join(workdir, PREFIT_STAGE)
    steps = int(mlp_config[PREFIT_STAGE].steps)
    if stage_done(stage_dir, steps, cohort_dir):
        print(f"[{PREFIT_STAGE}] per-voxel MLP already trained to {steps} steps in "
              f"{stage_dir}; reused", flush=True)
    else:
        print(f"[{PREFIT_STAGE}] training the per-voxel path alone first ({steps} steps, "
              "config.pointwise_prefit)", flush=True)
        mark_trained(config, _train(mlp_config, PREFIT_STAGE, stage_dir, cohort_dir, None,
                                    voxel_stride=int(config.pointwise_prefit.voxel_stride)))
    mlp_params = loop.final_generator_variables(stage_dir)["params"]
    generator = checkpoints.build_generator_from_config(models, config)
    in_channels = np.shape(mlp_params["hidden_0"]["kernel"])[2]
    side = 2 ** int(config.model.depth)  # the smallest input the U-Net takes unpadded
    key = jax.random.key(int(config.seed), impl="rbg")  # as the loop's initialization
    variables = generator.init({"params": key, "dropout": key},
                               np.zeros((1, side, side, in_channels), np.float32), train=False)
    return models.seed_pointwise_path(variables, mlp_params)


def print_outputs(config, workdir: str) -> None:
    """Where a finished run's report, figures and curves are (the last lines of a run)."""
    stage = config.stages[-1]
    eval_dir = os.path.join(workdir, stage, "eval", str(config[stage].eval_split))
    lines = [f"done: {workdir}"]
    for label, path in (("report", os.path.join(eval_dir, "report.md")),
                        ("figures", os.path.join(eval_dir, "figures")),
                        ("curves", os.path.join(workdir, TRAINING_CURVES))):
        if os.path.exists(path):
            lines.append(f"  {label:8s} {path}")
    print("\n".join(lines), flush=True)


def _run_physics(config, workdir: str, cohort_dir: str):
    stage = config.stages[-1]
    stage_dir = os.path.join(workdir, stage)
    if stage_done(stage_dir, int(config[stage].steps), cohort_dir):
        print(f"[{stage}] physics baseline already fitted in {stage_dir}; skipped", flush=True)
        return []
    fit_physics(config, workdir, cohort_dir)
    if config.eval.after_each_stage:
        evaluate_stage(config, stage_dir, config[stage].eval_split, cohort_dir)
    mark_done(config, stage_dir, steps=int(config[stage].steps), fit="closed-form")
    if is_chief():
        print_outputs(config, workdir)
    return []
