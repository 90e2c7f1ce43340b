r"""Emergent alignment: mini without conformer_text pairs.

The conformer and text towers never see each other during training; they meet only through
the graph (graph_text, graph_conformer). Evaluate conformer<->text retrieval afterwards to
measure the emergent alignment (compare with the same evaluation of the `mini` run).

  TFDS_DATA_DIR=data/tfds .venv/bin/python -m molbind_jax.training.train \
      --config=experiments/configs/emergent.py --workdir=runs/emergent

`emergent.py:smoke` is the synthetic smoke variant.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mini  # noqa: E402


def get_config(arg: str | None = None):
    c = mini.get_config(arg)
    c.pairs = ("graph_text", "graph_conformer", "conformer_pocket")
    # The three remaining pairs keep the original's weight each (0.25); conformer_text's
    # entry stays in loss_weights but is unused.
    return c
