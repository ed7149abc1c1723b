"""QS-Net in JAX: the library (models, physics, losses, metrics, training). It imports
nothing from `data_pipelines`, `workflow` or `experiments` (docs/design.md, "Layout").

TensorFlow (used only to feed data, and by clu's metric writers) and XLA's C++ logging are
quieted here, the one place every project import passes through before TensorFlow can be
imported. A value the user set is kept.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
