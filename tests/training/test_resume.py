"""Resume equality: a run killed with SIGKILL between checkpoints and started again with the
same command ends with parameters bit-for-bit equal to an uninterrupted run (CPU).

Both runs are real launcher processes (`python -m molbind_jax.training.train`, mini.py:smoke: tiny
MolBind, synthetic pairs, 2 CPU devices). The killed run dies right after step 5; its last
complete checkpoint is step 4 (or 2, if the kill lands while step 4 is still being written:
orbax only renames a finished save into place), and the second start resumes from there.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config=experiments/configs/mini.py:smoke", "--config.total_steps=6", "--config.checkpoint_every=2",
        "--config.keep_checkpoints=5", "--config.eval_every=0", "--config.log_every=1",
        "--config.tensorboard=False", "--config.progress_bar=False", "--config.num_devices=2"]


def _run(workdir, *extra):
    # A persistent compilation cache shared by the three processes: only the first compiles
    # (the same programs give the same bits, so it cannot hide a resume difference).
    cache = os.path.join(os.path.dirname(workdir), "xla_cache")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    cmd = [sys.executable, "-m", "molbind_jax.training.train", f"--workdir={workdir}", *ARGS, *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _final_state(workdir, step=6):
    import orbax.checkpoint as ocp

    ckptr = ocp.PyTreeCheckpointer()
    tree = ckptr.restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return tree


def _leaves(tree):
    import jax

    return jax.tree_util.tree_flatten_with_path(tree)[0]


@pytest.mark.slow
def test_sigkill_and_rerun_equals_uninterrupted_run(tmp_path):
    ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
    r = _run(ref)
    assert r.returncode == 0, r.stderr[-3000:]

    k = _run(killed, "--config.debug_kill_at_step=5")
    assert k.returncode == -signal.SIGKILL, (k.returncode, k.stderr[-3000:])
    done = sorted(int(d) for d in os.listdir(os.path.join(killed, "checkpoints")) if d.isdigit())
    assert done and max(done) in (2, 4) and 6 not in done

    again = _run(killed)  # the same command again: resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {max(done)}" in again.stderr

    a, b = _leaves(_final_state(ref)), _leaves(_final_state(killed))
    assert [p for p, _ in a] == [p for p, _ in b]
    assert len(a) > 20  # params, BN statistics and optimizer moments, not an empty tree
    for (path, x), (_, y) in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y)), path

    # The metrics read as one run: every step once, the same losses as the reference.
    import json

    def losses(w):
        with open(os.path.join(w, "metrics.jsonl")) as f:
            return [(rec["step"], rec["loss"]) for rec in map(json.loads, f)]

    assert losses(killed) == losses(ref)
    assert [s for s, _ in losses(ref)] == [1, 2, 3, 4, 5, 6]
