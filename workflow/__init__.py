"""The workflow of QS-Net as importable code: train and evaluate a config, evaluate a trained
model, synthesize volumes, run studies, and write every report.

Layering (docs/design.md, "Layout"): `qsnet_jax` (the library) <- `data_pipelines` (cohorts,
tf.data) <- `workflow` (this package: files, folders, reports) <- `experiments` (command-line
entry points, each a thin wrapper of one function here). Notebooks import `workflow`.
"""
