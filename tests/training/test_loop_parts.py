"""The compile line's shape description (loop_parts.describe_shapes / shapes_signature)."""
from __future__ import annotations

from molbind_jax.data import synthetic
from molbind_jax.training.loop_parts import describe_shapes, shapes_signature


def _micro(n=8):
    return {p: synthetic.pair_batch(p, range(n), num_local_shards=2, text_vocab=64)
            for p in ("graph_text", "conformer_pocket")}


def test_describe_names_each_pair_side_and_new_shapes():
    text = describe_shapes([_micro()])
    assert text.startswith("conformer_pocket: AtomsBatch tokens 8x")
    assert "graph_text: GraphBatch nodes 2x" in text and "edges 2x" in text and "| TextBatch ids 8x" in text
    assert "coords" not in text  # same leading shape as tokens: not repeated
    assert "other micro-batch" not in text


def test_signature_tells_new_shapes_apart():
    a, b = _micro(8), _micro(16)
    assert shapes_signature([a]) == shapes_signature([_micro(8)])
    assert shapes_signature([a]) != shapes_signature([b])
    assert "(+1 other micro-batch shapes)" in describe_shapes([a, b])
