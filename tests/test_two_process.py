"""Two JAX processes on 127.0.0.1 (CPU, gloo collectives) train configs/default.py:tiny together:
each feeds its own half of every batch; both end with the same parameters, and those equal a
one-process run fed the same global batches (both halves, in process order)."""

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
if {process_id} >= 0:
    config.distributed.initialize = True
    config.distributed.coordinator_address = {address!r}
    config.distributed.num_processes = 2
    config.distributed.process_id = {process_id}
else:
    # one process, fed what the two processes feed together: process 0's half of every
    # batch, then process 1's (the order of the "data" axis)
    from data_pipelines import input_pipeline
    per_process = input_pipeline.make_train_iterator

    def both_halves(cohort_dir, split, data_config, *, batch_size, seed, start_step=0):
        halves = [per_process(cohort_dir, split, data_config, batch_size=batch_size // 2,
                              seed=seed, start_step=start_step, process_index=p,
                              process_count=2) for p in range(2)]
        for first, second in zip(*halves):
            yield {{k: np.concatenate([first[k], second[k]]) for k in first}}

    input_pipeline.make_train_iterator = both_halves
results = train_eval.run(config, {workdir!r})
import jax
assert jax.process_count() == (2 if {process_id} >= 0 else 1)
assert jax.device_count() == jax.process_count()
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
def test_two_processes_agree_and_equal_one_process(tmp_path):
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

    # the one-process reference (process_id -1), after the pair: 2 cores are not shared by 3
    reference = subprocess.run(
        [sys.executable, "-c", WORKER.format(
            root=ROOT, cohort=str(cohort), address="", process_id=-1,
            workdir=str(tmp_path / "one_process"), out=str(tmp_path / "params_one.npz"))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert reference.returncode == 0, reference.stderr[-4000:]
    one = np.load(tmp_path / "params_one.npz")
    assert one.files == params[0].files
    for key in one.files:
        np.testing.assert_allclose(params[0][key], one[key], rtol=0, atol=1e-5, err_msg=key)
