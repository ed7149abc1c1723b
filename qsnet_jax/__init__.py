"""QS-Net in JAX: the library (models, physics, losses, metrics, training). It imports
nothing from `data_pipelines`, `workflow` or `experiments` (docs/design.md, "Layout").

TensorFlow (used only to feed data, and by clu's metric writers) and XLA's C++ logging are
quieted here, the one place every project import passes through before TensorFlow can be
imported (the log level, and the start-up notices the log level does not reach:
`qsnet_jax.quiet_tensorflow`), and the XLA CPU options of `qsnet_jax.xla_cpu` are set before
JAX starts its backend. A value the user set is kept.
"""

import os

from qsnet_jax import quiet_tensorflow, xla_cpu

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
quiet_tensorflow.install()
xla_cpu.apply_default_options()
