"""The PyTorch models users actually run, as anchors for the tower benchmarks (torch only;
never imported by training code).

    from experiments.benchmarks.anchors import build_anchor, compile_anchor
    a = build_anchor("conformer", "mini", batch=16, length=32)
    feats = a.forward(a.module, *a.inputs)          # [16, a.out_dim], train mode

Each anchor's module runs the whole tower up to the pooled features that the MolBind head
projects (so `torch.compile` covers the pooling too), in train mode, float32, from random
weights (nothing is downloaded):

* text (`bert`): `transformers.BertModel` from a `BertConfig` with `attn_implementation="sdpa"`,
  no pooler; pooled = the [CLS] row of `last_hidden_state` (`heads.text_cls_pool`, as ours).
  HF's BERT always has a token-type table; no token-type ids are passed (ours at the mini and
  original sizes has no token types: one embedding row added, nothing else differs).
* graph (`gin`): the Hu et al. GIN that the original runs, built from torch_geometric pieces:
  a `MessagePassing` subclass (sum of `x_j + bond embedding` over incoming edges, self-loops
  added with `torch_geometric.utils.add_self_loops` and a fixed self-loop bond attribute, then
  the 2-layer MLP), BatchNorm1d, ReLU between layers, dropout, JK "last", `global_mean_pool`
  with the number of graphs given (`size=`, as from PyG's `Batch.num_graphs`; without it PyG
  reads `batch.max()`, a graph break under `torch.compile`).
* conformer / pocket: unimol_tools' `TransformerEncoderWithPair` (the Uni-Core encoder the
  original vendors), loaded by file from the installed `unimol_tools` package without
  importing the package (its `__init__` pulls numba, hydra, rdkit tools ...). unimol_tools'
  `models/unimol.py` (GaussianLayer, NonLinearHead, UniMolModel.forward) imports the package's
  config, data and weights modules, so the token embedding and the Gaussian pair-feature path
  are written here in torch following `UniMolModel.forward`: `embed_tokens` (padding_idx 0),
  the per-edge-type affine map of the distance on K Gaussian kernels, a K -> K -> heads GELU
  MLP to one attention bias per head, the encoder with the padding mask, as unimol_tools'
  molecule architecture builds it (pre-LN, no final head LayerNorm). Pooled = the mean over
  real positions ([CLS], atoms, [SEP]), which is what MolBind's head projects (our default
  `unimol_pooling="atoms"`, `heads.unimol_mean_pool`), not unimol_tools' [CLS] row.

`compile_anchor(anchor)` returns the same anchor with `torch.compile(module)` (default mode);
its first call compiles.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys
from typing import Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from experiments.benchmarks import tower_inputs  # noqa: E402


@dataclasses.dataclass
class Anchor:
    name: str  # e.g. "transformers BertModel (sdpa)"
    module: nn.Module  # train mode
    inputs: tuple  # torch tensors for one batch (fixed, made from a seed)
    forward: Callable  # forward(module, *inputs) -> pooled features [B, D]
    out_dim: int


def _call(module, *inputs):
    return module(*inputs)


def _graph_call(num_graphs: int):
    """forward for a GIN anchor: the batch's number of graphs is passed with the call, so that
    one module shared by several pair types (the whole-step benchmark) pools each batch right."""
    return lambda module, *inputs: module(*inputs, num_graphs=num_graphs)


def build_anchor(tower: str, size: str, batch: int, length: int, *, seed: int = 0) -> Anchor:
    """The anchor of `tower` (bert, gin, conformer, pocket) at `size` (tiny, mini, original: the
    sizes of `tower_inputs.tower_configs`) on one batch of `batch` x `length` (tokens, atoms per
    graph, atoms per molecule or pocket). Weights and inputs come from `seed`."""
    tower_inputs.check(tower, size)
    if batch < 1 or length < 3:
        raise ValueError(f"batch must be >= 1 and length >= 3, got {batch} x {length}")
    cfg = tower_inputs.tower_configs(size)[tower]
    torch.manual_seed(seed)
    if tower == "bert":
        module = HFBertCLS(cfg)
        ids, mask = tower_inputs.text_inputs(cfg.vocab_size, batch, length, seed)
        inputs = (torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)))
        name, out_dim = "transformers BertModel (sdpa)", cfg.hidden_size
    elif tower == "gin":
        module = PyGGIN(cfg)
        forward = _graph_call(batch)  # as PyG's Batch.num_graphs
        g = tower_inputs.graph_inputs(batch, length, seed)
        inputs = tuple(torch.from_numpy(np.asarray(g[k], np.int64)) for k in ("x", "edge_index", "edge_attr", "batch"))
        name, out_dim = "torch_geometric GIN (MessagePassing)", cfg.emb_dim
    else:
        module = UniMolToolsEncoder(cfg)
        tokens, coords = tower_inputs.unimol_inputs(cfg.vocab_size, batch, length, seed)
        dist, et = tower_inputs.unimol_pairs(tokens, coords, cfg.vocab_size)
        inputs = (torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(dist), torch.from_numpy(et))
        name, out_dim = "unimol_tools TransformerEncoderWithPair", cfg.embed_dim
    module.train()
    return Anchor(name=name, module=module, inputs=inputs, forward=forward if tower == "gin" else _call,
                  out_dim=out_dim)


def compile_anchor(anchor: Anchor) -> Anchor:
    """The same anchor with `torch.compile(module)` (default mode); the first call compiles."""
    return dataclasses.replace(anchor, name=anchor.name + " + torch.compile", module=torch.compile(anchor.module))


# ------------------------------------------------------------------------------ text
class HFBertCLS(nn.Module):
    """transformers.BertModel (SDPA attention, no pooler) -> the [CLS] row of last_hidden_state."""

    def __init__(self, cfg):
        super().__init__()
        import transformers

        hf_cfg = transformers.BertConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act,
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
            max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
            layer_norm_eps=cfg.layer_norm_eps, attn_implementation="sdpa")
        self.bert = transformers.BertModel(hf_cfg, add_pooling_layer=False)
        impl = getattr(self.bert.config, "_attn_implementation", None)
        if impl != "sdpa":
            raise RuntimeError(f"transformers built BertModel with attention {impl!r}, expected 'sdpa'")

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]


# ------------------------------------------------------------------------------ graph
def _pyg_gin_conv():
    from torch_geometric.nn import MessagePassing
    from torch_geometric.utils import add_self_loops

    class GINEdgeConv(MessagePassing):
        """Hu et al.'s GINConv: h_i' = MLP(sum_{j -> i, j = i} (h_j + emb(bond_ji)))."""

        def __init__(self, dim: int, num_bond_type: int, num_bond_dir: int, self_loop_attr):
            super().__init__(aggr="add")
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
            self.edge_embedding1 = nn.Embedding(num_bond_type, dim)
            self.edge_embedding2 = nn.Embedding(num_bond_dir, dim)
            nn.init.xavier_uniform_(self.edge_embedding1.weight)
            nn.init.xavier_uniform_(self.edge_embedding2.weight)
            self.register_buffer("loop_attr", torch.tensor(self_loop_attr, dtype=torch.long), persistent=False)

        def forward(self, x, edge_index, edge_attr):
            n = x.size(0)
            edge_index, _ = add_self_loops(edge_index, num_nodes=n)
            edge_attr = torch.cat([edge_attr, self.loop_attr.expand(n, 2)], dim=0)
            emb = self.edge_embedding1(edge_attr[:, 0]) + self.edge_embedding2(edge_attr[:, 1])
            return self.propagate(edge_index, x=x, edge_attr=emb)

        def message(self, x_j, edge_attr):
            return x_j + edge_attr

        def update(self, aggr_out):
            return self.mlp(aggr_out)

    return GINEdgeConv


class PyGGIN(nn.Module):
    """The original's GIN (JK "last", mean pooling) on torch_geometric -> graph features [G, D]."""

    def __init__(self, cfg):
        super().__init__()
        conv = _pyg_gin_conv()
        self.num_layers, self.drop_ratio = cfg.num_layers, cfg.drop_ratio
        self.x_embedding1 = nn.Embedding(cfg.num_atom_type, cfg.emb_dim)
        self.x_embedding2 = nn.Embedding(cfg.num_chirality, cfg.emb_dim)
        nn.init.xavier_uniform_(self.x_embedding1.weight)
        nn.init.xavier_uniform_(self.x_embedding2.weight)
        self.gnns = nn.ModuleList([conv(cfg.emb_dim, cfg.num_bond_type, cfg.num_bond_dir, tuple(cfg.self_loop_attr))
                                   for _ in range(cfg.num_layers)])
        self.batch_norms = nn.ModuleList([nn.BatchNorm1d(cfg.emb_dim, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
                                          for _ in range(cfg.num_layers)])

    def forward(self, x, edge_index, edge_attr, batch, num_graphs: int | None = None):
        """`num_graphs`: the known batch size, so pooling needs no data-dependent max (which
        breaks torch.compile's graph); None: PyG's default."""
        from torch_geometric.nn import global_mean_pool

        h = self.x_embedding1(x[:, 0]) + self.x_embedding2(x[:, 1])
        for i in range(self.num_layers):
            h = self.batch_norms[i](self.gnns[i](h, edge_index, edge_attr))
            if i < self.num_layers - 1:
                h = torch.relu(h)
            h = nn.functional.dropout(h, self.drop_ratio, training=self.training)
        return global_mean_pool(h, batch, size=num_graphs)


# ------------------------------------------------------------------------------ conformer / pocket
def unimol_tools_transformers():
    """unimol_tools/models/transformers.py as a standalone module (it imports only torch)."""
    name = "_unimol_tools_transformers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("unimol_tools")  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("unimol_tools is not installed: pip install --no-deps -r requirements-bench.txt")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "transformers.py")
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


class UniMolToolsEncoder(nn.Module):
    """tokens [B,N], distance [B,N,N], edge type [B,N,N] -> mean over real positions [B, D]."""

    def __init__(self, cfg):
        super().__init__()
        tf = unimol_tools_transformers()
        v, k, heads = cfg.vocab_size, cfg.num_kernels, cfg.num_heads
        self.num_heads = heads
        self.embed_tokens = nn.Embedding(v, cfg.embed_dim, padding_idx=0)
        # Gaussian pair features (unimol_tools GaussianLayer): per edge type mul/bias, K kernels.
        self.means = nn.Parameter(torch.empty(k).uniform_(0, 3))
        self.stds = nn.Parameter(torch.empty(k).uniform_(0, 3))
        self.mul = nn.Embedding(v * v, 1)
        self.bias = nn.Embedding(v * v, 1)
        nn.init.ones_(self.mul.weight)
        nn.init.zeros_(self.bias.weight)
        # gbf_proj (unimol_tools NonLinearHead): K -> K -> heads, GELU.
        self.gbf_proj = nn.Sequential(nn.Linear(k, k), nn.GELU(), nn.Linear(k, heads))
        self.encoder = tf.TransformerEncoderWithPair(
            encoder_layers=cfg.num_layers, embed_dim=cfg.embed_dim, ffn_embed_dim=cfg.ffn_dim, attention_heads=heads,
            emb_dropout=cfg.emb_dropout, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout, max_seq_len=512, activation_fn="gelu",
            no_final_head_layer_norm=True)

    def pair_bias(self, dist, edge_type):
        x = self.mul(edge_type).squeeze(-1) * dist + self.bias(edge_type).squeeze(-1)  # [B,N,N]
        std = self.stds.abs() + 1e-5
        g = torch.exp(-0.5 * ((x.unsqueeze(-1) - self.means) / std) ** 2) / (math.sqrt(2 * 3.14159) * std)
        bias = self.gbf_proj(g)  # [B,N,N,H]
        n = dist.size(-1)
        return bias.permute(0, 3, 1, 2).contiguous().view(-1, n, n)

    def forward(self, tokens, dist, edge_type):
        padding_mask = tokens.eq(0)
        x = self.embed_tokens(tokens)
        rep = self.encoder(x, attn_mask=self.pair_bias(dist, edge_type), padding_mask=padding_mask)[0]
        real = (~padding_mask).unsqueeze(-1).to(rep.dtype)
        return (rep * real).sum(1) / real.sum(1).clamp(min=1.0)
