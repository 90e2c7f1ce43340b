"""GIN graph encoder (Hu et al. 2020 / MolBind `GNN`, spec section 1a) in Flax NNX on jraph graphs.

Input is a `jraph.GraphsTuple` in one of two layouts:

* batched (DESIGN.md section 2): every array has a leading shard axis S. Each shard holds a
  few packed graphs plus one padding graph (always the last); senders/receivers are
  shard-local node indices and padding edges point at padding nodes.
* unbatched jraph layout (as `jraph.pad_with_graphs` returns): treated as S=1 and the
  outputs come back without the S axis.

Message passing runs per shard (`jax.vmap` over S), so each shard's scatter stays local and
sharding S over devices needs no cross-device gather. Self-loops are not materialised as
edges: the spec formula `agg_i = h_i + EE1[sl0] + EE2[sl1] + sum_j (h_j + e_ji)` is applied
analytically. BatchNorm is masked: padding nodes never enter the statistics, and in train
mode the statistics are taken over the real nodes of *all* shards, so the result equals the
original's single big batch (under jit with S sharded, XLA inserts the cross-device sum).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from flax import nnx

from molbind_jax.models.layers import Dropout, check_dropout_rng


@dataclasses.dataclass(frozen=True)
class GINConfig:
    num_layers: int = 5
    emb_dim: int = 300
    num_atom_type: int = 120
    num_chirality: int = 3
    num_bond_type: int = 6
    num_bond_dir: int = 3
    # Attribute of the analytic self-loop. (0, 0) is what MolBind runs (PyG add_self_loops
    # with fill_value=0, spec bug 10); (4, 0) is Hu et al.'s self-loop bond type.
    self_loop_attr: tuple[int, int] = (0, 0)
    drop_ratio: float = 0.0
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    dtype: Any = jnp.float32  # activations; parameters and BN statistics stay float32
    dropout_rng: str = "hash"  # dropout mask generator, layers.DROPOUT_RNGS

    @classmethod
    def tiny(cls, **overrides) -> "GINConfig":
        return cls(**{"num_layers": 2, "emb_dim": 16, **overrides})

    def __post_init__(self):
        sl = tuple(int(v) for v in self.self_loop_attr)
        if len(sl) != 2 or not (0 <= sl[0] < self.num_bond_type and 0 <= sl[1] < self.num_bond_dir):
            raise ValueError(f"self_loop_attr {self.self_loop_attr} outside the bond tables "
                             f"({self.num_bond_type} types, {self.num_bond_dir} directions)")
        object.__setattr__(self, "self_loop_attr", sl)
        check_dropout_rng(self.dropout_rng)


def _torch_linear_init(fan_in: int):
    """torch.nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weights and biases."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


_xavier = nnx.initializers.xavier_uniform()


class MaskedBatchNorm(nnx.Module):
    """BatchNorm1d over the node axis that ignores padding nodes.

    Train mode: mean and biased variance over the real nodes of every shard normalise the
    batch; running stats move by `momentum` towards the mean and the *unbiased* variance, as
    torch.nn.BatchNorm1d does. Eval mode: running stats only.
    """

    def __init__(self, num_features: int, *, momentum: float, eps: float):
        self.weight = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.running_mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum = momentum
        self.eps = eps

    def __call__(self, h: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """h [..., D]; mask [...] (True = real node)."""
        x = h.astype(jnp.float32)
        if train:
            m = mask.astype(jnp.float32)[..., None]
            n = jnp.sum(m)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.sum(x * m, axis=axes) / jnp.maximum(n, 1.0)
            var = jnp.sum(jnp.square(x - mean) * m, axis=axes) / jnp.maximum(n, 1.0)
            unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
            mom = self.momentum
            self.running_mean.set_value((1 - mom) * self.running_mean[...] + mom * mean)
            self.running_var.set_value((1 - mom) * self.running_var[...] + mom * unbiased)
        else:
            mean, var = self.running_mean[...], self.running_var[...]
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]
        return y.astype(h.dtype)


