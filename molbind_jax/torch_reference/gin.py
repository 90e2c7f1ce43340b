"""PyTorch reference of MolBind's GIN (`model/graph.py` GNN, spec section 1a), written from the spec.

Used only by the importers' `run_torch`, `compare.py` and the tests, never by training. The
parameter names are the original ones, so `state_dict()` has the original key layout
(`x_embedding1.weight`, `gnns.i.mlp.0.weight`, `batch_norms.i.running_mean`, ...), and a Hu
et al. `.pth` loads into it directly.

The forward pass works like PyG, independently of the Flax code: self-loops are appended
as real edges after all other edges with attribute `self_loop_attr` ((0,0) as MolBind's PyG
2.3 `add_self_loops(fill_value=0)`, (4,0) as Hu et al.), messages `x_j + e_ji` flow
source -> target and are summed with `index_add_`, then `global_mean_pool`.
"""
from __future__ import annotations

import torch
from torch import nn


class GINConv(nn.Module):
    def __init__(self, emb_dim: int, num_bond_type: int, num_bond_dir: int, self_loop_attr=(0, 0)):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(emb_dim, 2 * emb_dim), nn.ReLU(), nn.Linear(2 * emb_dim, emb_dim))
        self.edge_embedding1 = nn.Embedding(num_bond_type, emb_dim)
        self.edge_embedding2 = nn.Embedding(num_bond_dir, emb_dim)
        nn.init.xavier_uniform_(self.edge_embedding1.weight.data)
        nn.init.xavier_uniform_(self.edge_embedding2.weight.data)
        self.self_loop_attr = tuple(self_loop_attr)

    def forward(self, x, edge_index, edge_attr):
        n = x.size(0)
        loops = torch.arange(n, dtype=edge_index.dtype, device=x.device)
        edge_index = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
        loop_attr = torch.tensor(self.self_loop_attr, dtype=edge_attr.dtype, device=x.device).expand(n, 2)
        edge_attr = torch.cat([edge_attr[:, :2], loop_attr], dim=0)
        e = self.edge_embedding1(edge_attr[:, 0]) + self.edge_embedding2(edge_attr[:, 1])
        messages = x[edge_index[0]] + e
        aggr = torch.zeros_like(x).index_add_(0, edge_index[1], messages)
        return self.mlp(aggr)


class GNN(nn.Module):
    """GIN with JK='last'; `forward` returns (node_rep [n,D], graph_rep [G,D])."""

    def __init__(self, num_layer: int = 5, emb_dim: int = 300, num_atom_type: int = 120,
                 num_chirality: int = 3, num_bond_type: int = 6, num_bond_dir: int = 3,
                 drop_ratio: float = 0.0, self_loop_attr=(0, 0)):
        super().__init__()
        self.num_layer = num_layer
        self.drop_ratio = drop_ratio
        self.x_embedding1 = nn.Embedding(num_atom_type, emb_dim)
        self.x_embedding2 = nn.Embedding(num_chirality, emb_dim)
        nn.init.xavier_uniform_(self.x_embedding1.weight.data)
        nn.init.xavier_uniform_(self.x_embedding2.weight.data)
        self.gnns = nn.ModuleList(
            [GINConv(emb_dim, num_bond_type, num_bond_dir, self_loop_attr) for _ in range(num_layer)])
        self.batch_norms = nn.ModuleList([nn.BatchNorm1d(emb_dim) for _ in range(num_layer)])

    def forward(self, x, edge_index, edge_attr, batch, num_graphs: int | None = None):
        h = self.x_embedding1(x[:, 0]) + self.x_embedding2(x[:, 1])
        for layer in range(self.num_layer):
            h = self.gnns[layer](h, edge_index, edge_attr)
            h = self.batch_norms[layer](h)
            if layer != self.num_layer - 1:
                h = torch.relu(h)
            h = nn.functional.dropout(h, self.drop_ratio, training=self.training)
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1
        sums = torch.zeros(num_graphs, h.size(1), dtype=h.dtype).index_add_(0, batch, h)
        counts = torch.bincount(batch, minlength=num_graphs).clamp(min=1).to(h.dtype)
        return h, sums / counts[:, None]
