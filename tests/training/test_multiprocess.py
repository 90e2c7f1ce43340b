"""Two local processes (jax.distributed over 127.0.0.1, gloo CPU collectives, 2 devices each)
give the same loss and parameter gradients as one process computing on the whole batch."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import multiprocess_worker as worker  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    port = free_port()
    out = tmp_path / "two_processes.npz"
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env.update(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
            PYTHONPATH=REPO,
        )
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "multiprocess_worker.py"), str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        ))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for pid, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {pid} failed:\n{log[-4000:]}"
    got = np.load(out)

    inputs_x, inputs_y, mask, params = worker.problem()
    for name, kw in worker.VARIANTS.items():
        loss, grads = jax.value_and_grad(worker.loss_fn)(params, inputs_x, inputs_y, mask, None, **kw)
        assert rel_err(got[f"{name}/loss"], loss) <= 1e-5, name
        for k in grads:
            assert rel_err(got[f"{name}/grad_{k}"], grads[k]) <= 1e-5, (name, k)
    # The no-grad variant really differs from the full gradient (the comparison can fail).
    assert rel_err(got["no_grad_gather/grad_wx"], got["dense/grad_wx"]) > 1e-2
