"""GIN encoder: parity with the PyTorch reference, padding/batching invariance, masked BatchNorm,
self-loop options and the `.pth` importer's error messages."""
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from molbind_jax.convert import gin as convert_gin
from molbind_jax.convert.common import CheckpointError
from molbind_jax.models.gin import GIN, GINConfig, graphs_from_pyg
from molbind_jax.torch_reference.gin import GNN


# ----------------------------------------------------------------------------- helpers
def random_graphs(rng, sizes, num_atom_type=119, num_bond_type=4):
    """Molecule-like graphs: a chain plus a few ring-closing bonds, both directions stored."""
    graphs = []
    for n in sizes:
        x = np.stack([rng.integers(0, num_atom_type, n), rng.integers(0, 3, n)], 1)
        bonds = [(i, i + 1) for i in range(n - 1)]
        if n > 3:
            bonds += [(int(a), int(b)) for a, b in rng.integers(0, n, (n // 3, 2)) if a != b]
        ei, ea = [], []
        for a, b in bonds:
            t, d = int(rng.integers(0, num_bond_type)), int(rng.integers(0, 3))
            ei += [(a, b), (b, a)]
            ea += [(t, d), (t, d)]
        ei = np.array(ei, np.int64).reshape(-1, 2).T
        ea = np.array(ea, np.int64).reshape(-1, 2)
        graphs.append((x, ei, ea))
    return graphs


def to_pyg(graphs):
    xs, eis, eas, batch, off = [], [], [], [], 0
    for g, (x, ei, ea) in enumerate(graphs):
        xs.append(x)
        eis.append(ei + off)
        eas.append(ea)
        batch.append(np.full(len(x), g))
        off += len(x)
    return dict(x=np.concatenate(xs), edge_index=np.concatenate(eis, 1), edge_attr=np.concatenate(eas),
                batch=np.concatenate(batch))


def to_jraph(x, ei, ea):
    return jraph.GraphsTuple(nodes=np.asarray(x, np.int32), edges=np.asarray(ea, np.int32),
                             senders=np.asarray(ei[0], np.int32), receivers=np.asarray(ei[1], np.int32),
                             n_node=np.array([len(x)], np.int32), n_edge=np.array([ei.shape[1]], np.int32),
                             globals=None)


def pack(graphs, n_node_pad, n_edge_pad):
    """One padded shard (unbatched jraph layout) holding `graphs` plus the padding graph."""
    batched = jraph.batch([to_jraph(*g) for g in graphs])
    return jraph.pad_with_graphs(batched, n_node_pad, n_edge_pad, n_graph=len(graphs) + 1)


def shard(graphs, num_shards, n_node_pad, n_edge_pad):
    """The batched layout of DESIGN.md section 2: graphs split evenly over S shards."""
    per = len(graphs) // num_shards
    parts = [pack(graphs[s * per:(s + 1) * per], n_node_pad, n_edge_pad) for s in range(num_shards)]
    return jax.tree.map(lambda *a: np.stack(a), *parts)


def randomize_bn(model: GNN, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.batch_norms:
            bn.running_mean.copy_(torch.rand(bn.running_mean.shape, generator=g) * 2 - 1)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) * 1.5 + 0.5)
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(bn.bias.shape, generator=g) * 2 - 1)


def save_torch(model, path):
    torch.save(model.state_dict(), path)
    return str(path)


def save_torch_dict(sd, path):
    torch.save(sd, path)
    return str(path)


# One compiled forward per input shape; eager dispatch of the same graph costs seconds.
apply_eval = nnx.jit(lambda m, g: m(g, train=False))
apply_train = nnx.jit(lambda m, g: m(g, train=True))


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    model = GNN(num_layer=2, emb_dim=16)
    randomize_bn(model)
    return model, save_torch(model, tmp_path / "gin_tiny.pth")


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("self_loop_attr", [(0, 0), (4, 0)])
@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_tiny_matches_torch_reference(tiny_ckpt, self_loop_attr):
    _, path = tiny_ckpt
    inputs = to_pyg(random_graphs(np.random.default_rng(1), [4, 7, 1, 9]))
    module, report = convert_gin.load(path, self_loop_attr=self_loop_attr)
    assert module.config.emb_dim == 16 and module.config.num_layers == 2
    assert sorted(report.ignored) == ["batch_norms.0.num_batches_tracked", "batch_norms.1.num_batches_tracked"]
    ours = convert_gin.run_flax(module, inputs)
    ref = convert_gin.run_torch(path, inputs, self_loop_attr=self_loop_attr)
    assert ours["node_rep"].shape == (21, 16) and ours["graph_rep"].shape == (4, 16)
    for k in ("node_rep", "graph_rep"):
        assert rel_err(ours[k], ref[k]) <= 1e-5, k


def test_self_loop_hu_differs_from_original(tiny_ckpt):
    _, path = tiny_ckpt
    inputs = to_pyg(random_graphs(np.random.default_rng(2), [5, 6]))
    orig = convert_gin.run_flax(convert_gin.load(path)[0], inputs)["graph_rep"]
    hu = convert_gin.run_flax(convert_gin.load(path, self_loop_attr=(4, 0))[0], inputs)["graph_rep"]
    ref_hu = convert_gin.run_torch(path, inputs, self_loop_attr=(4, 0))["graph_rep"]
    assert rel_err(hu, orig) > 1e-2  # a real difference, not rounding
    assert rel_err(hu, ref_hu) <= 1e-5
    with pytest.raises(ValueError, match="self_loop_attr"):
        GINConfig.tiny(self_loop_attr=(6, 0))


@pytest.mark.slow
def test_full_size_parity_from_file(tmp_path):
    torch.manual_seed(3)
    model = GNN()  # 5 layers, 300 wide, the original's sizes
    randomize_bn(model, seed=3)
    path = save_torch(model, tmp_path / "gin_full.pth")
    inputs = to_pyg(random_graphs(np.random.default_rng(3), [12, 30, 1, 23, 7]))
    module, _ = convert_gin.load(path)
    assert (module.config.num_layers, module.config.emb_dim) == (5, 300)
    ours, ref = convert_gin.run_flax(module, inputs), convert_gin.run_torch(path, inputs)
    errs = {k: rel_err(ours[k], ref[k]) for k in ours}
    print("GIN full-size float32 parity (max rel err):", errs)
    assert max(errs.values()) <= 1e-5, errs


# ----------------------------------------------------------------------------- layouts
@pytest.fixture
def tiny_module(tiny_ckpt):
    return convert_gin.load(tiny_ckpt[1])[0]


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_eval_independent_of_padding_sharding_and_order(tiny_module):
    graphs = random_graphs(np.random.default_rng(4), [3, 8, 1, 5, 6, 2])
    # Each graph alone, minimal padding, unbatched layout.
    alone = []
    for g in graphs:  # same padded shape for all: one compilation
        node_rep, graph_rep = apply_eval(tiny_module, pack([g], 10, 30))
        assert graph_rep.shape == (2, 16)
        alone.append((np.asarray(node_rep[: len(g[0])]), np.asarray(graph_rep[0])))
    want = np.stack([gr for _, gr in alone])
    for num_shards, n_pad, e_pad, order in [(2, 20, 64, None), (3, 16, 40, [5, 4, 3, 2, 1, 0]),
                                            (6, 12, 30, [2, 0, 4, 1, 5, 3])]:
        order = list(range(6)) if order is None else order
        g = shard([graphs[i] for i in order], num_shards, n_pad, e_pad)
        node_rep, graph_rep = apply_eval(tiny_module, g)
        per = 6 // num_shards
        assert graph_rep.shape == (num_shards, per + 1, 16)
        got = np.asarray(graph_rep[:, :-1]).reshape(6, 16)
        np.testing.assert_allclose(got, want[order], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(graph_rep[:, -1]), 0.0)  # padding graph rows
        # node reps of the first graph of each shard
        for s in range(num_shards):
            i = order[s * per]
            np.testing.assert_allclose(np.asarray(node_rep[s, : len(graphs[i][0])]), alone[i][0],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_unbatched_layout_equals_single_shard(tiny_module):
    graphs = random_graphs(np.random.default_rng(5), [4, 6])
    flat = pack(graphs, 12, 30)
    stacked = jax.tree.map(lambda a: a[None], flat)
    n1, g1 = apply_eval(tiny_module, flat)
    n2, g2 = apply_eval(tiny_module, stacked)
    assert n1.shape == (12, 16) and n2.shape == (1, 12, 16) and g1.shape == (3, 16)
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2[0]))


