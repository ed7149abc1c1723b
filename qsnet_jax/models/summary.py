"""Parameter counts and FLOPs of models, without allocating or running them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def count_params(variables_or_shapes) -> int:
    """Number of scalars in the "params" collection (batch statistics are not parameters)."""
    params = variables_or_shapes.get("params", {})
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def abstract_variables(module, *example_inputs):
    """The variables' shapes and dtypes (jax.eval_shape: nothing is computed or allocated)."""
    init = lambda *xs: module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                   *xs, train=False)
    return jax.eval_shape(init, *example_inputs)


def forward_flops(module, variables_shapes, *example_inputs) -> float:
    """FLOPs of the jitted inference forward pass from XLA's cost analysis of the compiled
    program (convolutions and matmuls count 2 per multiply-add)."""
    forward = lambda variables, *xs: module.apply(variables, *xs, train=False)
    compiled = jax.jit(forward).lower(variables_shapes, *example_inputs).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX returned one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def model_summary(module, input_shape) -> dict:
    """{"params": int, "flops_per_slice": float} of a generator for inputs `input_shape`:
    (B, H, W, C) or (H, W, C); FLOPs are of the forward pass, divided by the batch size."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (B, H, W, C) or (H, W, C), got {input_shape}")
    example = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = abstract_variables(module, example)
    return {"params": count_params(variables),
            "flops_per_slice": forward_flops(module, variables, example) / shape[0]}
