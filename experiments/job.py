"""What `experiments.main` runs: validate the config, prepare the work dir, get the cohort,
train the stages in order, evaluate after each.

Stage chaining: a stage that is not the first starts from the previous stage's final (latest
checkpoint, raw not EMA) generator weights; its discriminator, optimizers, EMA (reset to the
loaded weights) and learning-rate schedule start fresh. The first stage starts from
`config.init_from` when set (a work dir, stage dir or checkpoint dir), else from scratch.
Re-running the same command in the same work dir resumes: a finished stage (its `done.json`
names the same step count) is skipped, an interrupted one continues from its latest checkpoint.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections
import numpy as np

from experiments.cli import UserError, write_atomic

STAGE_DONE = "done.json"
MODEL_SUMMARY = "model_summary.json"
TRAINING_CURVES = "training_curves.png"


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    workdir = os.path.abspath(os.path.expanduser(workdir))
    parent = os.path.dirname(workdir)
    if not os.path.isdir(parent):
        raise UserError(f"the parent of --workdir does not exist: {parent}")
    os.makedirs(workdir, exist_ok=True)
    if _is_chief():
        write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    return workdir


def _is_chief() -> bool:
    import jax  # noqa: PLC0415

    return jax.process_index() == 0


def initialize_distributed(config: ml_collections.ConfigDict):
    """jax.distributed.initialize() before anything touches a device (multi-host runs)."""
    dist = config.distributed
    if not dist.initialize:
        return
    import jax  # noqa: PLC0415

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


def validate_config(config: ml_collections.ConfigDict):
    """Every mistake a person can make in a config, as one line (UserError)."""
    from qsnet_jax import losses, models  # noqa: PLC0415
    from qsnet_jax.physics import channels  # noqa: PLC0415
    from qsnet_jax.train import mesh as mesh_lib  # noqa: PLC0415
    from qsnet_jax.train import optim  # noqa: PLC0415

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
    try:
        channels.check_channel_names(tuple(config.data.input_channels), what="input channel")
        channels.check_channel_names(tuple(config.data.target_channels),
                                     what="target channel")
    except ValueError as error:
        raise UserError(f"config.data: {error}") from None
    if config.model.name not in models.GENERATORS:
        raise UserError(f"unknown config.model.name {config.model.name!r}; known: "
                        f"{sorted(models.GENERATORS)}")
    if config.discriminator.name != "none" and \
            config.discriminator.name not in models.DISCRIMINATORS:
        raise UserError(f"unknown config.discriminator.name {config.discriminator.name!r}; "
                        f"known: {sorted(models.DISCRIMINATORS) + ['none']}")
    checks = [
        (config.loss.gan_loss in losses.GAN_LOSSES,
         f"unknown config.loss.gan_loss {config.loss.gan_loss!r}; "
         f"known: {list(losses.GAN_LOSSES)}"),
        (config.optim.lr_schedule in optim.SCHEDULES,
         f"unknown config.optim.lr_schedule {config.optim.lr_schedule!r}; "
         f"known: {list(optim.SCHEDULES)}"),
        (config.optim.optimizer in optim.OPTIMIZERS,
         f"unknown config.optim.optimizer {config.optim.optimizer!r}; "
         f"known: {list(optim.OPTIMIZERS)}"),
        (config.mesh.param_sharding in mesh_lib.PARAM_SHARDINGS,
         f"unknown config.mesh.param_sharding {config.mesh.param_sharding!r}; "
         f"known: {list(mesh_lib.PARAM_SHARDINGS)}"),
        (int(config.optim.disc_steps_per_gen_step) >= 0,
         "config.optim.disc_steps_per_gen_step must be >= 0"),
        (0.0 <= float(config.optim.ema_decay) < 1.0, "config.optim.ema_decay must be in [0, 1)"),
    ]
    for every in ("log_every_steps", "eval_every_steps", "image_every_steps",
                  "checkpoint_every_steps"):
        checks.append((int(config.train[every]) >= 1, f"config.train.{every} must be >= 1"))
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    check_batch_size(config)


def check_batch_size(config: ml_collections.ConfigDict):
    import jax  # noqa: PLC0415

    from qsnet_jax.train import mesh as mesh_lib  # noqa: PLC0415

    try:
        mesh = mesh_lib.make_mesh(config.mesh)
    except ValueError as error:
        raise UserError(str(error)) from None
    data_size, processes = mesh_lib.data_axis_size(mesh), jax.process_count()
    multiple = math.lcm(data_size, processes)
    batch = int(config.train.batch_size)
    if batch < 1 or batch % multiple:
        raise UserError(f"config.train.batch_size={batch} must be a multiple of {multiple} "
                        f"(the data-axis size {data_size} over {processes} process(es))")


def get_cohort(config: ml_collections.ConfigDict) -> str:
    """config.data.cohort_dir, or the phantom cohort (built into the cache the first time)."""
    if config.data.cohort_dir:
        cohort_dir = os.path.abspath(os.path.expanduser(config.data.cohort_dir))
        if not os.path.isfile(os.path.join(cohort_dir, "manifest.csv")):
            raise UserError(f"config.data.cohort_dir={config.data.cohort_dir} holds no "
                            "manifest.csv")
        return cohort_dir
    from data_pipelines import phantom  # noqa: PLC0415

    cache_dir = os.path.abspath(os.path.expanduser(config.data.phantom_cache_dir))
    return str(phantom.ensure_cohort(config.data.phantom_preset, config.data.phantom_seed,
                                     cache_dir))


def make_validator(config: ml_collections.ConfigDict, cohort_dir: str, split: str):
    """validate(predict, step) -> {"<contrast>/<metric>", "mean/<metric>": value} on the first
    config.train.eval_max_subjects subjects of `split` (every process scores all of them, so
    the sharded prediction runs the same number of times everywhere)."""
    from data_pipelines import input_pipeline  # noqa: PLC0415
    from qsnet_jax import metrics  # noqa: PLC0415

    view = input_pipeline.open_split(cohort_dir, split, config.data)
    subjects = [s["subject"] for s in view.subjects][:max(1, int(config.train.eval_max_subjects))]
    target_names = tuple(config.data.target_channels)

    def validate(predict, step):
        del step
        import jax  # noqa: PLC0415

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
        for metric in ("mae", "psnr", "ssim"):
            scores[f"mean/{metric}"] = float(np.mean([scores[f"{c}/{metric}"]
                                                      for c in target_names]))
        return scores

    return validate


def _broadcast_json(value):
    """Process 0's JSON-able value on every process (two collective broadcasts)."""
    from jax.experimental import multihost_utils  # noqa: PLC0415

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    length = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    padded = np.zeros(length, np.uint8)
    padded[:min(length, data.size)] = data[:length]
    received = np.asarray(multihost_utils.broadcast_one_to_all(padded), np.uint8)
    return json.loads(received.tobytes().decode())


