"""What `experiments.main` runs: validate the config, prepare the work dir, run the stages."""

from __future__ import annotations

import json
import os

import ml_collections

from experiments.cli import UserError


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    workdir = os.path.abspath(os.path.expanduser(workdir))
    parent = os.path.dirname(workdir)
    if not os.path.isdir(parent):
        raise UserError(f"the parent of --workdir does not exist: {parent}")
    os.makedirs(workdir, exist_ok=True)
    _write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    return workdir


def run(config: ml_collections.ConfigDict, workdir: str):
    workdir = prepare_workdir(config, workdir)
    raise UserError("training is not built yet (issue 6); the resolved config was written to "
                    f"{os.path.join(workdir, 'config.json')}")


def _write_atomic(path: str, text: str):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


__all__ = ["prepare_workdir", "run", "json"]
