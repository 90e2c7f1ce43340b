"""Where the launcher gets its batches: the TFDS input pipeline, or tiny synthetic pairs.

`config.data.source == "tfds"` reads the built `molbind_pairs` dataset through
`input_pipeline.mixed_pair_batches` (one {pair: batch} dict per micro-step, deterministic and
resumable from a micro-step index). `"synthetic"` generates batches in exactly the layout of
docs/DESIGN.md section 2 from a fixed pool of pseudo-molecules, in-process and in
milliseconds. Both sides of a synthetic pair are derived from the same molecule index, so the
pairs are learnable (loss falls, R@1 rises) and smoke runs and tests need no built data.

Either way the host-local numpy batch becomes a global array sharded on the mesh axis
"data" (`to_global`).
"""
from __future__ import annotations

import itertools
from typing import Iterator, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# Pseudo-molecule pool sizes of the synthetic source.
_MAX_ATOMS = 12
_TEXT_LEN = 32
_POCKET_ATOMS = 22


def to_global(tree: Mapping, mesh) -> dict:
    """Host-local numpy batch -> global arrays sharded on "data" along the leading axis."""
    try:
        from molbind_jax.training import sharding

        return sharding.global_batch(tree, mesh)
    except ImportError:  # sharding.py (D1) not there yet: the same thing by hand
        spec = NamedSharding(mesh, P("data"))
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(spec, np.asarray(x)), dict(tree))


# ----------------------------------------------------------------------------------------------
# Synthetic pairs.


def _molecule(idx: int, text_vocab: int):
    """Deterministic pseudo-molecule `idx`: atoms, chain+ring bonds, coordinates, text, pocket."""
    r = np.random.default_rng(1_000_003 + idx)
    n = int(r.integers(3, _MAX_ATOMS + 1))
    atoms = r.integers(0, 9, size=n)  # atomic_num - 1 in 0..8 (H..F)
    chir = r.integers(0, 3, size=n)
    bonds = [(i, i + 1) for i in range(n - 1)]
    if n > 4:
        bonds.append((0, n - 1))
    btype = r.integers(0, 4, size=len(bonds))
    coords = r.normal(size=(n, 3)).astype(np.float32) * 1.5
    coords -= coords.mean(0, keepdims=True)
    mol_tokens = 4 + (atoms % 6)  # C N O S H Cl in the mol dictionary
    # Text: word pieces determined by the composition and the index (learnable from either side).
    words = [5 + int(a) * 7 + int(c) for a, c in zip(atoms, chir)] + [200 + idx % 97, 300 + (idx * 7) % 89]
    text = [1] + [w % (text_vocab - 10) + 5 for w in words][: _TEXT_LEN - 2] + [2]
    m = _POCKET_ATOMS - 2
    pocket_tokens = 4 + (r.integers(0, 5, size=m) + idx) % 5
    pocket_coords = r.normal(size=(m, 3)).astype(np.float32) * 3.0
    pocket_coords -= pocket_coords.mean(0, keepdims=True)
    return dict(atoms=atoms, chir=chir, bonds=bonds, btype=btype, coords=coords, mol_tokens=mol_tokens,
                text=np.asarray(text, np.int32), pocket_tokens=pocket_tokens, pocket_coords=pocket_coords)


