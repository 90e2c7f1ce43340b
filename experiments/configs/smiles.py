r"""Five modalities: mini plus SMILES strings (molbind_jax/modalities/smiles.py).

The mini run (MiniLM text tower locked, small GIN and Uni-Mol towers from scratch) with a fifth
tower, a 2-layer Transformer over atom-level SMILES tokens (from scratch), trained on two more
pair types that read the molbind_mini graph_text records: smiles_text (SMILES vs the ChEBI /
PubChem text) and smiles_graph (SMILES vs the 2D graph of the same molecule). smiles_graph is
cheap (batch 64); smiles_text pays the locked MiniLM's forward, so it trains on every 2nd step.

  .venv/bin/python -m molbind_jax.training.train --config=experiments/configs/smiles.py \
      --workdir=runs/smiles --config.data.data_dir=data/tfds
  .venv/bin/python -m molbind_jax.training.export --workdir=runs/smiles
  .venv/bin/python -m molbind_jax.evaluation.evaluate --workdir=runs/smiles --data_dir=data/tfds

The evaluation covers every pair type of the table whose modalities the model has (the four
original ones and the two SMILES ones), each against its baselines (random; SMILES-vs-text
TF-IDF for smiles_text; the Morgan identity upper bound for smiles_graph).
`smiles.py:smoke` is the synthetic smoke variant (tiny towers, no data needed).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mini  # noqa: E402


def get_config(arg: str | None = None):
    c = mini.get_config(arg)
    c.model.overrides.modalities = ("text", "graph", "conformer", "pocket", "smiles")
    c.pairs = tuple(c.pairs) + ("smiles_text", "smiles_graph")
    c.init.scratch = tuple(c.init.scratch) + ("smiles",)
    if arg in ("smoke", "smoke_data"):
        return c  # tiny towers, every pair on every step
    c.model.overrides.smiles = dict(num_layers=2, hidden_size=128, num_heads=4, intermediate_size=256,
                                    dropout=0.1, attention_dropout=0.1)
    c.pair_batch_size.smiles_graph = 64
    c.pair_every.smiles_text = 2
    return c
