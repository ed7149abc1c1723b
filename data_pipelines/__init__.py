"""Cohorts on disk and the tf.data pipeline that feeds training and evaluation.

Importing `qsnet_jax` first sets TensorFlow's log level (qsnet_jax/__init__.py) before any
module here imports TensorFlow.
"""

import qsnet_jax  # noqa: F401