def resolve_init(config: ml_collections.ConfigDict):
    """The generator variables the first stage starts from (config.init_from), or None."""
    if not config.init_from:
        return None
    from qsnet_jax.train import checkpoints, loop  # noqa: PLC0415

    path = os.path.abspath(os.path.expanduser(config.init_from))
    if not os.path.exists(path):
        raise UserError(f"config.init_from={config.init_from} does not exist: run "
                        "configs/pretrain.py first or set --config.init_from")
    try:
        return loop.final_generator_variables(path)
    except checkpoints.CheckpointNotFoundError as error:
        raise UserError(f"config.init_from={config.init_from}: {error}: run "
                        "configs/pretrain.py first or set --config.init_from") from None


def evaluate_stage(config, workdir: str, stage_dir: str, split: str, cohort_dir: str):
    """experiments.evaluate on the stage's best-or-latest generator: WORKDIR/<stage>/eval/."""
    import jax  # noqa: PLC0415

    if jax.process_count() > 1:
        # evaluation restores and predicts on one host; run experiments.evaluate afterwards
        print(f"note: multi-process run: evaluate {stage_dir} with experiments.evaluate",
              flush=True)
        return None
    from experiments import evaluate  # noqa: PLC0415

    return evaluate.evaluate_run(config, workdir, stage_dir, split, cohort_dir=cohort_dir)