def _pack_graphs(mols, num_shards: int) -> dict:
    """Packs B graphs into `num_shards` jraph shards of B/S graphs + one padding graph each."""
    g = len(mols) // num_shards
    nn_budget = g * _MAX_ATOMS + 1
    ne_budget = g * 2 * _MAX_ATOMS + 1
    out = {k: [] for k in ("graph_nodes", "graph_edges", "graph_senders", "graph_receivers",
                           "graph_n_node", "graph_n_edge")}
    for s in range(num_shards):
        nodes = np.zeros((nn_budget, 2), np.int32)
        edges = np.zeros((ne_budget, 2), np.int32)
        send = np.full((ne_budget,), nn_budget - 1, np.int32)
        recv = np.full((ne_budget,), nn_budget - 1, np.int32)
        n_node, n_edge = [], []
        no = eo = 0
        for m in mols[s * g:(s + 1) * g]:
            n = len(m["atoms"])
            nodes[no:no + n, 0], nodes[no:no + n, 1] = m["atoms"], m["chir"]
            e = 0
            for (i, j), t in zip(m["bonds"], m["btype"]):
                for a, b in ((i, j), (j, i)):  # both directions of every bond
                    send[eo + e], recv[eo + e] = no + a, no + b
                    edges[eo + e] = (t, 0)
                    e += 1
            n_node.append(n)
            n_edge.append(e)
            no += n
            eo += e
        n_node.append(nn_budget - no)
        n_edge.append(ne_budget - eo)
        for k, v in (("graph_nodes", nodes), ("graph_edges", edges), ("graph_senders", send),
                     ("graph_receivers", recv), ("graph_n_node", np.asarray(n_node, np.int32)),
                     ("graph_n_edge", np.asarray(n_edge, np.int32))):
            out[k].append(v)
    return {k: np.stack(v) for k, v in out.items()}