def test_graphs_from_pyg_layout_and_errors():
    inputs = to_pyg(random_graphs(np.random.default_rng(6), [3, 4]))
    g = graphs_from_pyg(**inputs, num_graphs=3)  # a trailing empty graph is allowed
    assert g.nodes.shape == (1, 8, 2) and g.senders.shape == (1, inputs["edge_index"].shape[1])
    np.testing.assert_array_equal(g.n_node, [[3, 4, 0, 1]])
    np.testing.assert_array_equal(g.n_edge.sum(), inputs["edge_index"].shape[1])
    bad = dict(inputs, batch=inputs["batch"][::-1].copy())
    with pytest.raises(ValueError, match="non-decreasing"):
        graphs_from_pyg(**bad)
    with pytest.raises(ValueError, match="outside"):
        graphs_from_pyg(**dict(inputs, edge_index=inputs["edge_index"] + 100))


# ----------------------------------------------------------------------------- masked BN
@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_masked_batchnorm_train_equals_unpadded_batch(tiny_ckpt):
    """Train mode on a padded, 2-shard batch (S sharded over 2 devices under jit) equals the
    torch reference's train mode on the same graphs as one unpadded PyG batch."""
    model, path = tiny_ckpt
    graphs = random_graphs(np.random.default_rng(7), [3, 8, 1, 5])
    module, _ = convert_gin.load(path)

    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    g = shard(graphs, 2, 24, 60)  # heavy padding: 24 nodes per shard for 11 and 6 real ones
    g = jax.device_put(g, NamedSharding(mesh, P("data")))

    node_rep, graph_rep = apply_train(module, g)

    ref = GNN(num_layer=2, emb_dim=16)
    ref.load_state_dict(torch.load(path, weights_only=True))
    ref.train()
    pyg = to_pyg(graphs)
    with torch.no_grad():
        ref_nodes, ref_graphs = ref(*(torch.as_tensor(pyg[k]) for k in ("x", "edge_index", "edge_attr", "batch")))
    got_graphs = np.asarray(graph_rep[:, :-1]).reshape(4, 16)
    assert rel_err(got_graphs, ref_graphs.numpy()) <= 1e-5
    got_nodes = np.concatenate([np.asarray(node_rep[0, :11]), np.asarray(node_rep[1, :6])])
    assert rel_err(got_nodes, ref_nodes.numpy()) <= 1e-5
    for bn, tbn in zip(module.batch_norms, ref.batch_norms):
        np.testing.assert_allclose(np.asarray(bn.running_mean[...]), tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(bn.running_var[...]), tbn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    # The running stats really moved (momentum 0.1 towards the batch statistics).
    assert not np.allclose(np.asarray(module.batch_norms[0].running_mean[...]),
                           model.batch_norms[0].running_mean.numpy())


def test_bfloat16_option_runs_close(tiny_ckpt):
    inputs = to_pyg(random_graphs(np.random.default_rng(8), [5, 9]))
    f32 = convert_gin.run_flax(convert_gin.load(tiny_ckpt[1])[0], inputs)["graph_rep"]
    m16 = convert_gin.load(tiny_ckpt[1], dtype=jnp.bfloat16)[0]
    _, graph_rep = apply_eval(m16, graphs_from_pyg(**inputs))
    assert graph_rep.dtype == jnp.bfloat16
    assert rel_err(np.asarray(graph_rep[0, :-1], np.float32), f32) < 5e-2


# ----------------------------------------------------------------------------- bad checkpoints
def test_truncated_checkpoint(tiny_ckpt, tmp_path):
    data = open(tiny_ckpt[1], "rb").read()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        convert_gin.load(str(bad))


@pytest.mark.parametrize("edit,needle", [
    (lambda sd: sd.__setitem__("gnns.1.mlp.0.weight", torch.zeros(32, 15)), "gnns.1.mlp.0.weight: checkpoint"),
    (lambda sd: sd.pop("gnns.1.mlp.2.bias"), "(?s)missing key.*gnns.1.mlp.2.bias"),
    (lambda sd: sd.pop("gnns.0.edge_embedding2.weight"), "missing key gnns.0.edge_embedding2.weight"),
    (lambda sd: sd.__setitem__("gnns.0.extra.weight", torch.zeros(3)), "unexpected key"),
])
def test_bad_state_dicts_are_named(tiny_ckpt, tmp_path, edit, needle):
    sd = torch.load(tiny_ckpt[1], weights_only=True)
    edit(sd)
    path = save_torch_dict(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=needle):
        convert_gin.load(path)


def test_missing_bn_stats_only_when_allowed(tiny_ckpt, tmp_path):
    model, path = tiny_ckpt
    sd = {k: v for k, v in torch.load(path, weights_only=True).items()
          if "running" not in k and "num_batches" not in k}  # what a MolBind .ckpt holds
    stripped = save_torch_dict(sd, tmp_path / "no_stats.pth")
    with pytest.raises(CheckpointError, match="batch_norms.0.running_mean"):
        convert_gin.load(stripped)
    # Backbone first (with stats), then the stat-less weights on top: the stats survive.
    module, _ = convert_gin.load(path)
    with pytest.warns(UserWarning, match="running-stat"):
        report = convert_gin.assign(module, {k: v.numpy() for k, v in sd.items()}, stripped,
                                    allow_missing_bn_stats=True)
    assert len(report.used) == len(sd)
    np.testing.assert_array_equal(np.asarray(module.batch_norms[1].running_var[...]),
                                  model.batch_norms[1].running_var.numpy())


def test_prefixed_state_dict(tiny_ckpt, tmp_path):
    """A GIN inside a larger (Lightning-style) checkpoint is found by its prefix."""
    sd = torch.load(tiny_ckpt[1], weights_only=True)
    wrapped = {"state_dict": {**{f"model.graph_encoder.{k}": v for k, v in sd.items()},
                              "model.text_proj.weight": torch.zeros(2, 2)}}
    path = save_torch_dict(wrapped, tmp_path / "wrapped.ckpt")
    module, report = convert_gin.load(path)
    assert "model.text_proj.weight" in report.ignored
    inputs = to_pyg(random_graphs(np.random.default_rng(9), [4]))
    assert rel_err(convert_gin.run_flax(module, inputs)["graph_rep"],
                   convert_gin.run_torch(tiny_ckpt[1], inputs)["graph_rep"]) <= 1e-5


def test_dropout_only_in_train_mode():
    module = GIN(GINConfig.tiny(drop_ratio=0.5), rngs=nnx.Rngs(0, dropout=1))
    g = pack(random_graphs(np.random.default_rng(10), [4, 6]), 12, 30)
    e1, e2 = apply_eval(module, g)[1], apply_eval(module, g)[1]
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
    t1, t2 = apply_train(module, g)[1], apply_train(module, g)[1]
    assert np.isfinite(np.asarray(t1)).all()
    assert not np.allclose(np.asarray(t1), np.asarray(t2))  # fresh masks each step