def configure_runtime(config: ml_collections.ConfigDict):
    """Quiet library INFO logs (the loop prints its own progress lines) and turn on XLA's
    persistent compilation cache."""
    import jax  # noqa: PLC0415
    from absl import logging  # noqa: PLC0415

    logging.set_verbosity(logging.WARNING)
    cache_dir = config.train.get("compilation_cache_dir", "")
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir",
                          os.path.abspath(os.path.expanduser(cache_dir)))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run(config: ml_collections.ConfigDict, workdir: str):
    """Train config.stages in order in `workdir`; returns the stages' StageResults."""
    configure_runtime(config)
    initialize_distributed(config)
    validate_config(config)
    workdir = prepare_workdir(config, workdir)
    cohort_dir = get_cohort(config)

    import jax  # noqa: PLC0415

    from data_pipelines import input_pipeline  # noqa: PLC0415
    from qsnet_jax.train import loop  # noqa: PLC0415

    init_variables = None
    results = []
    per_process_batch = int(config.train.batch_size) // jax.process_count()
    for index, stage in enumerate(config.stages):
        stage_config = config[stage]
        stage_dir = os.path.join(workdir, stage)
        if stage_done(stage_dir, int(stage_config.steps)):
            print(f"[{stage}] already trained to {stage_config.steps} steps in {stage_dir}; "
                  "skipped", flush=True)
            continue
        if index == 0:
            init_variables = resolve_init(config)
        else:
            init_variables = loop.final_generator_variables(
                os.path.join(workdir, config.stages[index - 1]))

        def train_batches(start_step, split=stage_config.train_split):
            return input_pipeline.make_train_iterator(
                cohort_dir, split, config.data, batch_size=per_process_batch,
                seed=int(config.seed), start_step=start_step)

        try:
            result = loop.train_stage(
                config, stage=stage, stage_dir=stage_dir, train_batches=train_batches,
                validate=make_validator(config, cohort_dir, stage_config.eval_split),
                init_generator_variables=init_variables,
                summary_path=os.path.join(workdir, MODEL_SUMMARY))
        except loop.NonFiniteLossError as error:
            raise UserError(str(error)) from None
        if config.eval.after_each_stage:
            evaluate_stage(config, workdir, stage_dir, stage_config.eval_split, cohort_dir)
        if _is_chief():
            write_atomic(os.path.join(stage_dir, STAGE_DONE), json.dumps(
                {"steps": result.steps, "best_score": result.best_score,
                 "best_metric": config.train.best_metric, "last_scores": result.last_scores},
                indent=2))
        results.append(result)
    if _is_chief():
        write_training_curves(config, workdir)
    return results


def write_training_curves(config: ml_collections.ConfigDict, workdir: str):
    """WORKDIR/training_curves.png: loss and validation scores against steps, every stage."""
    from qsnet_jax import figures  # noqa: PLC0415
    from qsnet_jax.io import staged_file  # noqa: PLC0415

    scalars = {stage: figures.read_scalars(os.path.join(workdir, stage, "tensorboard"))
               for stage in config.stages
               if os.path.isdir(os.path.join(workdir, stage, "tensorboard"))}
    if not scalars:
        return
    fig = figures.training_curves_figure(
        scalars, contrast_names=tuple(config.data.target_channels),
        title=f"{config.model.name}: convergence ({os.path.basename(workdir.rstrip('/'))})")
    with staged_file(os.path.join(workdir, TRAINING_CURVES)) as tmp, open(tmp, "wb") as f:
        f.write(figures.png_bytes(fig))


def stage_done(stage_dir: str, steps: int) -> bool:
    path = os.path.join(stage_dir, STAGE_DONE)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("steps") == steps
