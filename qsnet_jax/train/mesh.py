"""Device mesh, shardings and the compiled (jit with shardings) steps.

Mesh axes ("data", "model"). Batches are sharded over "data". Parameters and optimizer
state are replicated, or under `config.mesh.param_sharding == "fsdp"` every array with at
least `config.mesh.fsdp_min_size` elements is sharded over "data" along its largest axis
that the data-axis size divides (Adam moments have their parameter's shape and therefore get
the same layout). XLA inserts the all-gathers and reduce-scatters.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PARAM_SHARDINGS = ("replicated", "fsdp")


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A ("data", "model") mesh over all devices of all processes; -1 = the rest."""
    devices = list(devices if devices is not None else jax.devices())
    count = len(devices)
    model = int(mesh_config.model)
    data = int(mesh_config.data)
    if model < 1:
        raise ValueError(f"config.mesh.model must be >= 1, got {model}")
    if data == -1:
        if count % model:
            raise ValueError(f"config.mesh.model={model} does not divide the {count} devices")
        data = count // model
    if data * model != count:
        raise ValueError(f"config.mesh data={data} x model={model} does not match the "
                         f"{count} devices; use -1 for 'all the rest'")
    return jax.make_mesh((data, model), ("data", "model"),
                         axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def data_axis_size(mesh: Mesh) -> int:
    return mesh.shape["data"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape, data_size: int, min_size: int) -> P:
    if int(np.prod(shape, dtype=np.int64)) < min_size or data_size == 1:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % data_size == 0:
            spec = [None] * len(shape)
            spec[axis] = "data"
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh: Mesh, mesh_config: ml_collections.ConfigDict):
    """A tree of NamedShardings matching `abstract_state` (e.g. from jax.eval_shape)."""
    rule = mesh_config.param_sharding
    if rule not in PARAM_SHARDINGS:
        raise ValueError(f"unknown config.mesh.param_sharding {rule!r}; "
                         f"known: {list(PARAM_SHARDINGS)}")
    if rule == "replicated":
        return jax.tree.map(lambda _: replicated(mesh), abstract_state)
    data_size = data_axis_size(mesh)
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, _fsdp_spec(leaf.shape, data_size,
                                                    int(mesh_config.fsdp_min_size))),
        abstract_state)


def place(host_tree, shardings):
    """Host (numpy) arrays, identical on every process -> global arrays with `shardings`."""
    return jax.tree.map(
        lambda value, sharding: jax.make_array_from_callback(
            np.shape(value), sharding, lambda index: np.asarray(value)[index]),
        host_tree, shardings)


def global_batch(local_batch: dict, mesh: Mesh, keys=None) -> dict:
    """This process's part of the batch -> global jax arrays sharded over "data".

    Non-numeric entries (subject ids) stay on the host and are dropped here.
    """
    sharding = batch_sharding(mesh)
    keys = keys or [k for k, v in local_batch.items()
                    if isinstance(v, np.ndarray | jax.Array) and v.dtype != object]
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[key]))
            for key in keys}


def compile_train_step(train_step, state_sharding, mesh: Mesh, batch_keys):
    """jit with explicit shardings; the old state's buffers are donated to the new one."""
    batch_shardings = {key: batch_sharding(mesh) for key in batch_keys}
    return jax.jit(train_step, in_shardings=(state_sharding, batch_shardings),
                   out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,))


def compile_predict(predict, variables_sharding, mesh: Mesh):
    """Prediction over a "data"-sharded batch, gathered to every process (validation)."""
    return jax.jit(predict, in_shardings=(variables_sharding, batch_sharding(mesh)),
                   out_shardings=replicated(mesh))