class GINLayer(nnx.Module):
    """One GINConv: edge embeddings, sum aggregation with an analytic self-loop, 2-layer MLP."""

    def __init__(self, cfg: GINConfig, *, rngs: nnx.Rngs):
        d = cfg.emb_dim
        self.cfg = cfg
        self.edge_embedding1 = nnx.Embed(cfg.num_bond_type, d, embedding_init=_xavier, rngs=rngs)
        self.edge_embedding2 = nnx.Embed(cfg.num_bond_dir, d, embedding_init=_xavier, rngs=rngs)
        self.mlp_0 = nnx.Linear(d, 2 * d, dtype=cfg.dtype, kernel_init=_torch_linear_init(d),
                                bias_init=_torch_linear_init(d), rngs=rngs)
        self.mlp_2 = nnx.Linear(2 * d, d, dtype=cfg.dtype, kernel_init=_torch_linear_init(2 * d),
                                bias_init=_torch_linear_init(2 * d), rngs=rngs)

    def aggregate(self, h, edges, senders, receivers):
        """One shard: h [Nn,D], edges [Ne,2], senders/receivers [Ne] -> the summed messages [Nn,D]."""
        ee1, ee2 = self.edge_embedding1.embedding[...], self.edge_embedding2.embedding[...]
        e = (ee1[edges[:, 0]] + ee2[edges[:, 1]]).astype(h.dtype)
        messages = h[senders] + e
        agg = jax.ops.segment_sum(messages, receivers, num_segments=h.shape[0])
        sl0, sl1 = self.cfg.self_loop_attr
        return agg + h + (ee1[sl0] + ee2[sl1]).astype(h.dtype)

    def mlp(self, agg):
        """The node-wise MLP, on any leading axes."""
        return self.mlp_2(jax.nn.relu(self.mlp_0(agg)))

    def __call__(self, h, edges, senders, receivers):
        """One shard: h [Nn,D], edges [Ne,2], senders/receivers [Ne] -> [Nn,D]."""
        return self.mlp(self.aggregate(h, edges, senders, receivers))


def _as_batched(graph: jraph.GraphsTuple) -> tuple[jraph.GraphsTuple, bool]:
    if graph.nodes.ndim == 2:
        return jax.tree.map(lambda a: None if a is None else jnp.asarray(a)[None], graph), False
    if graph.nodes.ndim == 3:
        return graph, True
    raise ValueError(f"graph.nodes must be [Nn,2] or [S,Nn,2], got shape {graph.nodes.shape}")


def node_graph_index(n_node: jax.Array, num_nodes: int) -> jax.Array:
    """Graph id of every node of one shard (nodes are packed graph by graph, as jraph does)."""
    return jnp.repeat(jnp.arange(n_node.shape[0]), n_node, total_repeat_length=num_nodes)