def _pad_stack(seqs, length: int, dtype) -> np.ndarray:
    out = np.zeros((len(seqs), length) + seqs[0].shape[1:], dtype)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def synthetic_pair_batch(pair: str, indices, *, num_local_shards: int, text_vocab: int) -> dict:
    """One host-local batch of `pair` (DESIGN.md section 2) for pseudo-molecules `indices`."""
    mols = [_molecule(int(i), text_vocab) for i in indices]
    a, b = pair.split("_")
    batch = {"pair_mask": np.ones((len(mols),), bool)}
    for side in (a, b):
        if side == "text":
            ids = _pad_stack([m["text"] for m in mols], _TEXT_LEN, np.int32)
            batch["text_ids"], batch["text_mask"] = ids, (ids != 0).astype(np.int32)
        elif side == "graph":
            batch.update(_pack_graphs(mols, num_local_shards))
        elif side == "conformer":
            n = _MAX_ATOMS + 2
            n = -(-n // 8) * 8  # the collater pads to a multiple of 8
            toks = [np.concatenate([[1], m["mol_tokens"], [2]]).astype(np.int32) for m in mols]
            xyz = [np.concatenate([np.zeros((1, 3)), m["coords"], np.zeros((1, 3))]).astype(np.float32) for m in mols]
            batch["conformer_tokens"] = _pad_stack(toks, n, np.int32)
            batch["conformer_coords"] = _pad_stack(xyz, n, np.float32)
        elif side == "pocket":
            n = -(-_POCKET_ATOMS // 8) * 8
            toks = [np.concatenate([[1], m["pocket_tokens"], [2]]).astype(np.int32) for m in mols]
            xyz = [np.concatenate([np.zeros((1, 3)), m["pocket_coords"], np.zeros((1, 3))]).astype(np.float32)
                   for m in mols]
            batch["pocket_tokens"] = _pad_stack(toks, n, np.int32)
            batch["pocket_coords"] = _pad_stack(xyz, n, np.float32)
        else:
            raise ValueError(f"unknown modality {side!r} in pair {pair!r}")
    return batch


def _synthetic_stream(pairs, split, *, local_batch, num_local_shards, process_index, seed, start,
                      train, text_vocab, pool_size, every=None):
    # local_batch: {pair: host batch}. every: {pair: k} (the pair only on every k-th micro-step).
    # Disjoint pools per split: train draws from [0, pool), validation from [pool, pool + pool/4).
    every = every or {}
    for micro in itertools.count(start):
        out = {}
        for k, pair in enumerate(pairs):
            if (micro + 1) % every.get(pair, 1):
                continue
            n = local_batch[pair]
            base, size = (0, pool_size) if split == "train" else (pool_size, max(pool_size // 4, n))
            r = np.random.default_rng([seed, micro, k, process_index])
            if train:
                idx = base + r.choice(size, size=n, replace=False)
            else:
                idx = base + (np.arange(n) + micro * n) % size
            out[pair] = synthetic_pair_batch(pair, idx, num_local_shards=num_local_shards, text_vocab=text_vocab)
        yield out


# ----------------------------------------------------------------------------------------------
# Entry points used by train.py.


def local_shards(mesh) -> int:
    """Devices of `mesh` on this process = graph shards per host-local batch."""
    return sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())


def pair_batch_sizes(config, pairs=None) -> dict[str, int]:
    """Global batch of each trained pair: `config.pair_batch_size[pair]`, or `config.batch_size`
    where that is 0 or absent."""
    table = dict(config.get("pair_batch_size") or {})
    return {p: int(table.get(p) or config.batch_size) for p in (pairs or config.pairs)}


def pair_every(config, pairs=None) -> dict[str, int]:
    """{pair: k}: the pair is in every k-th micro-step only, 0-based k-1, 2k-1, ...
    (`config.pair_every`; 0 or absent = 1, every micro-step)."""
    table = dict(config.get("pair_every") or {})
    out = {p: int(table.get(p) or 1) for p in (pairs or config.pairs)}
    bad = {p: k for p, k in out.items() if k < 1}
    if bad:
        raise ValueError(f"pair_every values must be >= 1, got {bad}")
    return out


def micro_batches(config, *, split: str, start: int, train: bool, text_vocab: int, mesh,
                  pairs=None) -> Iterator[dict]:
    """Host-local {pair: numpy batch} dicts, one per micro-step, from micro-step `start` on.

    The micro-step index is `optimizer_step * accumulate_steps + micro`, so a run resumed at
    optimizer step s continues with exactly the batches the uninterrupted run would have seen.
    """
    pairs = tuple(pairs or config.pairs)
    process_count, process_index = jax.process_count(), jax.process_index()
    pair_batch_size = pair_batch_sizes(config, pairs)
    for pair, size in pair_batch_size.items():
        name = "batch_size" if size == config.batch_size else f"pair_batch_size[{pair}]"
        if size % (8 if config.data.get("require_multiple_of_8", True) else 1):
            raise ValueError(f"{name} {size} must be divisible by 8 (fixed for any device count)")
        if size % mesh.devices.size:
            raise ValueError(f"{name} {size} is not divisible by the {mesh.devices.size} devices")
    num_local_shards = local_shards(mesh)
    source = config.data.source
    if source == "synthetic":
        return _synthetic_stream(pairs, split, local_batch={p: n // process_count for p, n in pair_batch_size.items()},
                                 num_local_shards=num_local_shards, process_index=process_index,
                                 seed=config.seed, start=start, train=train, text_vocab=text_vocab,
                                 pool_size=config.data.get("synthetic_pool", 256),
                                 every=pair_every(config, pairs) if train else None)
    if source == "tfds":
        from molbind_jax.data import input_pipeline

        return input_pipeline.mixed_pair_batches(
            pairs, split, dataset=config.data.dataset, data_dir=config.data.data_dir or None,
            global_batch_size=config.batch_size, num_local_shards=num_local_shards,
            process_index=process_index, process_count=process_count, seed=config.seed,
            start_step=start, train=train, buckets=config.data.get("buckets") or None,
            max_shapes=int(config.data.get("max_shapes", 8)),
            pair_batch_size=pair_batch_size,
            pair_every=pair_every(config, pairs))
    raise ValueError(f"unknown data.source {source!r} (expected 'tfds' or 'synthetic')")


def eval_batches(config, pair: str, *, text_vocab: int, num_batches: int, mesh) -> list[dict]:
    """The first `num_batches` validation batches of `pair` (host-local numpy), fixed order."""
    if config.data.source == "tfds":
        from molbind_jax.data import input_pipeline

        it = input_pipeline.pair_batches(
            pair, "validation", dataset=config.data.dataset, data_dir=config.data.data_dir or None,
            global_batch_size=int(config.get("eval_batch_size") or config.batch_size),
            num_local_shards=local_shards(mesh), process_index=jax.process_index(),
            process_count=jax.process_count(), seed=config.seed, start_step=0, train=False,
            buckets=config.data.get("buckets") or None, max_shapes=int(config.data.get("max_shapes", 8)))
        return list(itertools.islice(it, num_batches))
    it = micro_batches(config, split="validation", start=0, train=False, text_vocab=text_vocab, mesh=mesh,
                       pairs=(pair,))
    return [batches[pair] for batches in itertools.islice(it, num_batches)]
