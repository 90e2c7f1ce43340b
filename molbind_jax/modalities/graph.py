"""2D molecular graphs: Hu-style node/edge features through the GIN, mean over nodes, LN + Linear.

Stored: `graph_node_feat` [n, 2], `graph_edge_index` [2, e], `graph_edge_feat` [e, 2].
Batch: `GraphBatch`, jraph-style padded graphs stacked on a leading shard axis.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from molbind_jax.modalities.base import ModalitySpec, Record

SYNTHETIC_MAX_ATOMS = 12


class GraphBatch(NamedTuple):
    """B graphs in S shards (one per local device) of B/S graphs plus one padding graph each.

    nodes [S, Nn, 2] int32 (atom type, chirality); edges [S, Ne, 2] int32 (bond type,
    direction); senders, receivers [S, Ne] int32 node indices within the shard; n_node,
    n_edge [S, B/S + 1] int32, the last entry the padding graph's. Graphs s*B/S .. (s+1)*B/S-1
    are shard s. The padding graph owns every padding node (at least one) and edge; padding
    edges point at the shard's last node, so no message reaches a real node.
    """

    nodes: np.ndarray
    edges: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    n_node: np.ndarray
    n_edge: np.ndarray


def graph_arrays(g: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nodes = np.asarray(g["graph_node_feat"]).reshape(-1, 2)
    edge_index = np.asarray(g["graph_edge_index"]).reshape(2, -1)
    edges = np.asarray(g["graph_edge_feat"]).reshape(-1, 2)
    return nodes, edge_index, edges


def pack_graphs(graphs: Sequence[Record], num_shards: int, node_budget: int, edge_budget: int) -> GraphBatch:
    """Packs B graphs into `num_shards` padded shards (see GraphBatch)."""
    b = len(graphs)
    if num_shards < 1 or b % num_shards:
        raise ValueError(f"{b} graphs cannot be split evenly over {num_shards} shards")
    per = b // num_shards
    nodes_out = np.zeros((num_shards, node_budget, 2), np.int32)
    edges_out = np.zeros((num_shards, edge_budget, 2), np.int32)
    senders = np.full((num_shards, edge_budget), node_budget - 1, np.int32)
    receivers = np.full((num_shards, edge_budget), node_budget - 1, np.int32)
    n_node = np.zeros((num_shards, per + 1), np.int32)
    n_edge = np.zeros((num_shards, per + 1), np.int32)
    for s in range(num_shards):
        n_off = e_off = 0
        for j, g in enumerate(graphs[s * per:(s + 1) * per]):
            nodes, edge_index, edges = graph_arrays(g)
            n, e = len(nodes), edges.shape[0]
            if edge_index.shape[1] != e:
                raise ValueError(f"graph {s * per + j}: {edge_index.shape[1]} edge indices but {e} edge features")
            if n_off + n + 1 > node_budget or e_off + e > edge_budget:
                raise ValueError(
                    f"shard {s} needs {n_off + n + 1} nodes (incl. one padding node) and {e_off + e} edges, "
                    f"over the budgets {node_budget}/{edge_budget}")
            nodes_out[s, n_off:n_off + n] = nodes
            edges_out[s, e_off:e_off + e] = edges
            senders[s, e_off:e_off + e] = edge_index[0] + n_off
            receivers[s, e_off:e_off + e] = edge_index[1] + n_off
            n_node[s, j] = n
            n_edge[s, j] = e
            n_off += n
            e_off += e
        n_node[s, per] = node_budget - n_off
        n_edge[s, per] = edge_budget - e_off
    return GraphBatch(nodes_out, edges_out, senders, receivers, n_node, n_edge)


class GraphSpec(ModalitySpec):
    name = "graph"
    inference_buckets = {"graph_nodes": None, "graph_edges": None}  # powers of two
    # Budgets are per shard: the sum over the shard's graphs (+ the padding graph's node).
    packed = {"graph_nodes": 1, "graph_edges": 0}
    config_key = "gin"
    batch_type = GraphBatch
    encoder_attr = "graph_encoder"
    head_attr = "graph_proj"
    # A Hu et al. .pth is a plain state dict; a Lightning wrapper would sit under "state_dict".
    init_importer = "gin"
    init_subkey = "state_dict"

    def sizes(self, record):
        nodes, edge_index, edges = graph_arrays(record)
        if len(nodes) < 1:
            raise ValueError("graph without nodes")
        if edge_index.shape[1] != len(edges):
            raise ValueError("edge_index and edge_feat disagree")
        if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= len(nodes)):
            raise ValueError("edge index out of range")
        return {"graph_nodes": len(nodes), "graph_edges": len(edges)}

    def needed(self, records, num_shards=1):
        if len(records) % num_shards:
            raise ValueError(f"batch of {len(records)} cannot be split over {num_shards} graph shards")
        sz = np.array([[s["graph_nodes"], s["graph_edges"]] for s in map(self.sizes, records)])
        per_shard = sz.reshape(num_shards, -1, 2).sum(1).max(0)
        return {"graph_nodes": int(per_shard[0]) + 1, "graph_edges": int(per_shard[1])}

    def collate(self, records, shapes, *, num_shards=1, choices=None):
        return pack_graphs(records, num_shards, int(shapes["graph_nodes"]), int(shapes["graph_edges"]))

    def synthetic(self, mol, *, text_vocab):
        send, recv, feat = [], [], []
        for (i, j), t in zip(mol["bonds"], mol["btype"]):
            for a, b in ((i, j), (j, i)):  # both directions of every bond
                send.append(a)
                recv.append(b)
                feat.append((int(t), 0))
        return {"graph_node_feat": np.stack([mol["atoms"], mol["chir"]], 1).astype(np.int32),
                "graph_edge_index": np.array([send, recv], np.int32).reshape(2, -1),
                "graph_edge_feat": np.array(feat, np.int32).reshape(-1, 2)}

    def synthetic_shapes(self, rows_per_shard):
        return {"graph_nodes": rows_per_shard * SYNTHETIC_MAX_ATOMS + 1,
                "graph_edges": rows_per_shard * 2 * SYNTHETIC_MAX_ATOMS + 1}

    def baseline_features(self, record):
        from molbind_jax.evaluation.baselines import composition_from_graph

        smiles = record.get("smiles", "")
        return {"smiles": smiles.decode("utf-8") if isinstance(smiles, bytes) else str(smiles),
                "composition": composition_from_graph(record["graph_node_feat"])}

    # model side
    def tower_config(self, preset):
        from molbind_jax.models.gin import GINConfig

        return GINConfig.tiny() if preset == "tiny" else GINConfig()

    def build(self, cfg, *, dtype, rngs):
        import dataclasses

        from molbind_jax.models.gin import GIN

        return GIN(dataclasses.replace(cfg, dtype=dtype), rngs=rngs)

    def build_head(self, cfg, *, embed_dim, dtype, rngs):
        from molbind_jax.models.heads import ProjectionHead

        return ProjectionHead(cfg.emb_dim, embed_dim, layer_norm=True, rngs=rngs, dtype=dtype)

    def embed(self, model, batch: GraphBatch, *, train):
        """[S, ...] shards -> [B, E] rows in example order (shard s holds rows s*G .. s*G+G-1);
        the padding graphs are dropped. Train mode: BatchNorm over all real nodes."""
        import jax.numpy as jnp
        import jraph

        graph = jraph.GraphsTuple(
            nodes=jnp.asarray(batch.nodes), edges=jnp.asarray(batch.edges),
            senders=jnp.asarray(batch.senders), receivers=jnp.asarray(batch.receivers),
            n_node=jnp.asarray(batch.n_node), n_edge=jnp.asarray(batch.n_edge), globals=None)
        if graph.nodes.ndim != 3:
            raise ValueError(f"graph nodes must be [S, Nn, 2] (shard axis first), got shape {graph.nodes.shape}")
        _, graph_rep = model.graph_encoder(graph, train=train)  # [S, G+1, D]
        s, g1, d = graph_rep.shape
        return model.graph_proj(graph_rep[:, :-1].reshape(s * (g1 - 1), d))


SPEC = GraphSpec()
