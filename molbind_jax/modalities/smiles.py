"""SMILES strings as a fifth modality: atom-level SMILES tokens through a small Transformer.

As MoleculeSTM's SMILES branch, a molecule is also read as its string: the tokens of
data_pipeline/featurize/smiles.py go through a Transformer encoder (the BERT encoder of
models/bert.py with its own small config and vocabulary, no token types), whose real positions
are averaged and projected (LayerNorm, Linear). Nothing is stored for it: every record of every
pair type already holds the molecule's canonical `smiles`, so its pair types are views of stored
ones (schema: smiles_text and smiles_graph read graph_text records). Tokenising at collation
costs microseconds per record. No pretrained weights exist offline: the tower starts from
scratch (list it in `init.scratch`).

Batch: `TextBatch` (token ids and mask), under the size key "smiles".
"""
from __future__ import annotations

import os

import numpy as np

from molbind_data.featurize import smiles as smiles_tok
from molbind_jax.modalities.base import ModalitySpec
from molbind_jax.modalities.text import TextBatch, ids_fit, pad_text

# Synthetic pseudo-molecules: atom index -> an organic-subset token.
_SYNTHETIC_ATOMS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P")


def _smiles(record) -> str:
    value = record.get("smiles", "")
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Vocabulary:
    """The fixed SMILES token table, in the `.symbols` form the export check reads."""

    symbols = smiles_tok.VOCAB


class SmilesSpec(ModalitySpec):
    name = "smiles"
    inference_buckets = {"smiles": (32, 64, 128)}
    config_key = "smiles"
    encoder_attr = "smiles_encoder"
    head_attr = "smiles_proj"

    # host side
    def ids(self, record) -> np.ndarray:
        return np.asarray(smiles_tok.encode(_smiles(record)), np.int32)

    def sizes(self, record):
        return {"smiles": len(self.ids(record))}

    def collate(self, records, shapes, *, num_shards=1, choices=None):
        return pad_text([self.ids(r) for r in records], int(shapes["smiles"]))

    def check_batch(self, batch, tower_config):
        ids_fit(batch, tower_config.vocab_size)

    def synthetic(self, mol, *, text_vocab):
        atoms = [_SYNTHETIC_ATOMS[int(a) % len(_SYNTHETIC_ATOMS)] for a in mol["atoms"]]
        if len(atoms) > 4:  # the pseudo-molecule's ring closure
            atoms[0], atoms[-1] = atoms[0] + "1", atoms[-1] + "1"
        return {"smiles": "".join(atoms)}

    def synthetic_shapes(self, rows_per_shard):
        return {"smiles": 32}

    def baseline_features(self, record):
        return {"smiles": _smiles(record)}

    def dictionary(self):
        return Vocabulary

    # model side
    def tower_config(self, preset):
        from molbind_jax.models.bert import BertConfig

        vocab = len(smiles_tok.VOCAB)
        if preset == "tiny":
            return BertConfig.tiny(vocab_size=vocab, max_position_embeddings=smiles_tok.MAX_LEN,
                                   use_token_type=False, dropout=0.0, attention_dropout=0.0)
        return BertConfig(vocab_size=vocab, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
                          max_position_embeddings=smiles_tok.MAX_LEN, use_token_type=False)

    def build(self, cfg, *, dtype, rngs):
        import dataclasses

        from molbind_jax.models.bert import BertEncoder

        return BertEncoder(dataclasses.replace(cfg, dtype=dtype), rngs=rngs)

    def build_head(self, cfg, *, embed_dim, dtype, rngs):
        from molbind_jax.models.heads import ProjectionHead

        return ProjectionHead(cfg.hidden_size, embed_dim, layer_norm=True, rngs=rngs, dtype=dtype)

    def embed(self, model, batch: TextBatch, *, train):
        import jax.numpy as jnp

        mask = jnp.asarray(batch.mask)
        hidden = model.smiles_encoder(jnp.asarray(batch.ids), mask, train=train)
        m = mask[..., None].astype(jnp.float32)
        pooled = (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        return model.smiles_proj(pooled)

    def export_files(self, model_config, directory, *, context):
        rel = os.path.join("dictionaries", "smiles_vocab.txt")
        os.makedirs(os.path.join(directory, "dictionaries"), exist_ok=True)
        with open(os.path.join(directory, rel), "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in smiles_tok.VOCAB))
        return {"dictionary": rel}


SPEC = SmilesSpec()
