"""Two JAX processes on 127.0.0.1 (CPU, gloo collectives) train configs/default.py:tiny together:
each feeds its own half of every batch, and both end with the same parameters."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_cohort import write_tiny_cohort
from test_train_loop import SUBJECTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import sys
import numpy as np
sys.path.insert(0, {root!r})
from configs import default
from workflow import train_eval
config = default.get_config("tiny")
config.data.cohort_dir = {cohort!r}
config.stages = ("pretrain",)
config.pretrain.steps = 4
config.train.checkpoint_every_steps = 2
config.eval.after_each_stage = False
config.distributed.initialize = True
config.distributed.coordinator_address = {address!r}
config.distributed.num_processes = 2
config.distributed.process_id = {process_id}
results = train_eval.run(config, {workdir!r})
import jax
assert jax.process_count() == 2 and jax.device_count() == 2
leaves = jax.tree.leaves(results[0].state.gen_params)
np.savez({out!r}, *[np.asarray(x) for x in leaves])
print("WORKER_DONE", jax.process_index())
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_train_smoke_and_agree(tmp_path):
    cohort = tmp_path / "cohort"
    write_tiny_cohort(str(cohort), subjects=SUBJECTS, shape=(16, 20))
    # prepare the TFDS copy once, before two processes would race to build it
    subprocess.run([sys.executable, "-c", "from data_pipelines import input_pipeline as ip; "
                    f"ip.open_split({str(cohort)!r}, 'healthy_train', None)"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    workers = [subprocess.Popen(
        [sys.executable, "-c", WORKER.format(root=ROOT, cohort=str(cohort), address=address,
                                             process_id=i, workdir=str(tmp_path / "run"),
                                             out=str(tmp_path / f"params{i}.npz"))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outputs = []
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=400))
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            raise
    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-4000:]
        assert "WORKER_DONE" in stdout
    params = [np.load(tmp_path / f"params{i}.npz") for i in range(2)]
    assert len(params[0].files) > 10
    for key in params[0].files:
        np.testing.assert_array_equal(params[0][key], params[1][key])
    assert os.path.isdir(tmp_path / "run" / "pretrain" / "checkpoints" / "4")
