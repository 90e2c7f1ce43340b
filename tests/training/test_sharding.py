"""Mesh construction, host-local -> global batches and the distributed switch (8 CPU devices)."""
import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from molbind_jax.modalities import PairBatch
from molbind_jax.modalities.graph import GraphBatch
from molbind_jax.modalities.text import TextBatch
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
    graph = GraphBatch(nodes=np.arange(s * 5 * 2, dtype=np.int32).reshape(s, 5, 2),
                       edges=np.zeros((s, 4, 2), np.int32), senders=np.zeros((s, 4), np.int32),
                       receivers=np.zeros((s, 4), np.int32), n_node=np.ones((s, 3), np.int32),
                       n_edge=np.ones((s, 3), np.int32))
    text = TextBatch(ids=np.arange(b * 4, dtype=np.int32).reshape(b, 4), mask=np.ones((b, 4), np.int32))
    local = {"graph_text": PairBatch(graph, text, np.arange(b) % 3 != 0), "step": np.int32(7)}
    out = sharding.global_batch(local, mesh)
    gt = out["graph_text"]
    assert isinstance(gt, PairBatch) and isinstance(gt.x, GraphBatch) and isinstance(gt.y, TextBatch)
    assert gt.y.ids.shape == (16, 4) and gt.x.nodes.shape == (8, 5, 2) and gt.mask.dtype == np.bool_
    np.testing.assert_array_equal(np.asarray(gt.y.ids), text.ids)
    np.testing.assert_array_equal(np.asarray(gt.mask), local["graph_text"].mask)
    assert out["step"].sharding.spec == P()
    # Device d of the "data" axis holds example rows 2d, 2d+1 and graph shard d.
    for d, dev in enumerate(mesh.devices.flat):
        rows = [sh for sh in gt.y.ids.addressable_shards if sh.device == dev][0]
        np.testing.assert_array_equal(np.asarray(rows.data), text.ids[2 * d:2 * d + 2])
        g = [sh for sh in gt.x.nodes.addressable_shards if sh.device == dev][0]
        np.testing.assert_array_equal(np.asarray(g.data), graph.nodes[d:d + 1])


def test_global_batch_errors():
    mesh = sharding.make_mesh(8)
    bad = PairBatch(TextBatch(np.zeros((12, 3), np.int32), np.ones((12, 3), np.int32)),
                    TextBatch(np.zeros((12, 3), np.int32), np.ones((12, 3), np.int32)), np.ones(12, bool))
    with pytest.raises(ValueError, match=r"\.x\.ids.*leading axis 12 is not divisible by the 8"):
        sharding.global_batch(bad, mesh)
    with pytest.raises(TypeError, match="only numeric"):
        sharding.global_batch({"smiles": np.array(["CCO"] * 8)}, mesh)


def test_maybe_initialize_distributed_off_without_flag_or_env(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert sharding.maybe_initialize_distributed(False) is False
    assert not jax.distributed.is_initialized()


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
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
