"""Atoms with coordinates through a Uni-Mol tower: the shared half of the conformer and pocket
modalities (their modules only name their fields, dictionary and tower).

Stored: `<prefix>_tokens` [n] ([CLS] atoms [SEP], dictionary ids) and `<prefix>_coords`
([n, 3], or [k, n, 3] for k stored conformers). Batch: `AtomsBatch`. The embedding is the head
(LayerNorm, Linear) of the mean over the encoder's positions: the real ones by default
("atoms"), or the original's mean over the padded length (`unimol_pooling="original"`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from molbind_jax.modalities.base import ModalitySpec

ATOM_BUCKETS = (16, 32, 64, 128, 264)  # multiples of 8; 264 >= 256 atoms + [CLS]/[SEP]


class AtomsBatch(NamedTuple):
    """tokens [B, N] int32 dictionary ids, 0 = [PAD]; coords [B, N, 3] float32 (zeros on padding)."""

    tokens: np.ndarray
    coords: np.ndarray


def pad_atoms(tokens_list: Sequence[np.ndarray], coords_list: Sequence[np.ndarray], length: int) -> AtomsBatch:
    """Tokens [n] and coordinates [n, 3] per example -> AtomsBatch padded to `length`."""
    if len(tokens_list) != len(coords_list):
        raise ValueError(f"{len(tokens_list)} token arrays but {len(coords_list)} coordinate arrays")
    tokens = np.zeros((len(tokens_list), length), np.int32)
    coords = np.zeros((len(tokens_list), length, 3), np.float32)
    for i, (t, c) in enumerate(zip(tokens_list, coords_list)):
        t, c = np.asarray(t).ravel(), np.asarray(c, np.float32).reshape(-1, 3)
        if len(t) != len(c):
            raise ValueError(f"example {i}: {len(t)} tokens but {len(c)} coordinates")
        if len(t) > length:
            raise ValueError(f"example {i} has {len(t)} atoms, more than the padded length {length}")
        tokens[i, :len(t)] = t
        coords[i, :len(t)] = c
    return AtomsBatch(tokens, coords)


class AtomsSpec(ModalitySpec):
    """A Uni-Mol modality; subclasses set `name` (= the stored field prefix and size key), the
    tower attributes, the dictionary and the tower preset."""

    inference_buckets: dict = {}
    batch_type = AtomsBatch
    # Uni-Mol checkpoints: {"model": state_dict, "args": ...} (the original's bind.py 82, 96).
    init_importer = "unimol"
    init_subkey = "model"
    dictionary_name = ""     # molbind_data.featurize.dictionaries attribute
    molecule = True          # the record's `smiles` describes this side (False: a pocket)
    export_dictionary = ""   # file name in an export's dictionaries/

    def __init__(self):
        self.inference_buckets = {self.name: ATOM_BUCKETS}

    def _coords(self, record) -> np.ndarray:
        coords = np.asarray(record[f"{self.name}_coords"], np.float32)
        return coords[None] if coords.ndim == 2 else coords

    def sizes(self, record):
        tokens = np.asarray(record[f"{self.name}_tokens"]).ravel()
        coords = np.asarray(record[f"{self.name}_coords"])
        if len(tokens) < 1:
            raise ValueError(f"empty {self.name}_tokens")
        if coords.ndim == 2:
            coords = coords[None]
        if coords.ndim != 3 or coords.shape[0] < 1 or coords.shape[1:] != (len(tokens), 3):
            raise ValueError(f"{self.name}_coords shape {np.shape(record[f'{self.name}_coords'])} "
                             f"does not match {len(tokens)} tokens")
        return {self.name: len(tokens)}

    def num_choices(self, record):
        coords = np.asarray(record[f"{self.name}_coords"])
        return 1 if coords.ndim == 2 else int(coords.shape[0])

    def collate(self, records, shapes, *, num_shards=1, choices=None):
        choices = [0] * len(records) if choices is None else list(choices)
        if len(choices) != len(records):
            raise ValueError(f"{len(records)} records but {len(choices)} conformer choices")
        tokens = [np.asarray(r[f"{self.name}_tokens"]) for r in records]
        coords = []
        for i, (r, k) in enumerate(zip(records, choices)):
            stored = self._coords(r)
            if not 0 <= int(k) < len(stored):
                raise ValueError(f"record {i}: {self.name} variant {k} asked for, {len(stored)} stored "
                                 f"(variants count from 0)")
            coords.append(stored[int(k)])
        return pad_atoms(tokens, coords, int(shapes[self.name]))

    def synthetic_record(self, tokens, coords):
        toks = np.concatenate([[1], tokens, [2]]).astype(np.int32)
        xyz = np.concatenate([np.zeros((1, 3)), coords, np.zeros((1, 3))]).astype(np.float32)
        return {f"{self.name}_tokens": toks, f"{self.name}_coords": xyz}

    def baseline_features(self, record):
        from molbind_jax.evaluation.baselines import composition_from_tokens, heavy_atom_count

        tokens = record[f"{self.name}_tokens"]
        out = {"composition": composition_from_tokens(tokens, self.dictionary().symbols),
               "heavy_atoms": heavy_atom_count(tokens)}
        if self.molecule:
            smiles = record.get("smiles", "")
            out["smiles"] = smiles.decode("utf-8") if isinstance(smiles, bytes) else str(smiles)
        return out

    # model side
    def dictionary(self):
        from molbind_data.featurize import dictionaries

        return getattr(dictionaries, self.dictionary_name)

    def build(self, cfg, *, dtype, rngs):
        import dataclasses

        from molbind_jax.models.unimol import UniMolEncoder

        return UniMolEncoder(dataclasses.replace(cfg, dtype=dtype), rngs=rngs)

    def build_head(self, cfg, *, embed_dim, dtype, rngs):
        from molbind_jax.models.heads import ProjectionHead

        return ProjectionHead(cfg.embed_dim, embed_dim, layer_norm=True, rngs=rngs, dtype=dtype)

    def embed(self, model, batch: AtomsBatch, *, train):
        import jax.numpy as jnp

        from molbind_jax.models.heads import unimol_mean_pool
        from molbind_jax.models.unimol import pair_inputs

        encoder, head = getattr(model, self.encoder_attr), getattr(model, self.head_attr)
        tokens = jnp.asarray(batch.tokens)
        distance, edge_type = pair_inputs(tokens, batch.coords, encoder.config.vocab_size)
        rep = encoder(tokens, distance, edge_type, train=train)
        return head(unimol_mean_pool(rep, tokens, mode=model.config.unimol_pooling))

    def export_files(self, model_config, directory, *, context):
        import os

        d = self.dictionary()
        os.makedirs(os.path.join(directory, "dictionaries"), exist_ok=True)
        rel = os.path.join("dictionaries", self.export_dictionary)
        with open(os.path.join(directory, rel), "w", encoding="utf-8") as f:
            f.write("".join(s + "\n" for s in d.symbols))
        return {"dictionary": rel, "symbols": list(d.symbols)}
