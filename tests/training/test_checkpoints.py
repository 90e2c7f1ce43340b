"""Checkpoints: keep-N, atomic saves, restore equality, metrics truncation on resume, and the
non-finite guard of the launcher (stops, keeps the last good checkpoint, saves nothing bad)."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from molbind_jax.training.checkpoints import Checkpointer
from molbind_jax.training.metric_writer import MetricWriter, read_metrics
from molbind_jax.training.train_step import state_leaves_equal
from smoke_configs import smoke_config as shared_smoke_config


def smoke_config(**overrides):
    """mini.py:smoke on 2 devices, no eval/TensorBoard, a record per step, plus overrides."""
    return shared_smoke_config(**{"eval_every": 0, "tensorboard": False, "log_every": 1, **overrides})


def _state(v: float):
    return {"step": jnp.asarray(int(v), jnp.int32),
            "trainable": {"w": jnp.full((3, 2), v, jnp.float32), "b": jnp.arange(4, dtype=jnp.float32) * v},
            "opt_state": ({"count": jnp.asarray(int(v), jnp.int32)},)}


def test_keep_n_and_restore_latest(tmp_path):
    ck = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    for s in range(1, 6):
        assert ck.save(s, _state(s), {"step": s, "input_position": s * 4}, force=True)
    ck.wait_until_finished()
    assert ck.all_steps() == [4, 5]
    restored, meta = ck.restore(_state(0))
    assert meta == {"step": 5, "input_position": 20}
    assert state_leaves_equal(restored, _state(5))
    older, _ = ck.restore(_state(0), step=4)
    assert state_leaves_equal(older, _state(4))
    ck.close()


def test_unfinished_save_is_ignored(tmp_path):
    # A save killed half-way leaves only orbax's temporary directory: it is never the latest.
    ck = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=3)
    ck.save(2, _state(2), {"step": 2}, force=True)
    ck.close()
    os.makedirs(tmp_path / "ckpt" / "4.orbax-checkpoint-tmp-1234567" / "state")
    ck = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=3)
    assert ck.latest_step() == 2
    restored, meta = ck.restore(_state(0))
    assert meta["step"] == 2 and state_leaves_equal(restored, _state(2))
    ck.close()


def test_metrics_after_resume_drop_records_past_the_checkpoint(tmp_path):
    w = MetricWriter(str(tmp_path), tensorboard=False)
    for s in range(1, 7):
        w.write(s, {"loss": 1.0 / s})
    w.write(6, {"r1/graph_text": 0.5}, eval=True)
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a line cut off by SIGKILL
    w = MetricWriter(str(tmp_path), tensorboard=False, resume_step=4)
    w.write(5, {"loss": 0.3, "finite": np.bool_(True), "nan": float("nan")})
    w.close()
    recs = read_metrics(str(tmp_path))
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[-1] == {"step": 5, "loss": 0.3, "finite": True, "nan": "nan"}


@pytest.mark.slow  # EventAccumulator imports TensorFlow
def test_tensorboard_scalars_read_back_as_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w = MetricWriter(str(tmp_path), tensorboard=True)
    w.write(3, {"loss": 1.5, "learning_rate": 1e-4, "skipped_records": 2})
    w.write(3, {"r1/graph_text": 0.25, "n/graph_text": 64}, eval=True)
    w.write(4, {"loss": 1.25, "skipped_records": 2})
    w.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(3, 1.5), (4, 1.25)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/r1/graph_text")] == [(3, 0.25)]
    assert acc.Scalars("learning_rate")[0].value == pytest.approx(1e-4)
    # Counts are left to metrics.jsonl: no scalar, no tensor.
    tags = acc.Tags()
    assert "skipped_records" not in tags["scalars"] and "eval/n/graph_text" not in tags["scalars"]
    assert not tags["tensors"]
    assert read_metrics(str(tmp_path))[0]["skipped_records"] == 2


@pytest.mark.slow  # EventAccumulator imports TensorFlow
def test_tensorboard_after_resume_drops_the_killed_runs_later_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w = MetricWriter(str(tmp_path), tensorboard=True)
    for s in range(1, 6):
        w.write(s, {"loss": float(s)})
    w.close()
    w = MetricWriter(str(tmp_path), tensorboard=True, resume_step=3)
    w.write(4, {"loss": 40.0})
    w.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from molbind_jax.training import train

    import re

    # A diverging run: an absurd learning rate blows the parameters up within a few steps.
    cfg = smoke_config(total_steps=8, checkpoint_every=1, keep_checkpoints=20)
    cfg.lr.peak, cfg.lr.warmup_steps = 1e38, 0
    workdir = str(tmp_path / "run")
    with pytest.raises(train.NonFiniteLossError) as err:
        train.train_and_evaluate(cfg, workdir)
    bad = int(re.search(r"non-finite loss at step (\d+)", str(err.value)).group(1))
    assert 1 < bad <= 8
    assert f"last good checkpoint is step {bad - 1}" in str(err.value)
    ck = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ck.latest_step() == bad - 1  # every step before was saved, the bad one never
    ck.close()
    recs = read_metrics(workdir)
    assert [r["step"] for r in recs] == list(range(1, bad))  # nothing logged for the bad step
    assert all(np.isfinite(r["loss"]) for r in recs)
