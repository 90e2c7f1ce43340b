"""Mesh construction, host-local -> global batches and the distributed switch (8 CPU devices)."""
import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from molbind_jax.training import sharding


def test_make_mesh():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == jax.device_count() == 8
    assert mesh.axis_types == (AxisType.Auto,)
    assert sharding.make_mesh(2).shape["data"] == 2
    with pytest.raises(ValueError, match="available"):
        sharding.make_mesh(9)
    assert sharding.replicated(mesh).spec == P()
    assert sharding.data_sharded(mesh).spec == P("data")


def test_global_batch_places_rows_and_graph_shards_on_devices():
    mesh = sharding.make_mesh(8)
    b, s = 16, 8
    local = {
        "text_ids": np.arange(b * 4, dtype=np.int32).reshape(b, 4),
        "pair_mask": np.arange(b) % 3 != 0,
        "graph_nodes": np.arange(s * 5 * 2, dtype=np.int32).reshape(s, 5, 2),
        "graph_n_node": np.ones((s, 3), np.int32),
        "step": np.int32(7),
    }
    out = sharding.global_batch(local, mesh)
    assert out["text_ids"].shape == (16, 4) and out["graph_nodes"].shape == (8, 5, 2)
    np.testing.assert_array_equal(np.asarray(out["text_ids"]), local["text_ids"])
    assert out["step"].sharding.spec == P()
    # Device d of the "data" axis holds example rows 2d, 2d+1 and graph shard d.
    for d, dev in enumerate(mesh.devices.flat):
        rows = [sh for sh in out["text_ids"].addressable_shards if sh.device == dev][0]
        np.testing.assert_array_equal(np.asarray(rows.data), local["text_ids"][2 * d:2 * d + 2])
        g = [sh for sh in out["graph_nodes"].addressable_shards if sh.device == dev][0]
        np.testing.assert_array_equal(np.asarray(g.data), local["graph_nodes"][d:d + 1])


def test_global_batch_errors():
    mesh = sharding.make_mesh(8)
    with pytest.raises(ValueError, match=r"\['text_ids'\].*not divisible by the 8"):
        sharding.global_batch({"text_ids": np.zeros((12, 3), np.int32)}, mesh)
    with pytest.raises(TypeError, match="only numeric"):
        sharding.global_batch({"smiles": np.array(["CCO"] * 8)}, mesh)


def test_maybe_initialize_distributed_off_without_flag_or_env(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert sharding.maybe_initialize_distributed(False) is False
    assert not jax.distributed.is_initialized()


def test_maybe_initialize_distributed_flag_without_cluster_explains(tmp_path):
    """Asked by flag outside any cluster: a clear error naming the variables (fresh process,
    since jax.distributed must start before the backend)."""
    import os
    import subprocess
    import sys

    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_", "OMPI_"))}
    env.update(PYTHONPATH=repo, JAX_PLATFORMS="cpu")
    code = "from molbind_jax.training import sharding; sharding.maybe_initialize_distributed(True)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "JAX_COORDINATOR_ADDRESS" in out.stderr, out.stderr[-2000:]
