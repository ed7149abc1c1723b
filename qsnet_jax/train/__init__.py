"""Training of QS-Net and its baselines: state, pure steps, mesh, checkpoints, the loop.

    from qsnet_jax.train import load_generator
    config, module, variables = load_generator("runs/two_stage")  # best-or-latest, EMA
"""

from qsnet_jax.train.checkpoints import load_generator
from qsnet_jax.train.loop import NonFiniteLossError, StageResult, train_stage
from qsnet_jax.train.state import TrainState

__all__ = ["load_generator", "train_stage", "TrainState", "StageResult", "NonFiniteLossError"]
