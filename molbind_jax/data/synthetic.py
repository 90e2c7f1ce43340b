"""Synthetic pairs for smoke runs and tests: a fixed pool of deterministic pseudo-molecules.

Pseudo-molecule `i` has a few atoms (H..F), chain-and-ring bonds, centred coordinates, a word-
piece text derived from its composition and index, and a small pocket. Each modality's spec
turns it into a stored record (`ModalitySpec.synthetic`), and the batch comes out of the same
`collate_pair` as real data, with fixed shapes (`ModalitySpec.synthetic_shapes`) so a smoke
run compiles one program per pair type. Both sides of a pair come from the same molecule, so
the pairs are learnable (loss falls, R@1 rises).
"""
from __future__ import annotations

import numpy as np

from molbind_jax.data.batching import PairBatch, collate_pair
from molbind_jax.modalities import pair_specs
from molbind_jax.modalities.graph import SYNTHETIC_MAX_ATOMS
from molbind_jax.modalities.pocket import SYNTHETIC_POCKET_ATOMS


def molecule(idx: int) -> dict:
    """Deterministic pseudo-molecule `idx`: atoms, chain+ring bonds, coordinates, pocket."""
    r = np.random.default_rng(1_000_003 + idx)
    n = int(r.integers(3, SYNTHETIC_MAX_ATOMS + 1))
    atoms = r.integers(0, 9, size=n)  # atomic_num - 1 in 0..8 (H..F)
    chir = r.integers(0, 3, size=n)
    bonds = [(i, i + 1) for i in range(n - 1)]
    if n > 4:
        bonds.append((0, n - 1))
    btype = r.integers(0, 4, size=len(bonds))
    coords = r.normal(size=(n, 3)).astype(np.float32) * 1.5
    coords -= coords.mean(0, keepdims=True)
    m = SYNTHETIC_POCKET_ATOMS - 2
    pocket_tokens = 4 + (r.integers(0, 5, size=m) + idx) % 5
    pocket_coords = r.normal(size=(m, 3)).astype(np.float32) * 3.0
    pocket_coords -= pocket_coords.mean(0, keepdims=True)
    return dict(index=idx, atoms=atoms, chir=chir, bonds=bonds, btype=btype, coords=coords,
                pocket_tokens=pocket_tokens, pocket_coords=pocket_coords)


def record(pair: str, idx: int, *, text_vocab: int) -> dict:
    """The stored record of `pair` for pseudo-molecule `idx`."""
    mol = molecule(idx)
    out = {"id": f"synthetic/{idx}", "smiles": f"synthetic-{idx}"}
    for s in pair_specs(pair):
        out.update(s.synthetic(mol, text_vocab=text_vocab))
    return out


def pair_batch(pair: str, indices, *, num_local_shards: int, text_vocab: int) -> PairBatch:
    """One host-local batch of `pair` for pseudo-molecules `indices`, at the fixed shapes."""
    indices = [int(i) for i in indices]
    per_shard = len(indices) // num_local_shards
    shapes = {}
    for s in pair_specs(pair):
        shapes.update(s.synthetic_shapes(per_shard))
    return collate_pair(pair, [record(pair, i, text_vocab=text_vocab) for i in indices],
                        num_shards=num_local_shards, shapes=shapes)
