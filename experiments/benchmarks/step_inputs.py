"""Model configs, synthetic pair batches and fallback PyTorch towers for experiments/benchmarks/step.py.

Sizes (`SIZES`): "tiny" (MolBindConfig.tiny(), seconds), "mini" (the towers of
experiments/configs/mini.py: MiniLM-sized 6 x 384 BERT, GIN 3 x 128, Uni-Mol 2 x 128 with 8
heads, 128-d embeddings; built here from sizes, without the MiniLM package) and "original"
(MolBindConfig.original(): SciBERT 12 x 768, GIN 5 x 300, Uni-Mol 15 x 512 with 64 heads).

The synthetic records are built at the requested lengths (`LENGTHS`: text tokens, atoms per
molecule for the graph and the conformer, pocket atoms): real rows get lengths between about half
and all of the padded length, every row its own identity (so the duplicate-aware loss masks
nothing), and both frameworks see the same records.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

SIZES = ("tiny", "mini", "original")
TOWERS = ("bert", "gin", "conformer", "pocket")
MODALITY_TOWER = {"text": "bert", "graph": "gin", "conformer": "conformer", "pocket": "pocket"}
# Padded lengths per size: text tokens, atoms per molecule (graph and conformer), pocket atoms.
LENGTHS = {
    "tiny": dict(text=32, graph=12, conformer=16, pocket=32),
    "mini": dict(text=128, graph=24, conformer=32, pocket=256),
    "original": dict(text=128, graph=24, conformer=32, pocket=256),
}


def model_config(size: str, *, dtype: str = "float32"):
    """The MolBindConfig of `size` (see the module docstring)."""
    from molbind_jax.models.molbind import MolBindConfig

    if size == "tiny":
        return MolBindConfig.tiny(dtype=dtype)
    if size == "original":
        return MolBindConfig.original(dtype=dtype)
    if size == "mini":
        from experiments.benchmarks.tower_inputs import mini_model_config

        return mini_model_config().replace(dtype=dtype)
    raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


# ------------------------------------------------------------------------------ records
def _atoms(prefix: str, n: int, vocab: int, rng) -> dict:
    toks = np.concatenate([[1], rng.integers(4, vocab - 1, n - 2), [2]]).astype(np.int32)
    xyz = np.zeros((n, 3), np.float32)
    xyz[1:-1] = rng.normal(scale=1.5, size=(n - 2, 3))
    return {f"{prefix}_tokens": toks, f"{prefix}_coords": xyz}


def record(pair: str, idx: int, lengths: dict, cfg, seed: int = 0) -> dict:
    """A stored record of `pair` (DESIGN.md section 1) for row `idx` at `lengths`."""
    from molbind_data import schema

    rng = np.random.default_rng([seed, idx, sum(map(ord, pair))])
    out = {"id": f"bench/{pair}/{idx}", "smiles": f"bench-mol-{idx}", "target": f"bench-target-{idx}"}
    for m in schema.pair_type(pair).modalities:
        if m == "text":
            n = int(rng.integers(max(2, lengths["text"] // 2), lengths["text"] + 1))
            ids = np.concatenate([[1], rng.integers(5, cfg.bert.vocab_size, n - 2), [2]]).astype(np.int32)
            out.update(text_ids=ids, text=f"bench text {idx}")
        elif m == "graph":
            n = int(rng.integers(max(3, lengths["graph"] // 2), lengths["graph"] + 1))
            bonds = [(i, i + 1) for i in range(n - 1)] + [(0, n - 1)]
            send = [a for i, j in bonds for a in (i, j)]
            recv = [b for i, j in bonds for b in (j, i)]
            out.update(graph_node_feat=np.stack([rng.integers(0, 118, n), rng.integers(0, 3, n)], 1).astype(np.int32),
                       graph_edge_index=np.array([send, recv], np.int32),
                       graph_edge_feat=np.stack([rng.integers(0, 4, 2 * len(bonds)),
                                                 rng.integers(0, 3, 2 * len(bonds))], 1).astype(np.int32))
        elif m in ("conformer", "pocket"):
            full = lengths[m]
            n = int(rng.integers(max(3, (3 * full) // 4), full + 1))
            out.update(_atoms(m, n, getattr(cfg, m).vocab_size, rng))
        else:
            raise ValueError(f"no synthetic records for modality {m!r}")
    return out


def pair_records(pair: str, batch: int, lengths: dict, cfg, seed: int = 0) -> list[dict]:
    return [record(pair, i, lengths, cfg, seed) for i in range(batch)]


def pair_batch(pair: str, records: list[dict], lengths: dict, num_shards: int = 1):
    """Host-local PairBatch of `records` padded to `lengths` (graph budgets: rows x atoms)."""
    from molbind_jax.data.batching import collate_pair

    per = len(records) // num_shards
    shapes = dict(text=lengths["text"], conformer=lengths["conformer"], pocket=lengths["pocket"],
                  graph_nodes=per * lengths["graph"] + 1, graph_edges=per * 2 * lengths["graph"])
    return collate_pair(pair, records, num_shards=num_shards, shapes=shapes)


# ------------------------------------------------------------------------------ torch towers
@dataclasses.dataclass
class Anchor:
    """A PyTorch tower with one batch of inputs (the interface of experiments/benchmarks/anchors.py)."""

    name: str
    module: object  # torch.nn.Module
    inputs: tuple  # torch tensors for one batch
    forward: Callable  # forward(module, *inputs) -> pooled [B, D]
    out_dim: int


def torch_inputs(tower: str, records: list[dict], cfg, length: int, *, original_pooling: bool = False) -> tuple:
    """The PyTorch inputs of `tower` for `records` (text padded to `length`, atoms to `length`)."""
    import torch

    if tower == "bert":
        ids = np.zeros((len(records), length), np.int64)
        for i, r in enumerate(records):
            ids[i, :len(r["text_ids"])] = r["text_ids"]
        return torch.from_numpy(ids), torch.from_numpy((ids != 0).astype(np.int64))
    if tower == "gin":
        xs, eis, eas, bs, off = [], [], [], [], 0
        for g, r in enumerate(records):
            n = len(r["graph_node_feat"])
            xs.append(r["graph_node_feat"])
            eis.append(r["graph_edge_index"] + off)
            eas.append(r["graph_edge_feat"])
            bs.append(np.full(n, g))
            off += n
        cat = lambda a, axis=0: torch.from_numpy(np.concatenate(a, axis).astype(np.int64))
        return cat(xs), cat(eis, 1), cat(eas), cat(bs), len(records)
    prefix = tower
    tokens = np.zeros((len(records), length), np.int64)
    coords = np.zeros((len(records), length, 3), np.float32)
    for i, r in enumerate(records):
        t = r[f"{prefix}_tokens"]
        tokens[i, :len(t)] = t
        coords[i, :len(t)] = r[f"{prefix}_coords"]
    dist, et = pair_inputs(tokens, coords, getattr(cfg, tower).vocab_size)
    return torch.from_numpy(tokens), torch.from_numpy(dist), torch.from_numpy(et)


def pair_inputs(tokens: np.ndarray, coords: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy twin of `models.unimol.pair_inputs` (distance float32, edge type int64 [B, N, N];
    0 on every pair that touches padding), without a jax dispatch per call."""
    real = tokens != 0
    pair = real[:, :, None] & real[:, None, :]
    edge_type = np.where(pair, tokens[:, :, None] * vocab + tokens[:, None, :], 0).astype(np.int64)
    d2 = np.sum(np.square(coords[:, :, None, :] - coords[:, None, :, :]), axis=-1)
    distance = np.where(pair & (d2 > 0), np.sqrt(np.where(d2 > 0, d2, 1.0)), 0.0).astype(np.float32)
    return distance, edge_type