class GIN(nnx.Module):
    """The MolBind GIN: 5 GINConv layers, masked BatchNorm, JK='last', mean pooling."""

    def __init__(self, config: GINConfig, *, rngs: nnx.Rngs):
        cfg = self.config = config
        self.x_embedding1 = nnx.Embed(cfg.num_atom_type, cfg.emb_dim, embedding_init=_xavier, rngs=rngs)
        self.x_embedding2 = nnx.Embed(cfg.num_chirality, cfg.emb_dim, embedding_init=_xavier, rngs=rngs)
        self.gnns = nnx.List([GINLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.batch_norms = nnx.List([
            MaskedBatchNorm(cfg.emb_dim, momentum=cfg.bn_momentum, eps=cfg.bn_eps)
            for _ in range(cfg.num_layers)
        ])
        self.dropout = Dropout(cfg.drop_ratio, impl=cfg.dropout_rng, rngs=rngs)

    def __call__(self, graph: jraph.GraphsTuple, *, train: bool = False):
        """Returns (node_rep [S,Nn,D], graph_rep [S,G+1,D]); without S for unbatched input.

        Padding nodes (those of each shard's last graph) are zeroed after every layer, so
        whatever the padding edges pile onto them can neither overflow nor leak; the padding
        graph's row of graph_rep is therefore zero.
        """
        g, batched = _as_batched(graph)
        nodes = jnp.asarray(g.nodes).astype(jnp.int32)
        edges = jnp.asarray(g.edges).astype(jnp.int32)
        senders = jnp.asarray(g.senders).astype(jnp.int32)
        receivers = jnp.asarray(g.receivers).astype(jnp.int32)
        n_node = jnp.asarray(g.n_node).astype(jnp.int32)
        num_graphs, num_nodes = n_node.shape[1], nodes.shape[1]
        graph_idx = jax.vmap(lambda c: node_graph_index(c, num_nodes))(n_node)  # [S,Nn]
        # The last graph of each shard is the padding graph (jraph.pad_with_graphs convention).
        mask = graph_idx < num_graphs - 1
        maskf = mask[..., None].astype(self.config.dtype)

        h = (self.x_embedding1.embedding[...][nodes[..., 0]]
             + self.x_embedding2.embedding[...][nodes[..., 1]]).astype(self.config.dtype)
        last = self.config.num_layers - 1
        for layer, (conv, bn) in enumerate(zip(self.gnns, self.batch_norms)):
            # Aggregation per shard (shard-local indices); the MLP on all nodes at once, as one
            # 2-D matmul (faster on XLA:CPU than the batched matmul a vmap would make).
            agg = jax.vmap(conv.aggregate)(h, edges, senders, receivers)
            h = conv.mlp(agg.reshape(-1, agg.shape[-1])).reshape(agg.shape)
            h = bn(h, mask, train=train)
            if layer != last:
                h = jax.nn.relu(h)
            h = self.dropout(h, train=train)
            h = h * maskf
        node_rep = h

        def pool(hs, gi, counts):
            sums = jax.ops.segment_sum(hs.astype(jnp.float32), gi, num_segments=num_graphs)
            return sums / jnp.maximum(counts, 1).astype(jnp.float32)[:, None]

        graph_rep = jax.vmap(pool)(node_rep, graph_idx, n_node).astype(self.config.dtype)
        if not batched:
            return node_rep[0], graph_rep[0]
        return node_rep, graph_rep


def graphs_from_pyg(x, edge_index, edge_attr, batch, num_graphs: int | None = None) -> jraph.GraphsTuple:
    """A PyG-style batch as one shard in the batched layout (leading S=1), plus a padding graph.

    Args:
      x: [n, >=2] node features (only the first two columns are used, as the original).
      edge_index: [2, e], source row 0, target row 1.
      edge_attr: [e, >=2] edge features.
      batch: [n] graph id of every node, non-decreasing (PyG's `Batch.batch`).
      num_graphs: number of graphs (default max(batch)+1); graphs without nodes are allowed.

    Returns a GraphsTuple with nodes [1,n+1,2], edges [1,e,2], senders/receivers [1,e],
    n_node/n_edge [1,G+1]; the one padding node forms the last graph.
    """
    x = np.asarray(x)
    edge_index = np.asarray(edge_index).reshape(2, -1).astype(np.int64)
    edge_attr = np.asarray(edge_attr).reshape(edge_index.shape[1], -1)
    batch = np.asarray(batch).astype(np.int64).reshape(-1)
    n = x.shape[0]
    if batch.shape[0] != n:
        raise ValueError(f"batch has {batch.shape[0]} entries for {n} nodes")
    if n and np.any(np.diff(batch) < 0):
        raise ValueError("batch must be non-decreasing (nodes packed graph by graph, as PyG does)")
    if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= n):
        raise ValueError(f"edge_index refers to nodes outside 0..{n - 1}")
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if n else 0
    if n and batch.max() >= num_graphs:
        raise ValueError(f"batch holds graph id {batch.max()} but num_graphs={num_graphs}")
    n_node = np.bincount(batch, minlength=num_graphs).astype(np.int32)
    edge_graph = batch[edge_index[0]] if edge_index.size else np.zeros((0,), np.int64)
    if edge_index.size and np.any(np.diff(edge_graph) < 0):
        raise ValueError("edges must be packed graph by graph (PyG batches are)")
    n_edge = np.bincount(edge_graph, minlength=num_graphs).astype(np.int32)
    nodes = np.concatenate([x[:, :2].astype(np.int32), np.zeros((1, 2), np.int32)])
    return jraph.GraphsTuple(
        nodes=nodes[None],
        edges=edge_attr[:, :2].astype(np.int32)[None],
        senders=edge_index[0].astype(np.int32)[None],
        receivers=edge_index[1].astype(np.int32)[None],
        n_node=np.append(n_node, 1).astype(np.int32)[None],
        n_edge=np.append(n_edge, 0).astype(np.int32)[None],
        globals=None,
    )
