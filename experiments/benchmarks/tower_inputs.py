"""Sizes and batches of the tower benchmarks, shared by `towers.py` (ours and the torch
references) and `anchors.py` (the PyTorch libraries users run), so both sides time the same
model on the same batch. No flags and no torch here; numpy inputs, made from a seed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

TOWERS = ("bert", "gin", "conformer", "pocket")
SIZES = ("tiny", "mini", "original")

# Batch shapes per size: (batch, length) of text, graphs x atoms, molecules x atoms, pockets x atoms.
SHAPES = {
    "tiny": dict(text=(2, 16), graph=(3, 8), conformer=(2, 8), pocket=(2, 12)),
    "mini": dict(text=(16, 128), graph=(16, 24), conformer=(16, 32), pocket=(4, 256)),
    "original": dict(text=(8, 128), graph=(16, 24), conformer=(16, 32), pocket=(4, 256)),
}


def shape_of(tower: str, size: str) -> tuple[int, int]:
    """(batch, length) of `tower` at `size`: tokens, atoms per graph, atoms per molecule/pocket."""
    check(tower, size)
    return SHAPES[size][{"bert": "text", "gin": "graph"}.get(tower, tower)]


def check(tower: str, size: str) -> None:
    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}; expected one of {TOWERS}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def mini_model_config():
    """The mini MolBindConfig exactly as `experiments/configs/mini.py:model_config()` gives it
    (the one place its tower sizes are written), loaded by path as config files are."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "mini.py")
    spec = importlib.util.spec_from_file_location("_molbind_mini_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.model_config()


def tower_configs(size: str, *, dtype: str = "float32", remat: str = "none", scan_unroll: int = 0,
                  dropout_rng: str = "hash", num_layers: int = 0) -> dict:
    """Our configs of the four towers at `size`.

    mini: the towers of experiments/configs/mini.py (all-MiniLM-L6-v2 6 x 384, GIN 3 x 128,
    Uni-Mol 2 x 128, 8 heads, 32 kernels); original: SciBERT 12 x 768 (vocab 31091), GIN 5 x 300,
    Uni-Mol 15 x 512, 64 heads, 128 kernels (molecule V=31, pocket V=10); tiny: a few-second
    size for tests. `num_layers` > 0 overrides every tower's depth.
    """
    import jax.numpy as jnp

    from molbind_jax.models.bert import BertConfig
    from molbind_jax.models.gin import GINConfig
    from molbind_jax.models.unimol import UniMolConfig

    if size == "original":
        cfg = dict(bert=BertConfig.scibert(vocab_size=31091), gin=GINConfig(), conformer=UniMolConfig.molecule(),
                   pocket=UniMolConfig.pocket())
    elif size == "mini":
        mini = mini_model_config()
        cfg = {name: getattr(mini, name) for name in ("bert", "gin", "conformer", "pocket")}
    elif size == "tiny":
        uni = dict(num_layers=2, embed_dim=32, ffn_dim=64, num_heads=4, num_kernels=16)
        cfg = dict(bert=BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                   max_position_embeddings=64, use_token_type=False),
                   gin=GINConfig(num_layers=2, emb_dim=16), conformer=UniMolConfig.molecule(**uni),
                   pocket=UniMolConfig.pocket(**uni))
    else:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    out = {}
    for name, c in cfg.items():
        kw = dict(dtype=jnp.dtype(dtype), dropout_rng=dropout_rng)
        if name in ("conformer", "pocket"):
            kw.update(remat=remat, scan_unroll=scan_unroll)
        if num_layers:
            kw["num_layers"] = num_layers
        out[name] = dataclasses.replace(c, **kw)
    return out


def unimol_inputs(vocab: int, batch: int, atoms: int, seed: int = 0):
    """tokens [B,N] ([CLS]=1 atoms [SEP]=2, later rows shorter, padded with 0) and coordinates."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((batch, atoms), np.int32)
    coords = np.zeros((batch, atoms, 3), np.float32)
    for i in range(batch):
        n = max(3, atoms - (i * atoms) // (2 * batch))
        tokens[i, :n] = [1] + list(rng.integers(4, vocab - 1, n - 2)) + [2]
        coords[i, 1:n - 1] = rng.normal(scale=1.5, size=(n - 2, 3))
    return tokens, coords


def unimol_pairs(tokens, coords, vocab: int):
    """(distance float32 [B,N,N], edge type int64 [B,N,N]) as numpy, as `models.unimol.pair_inputs` builds them."""
    tokens = np.asarray(tokens, np.int64)
    coords = np.asarray(coords, np.float32)
    real = tokens != 0
    pair = real[:, :, None] & real[:, None, :]
    edge_type = np.where(pair, tokens[:, :, None] * vocab + tokens[:, None, :], 0)
    d2 = np.sum(np.square(coords[:, :, None, :] - coords[:, None, :, :]), axis=-1)
    dist = np.where(pair & (d2 > 0), np.sqrt(np.where(d2 > 0, d2, 1.0)), 0.0)
    return dist.astype(np.float32), edge_type.astype(np.int64)


def text_inputs(vocab: int, batch: int, length: int, seed: int = 0):
    """ids [B,L] and attention mask [B,L] (rows from `length` down to length/4 real tokens)."""
    rng = np.random.default_rng(seed)
    lens = np.linspace(length, max(2, length // 4), batch).astype(int)
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)
    ids = (rng.integers(5, vocab, (batch, length)) * mask).astype(np.int32)
    return ids, mask


def graph_inputs(batch: int, atoms: int, seed: int = 0):
    """PyG-style chains with a ring closure per molecule (both bond directions), `atoms/2` to
    `atoms` atoms each: x [n,2] (atom type, chirality), edge_index [2,E], edge_attr [E,2]
    (bond type, direction), batch [n]."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(atoms // 2, atoms + 1)) for _ in range(batch)]
    x = np.concatenate([np.stack([rng.integers(0, 118, n), rng.integers(0, 3, n)], 1) for n in sizes])
    edges, off = [], 0
    for n in sizes:
        edges += [(off + i, off + i + 1) for i in range(n - 1)] + [(off + i + 1, off + i) for i in range(n - 1)]
        edges += [(off, off + n - 1), (off + n - 1, off)]
        off += n
    edge_index = np.array(edges).T.astype(np.int64)
    edge_attr = np.stack([rng.integers(0, 4, edge_index.shape[1]), rng.integers(0, 3, edge_index.shape[1])], 1)
    return dict(x=x, edge_index=edge_index, edge_attr=edge_attr, batch=np.repeat(np.arange(batch), sizes))