def reference_anchor(tower: str, size: str, batch: int, length: int, *, seed: int = 0,
                     records: list[dict] | None = None) -> Anchor:
    """Fallback anchor from our own `molbind_jax/torch_reference` modules at the sizes of
    `model_config(size)` (used when experiments/benchmarks/anchors.py is not importable).
    Pooled output: BERT's [CLS] row, GIN's mean over nodes, Uni-Mol's mean over the real atoms
    (over all positions with the original's pooling, as `MolBind` does)."""
    import torch

    from molbind_jax.torch_reference.gin import GNN
    from molbind_jax.torch_reference.qformer import BertModel
    from molbind_jax.torch_reference.unimol import UniMolEncoder

    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}; expected one of {TOWERS}")
    cfg = model_config(size)
    modality = {v: k for k, v in MODALITY_TOWER.items()}[tower]
    if records is None:
        lengths = dict(LENGTHS[size], **{modality: length})
        pair = {"text": "graph_text", "graph": "graph_text", "conformer": "graph_conformer",
                "pocket": "conformer_pocket"}[modality]
        records = pair_records(pair, batch, lengths, cfg, seed)
    torch.manual_seed(seed)
    original_pooling = cfg.unimol_pooling == "original"
    if tower == "bert":
        c = cfg.bert
        module = BertModel(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_layers=c.num_layers,
                           max_position_embeddings=c.max_position_embeddings, layer_norm_eps=c.layer_norm_eps,
                           dropout=c.dropout, num_heads=c.num_heads, intermediate_size=c.intermediate_size,
                           encoder_width=c.hidden_size, cross_attention_freq=10 ** 6, hidden_act=c.hidden_act,
                           attention_dropout=c.attention_dropout)
        forward, out_dim = (lambda m, ids, mask: m(ids, mask)[:, 0]), c.hidden_size
    elif tower == "gin":
        c = cfg.gin
        module = GNN(num_layer=c.num_layers, emb_dim=c.emb_dim, drop_ratio=c.drop_ratio, self_loop_attr=c.self_loop_attr)
        forward, out_dim = (lambda m, x, ei, ea, b, g: m(x, ei, ea, b, g)[1]), c.emb_dim
    else:
        c = getattr(cfg, tower)
        module = UniMolEncoder(c.vocab_size, c.num_layers, c.embed_dim, c.ffn_dim, c.num_heads, c.num_kernels,
                               c.emb_dropout, c.dropout, c.attention_dropout, c.activation_dropout)

        def forward(m, tokens, dist, et):
            rep = m(tokens, dist.clone(), et)
            if original_pooling:
                return rep.mean(1)
            real = (tokens != 0).to(rep.dtype)[..., None]
            return (rep * real).sum(1) / real.sum(1)

        out_dim = c.embed_dim
    module.train()
    inputs = torch_inputs(tower, records, cfg, length)
    return Anchor(name=f"reference {tower}", module=module, inputs=inputs, forward=forward, out_dim=out_dim)
