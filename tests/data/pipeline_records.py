"""Hand-made stored records for the input pipeline tests (test_batching.py, test_input_pipeline.py).

Records encode their own index in the payload (text id 1000+i, first graph node atom i % 100,
conformer coordinates i + 0.1*k for conformer k), so a batch row says which record and which
conformer it came from. Every record holds the fields of every modality of the table
(data_pipeline/schema.py), so it serves every pair type, views included.
"""
import numpy as np


def make_record(i, n_text=5, n_atoms=6, n_pocket=20, n_conf=3, rng=None):
    """One record with every feature of DESIGN.md section 1; index i is recoverable."""
    rng = rng or np.random.default_rng(i)
    n_edges = 2 * max(n_atoms - 1, 0)
    src = np.arange(max(n_atoms - 1, 0))
    edge_index = np.stack([np.concatenate([src, src + 1]), np.concatenate([src + 1, src])]) if n_edges else np.zeros((2, 0), int)
    nodes = rng.integers(0, 118, (n_atoms, 2))
    nodes[0, 0] = i % 100
    conf = np.stack([np.full((n_atoms + 2, 3), i + 0.1 * k, np.float32) for k in range(n_conf)])
    return {
        "id": f"rec{i}".encode(),
        "smiles": ("C" * max(n_atoms, 1)).encode(),  # bytes, as TFDS returns text
        "target": f"target{i % 3}".encode(),
        "text_ids": np.concatenate([[101], np.full(n_text - 2, 1000 + i), [102]]).astype(np.int64),
        "graph_node_feat": nodes.astype(np.int64),
        "graph_edge_index": edge_index.astype(np.int64),
        "graph_edge_feat": rng.integers(0, 4, (n_edges, 2)).astype(np.int64),
        "conformer_tokens": np.concatenate([[1], rng.integers(4, 10, n_atoms), [2]]).astype(np.int64),
        "conformer_coords": conf,
        "pocket_tokens": np.concatenate([[1], rng.integers(4, 9, n_pocket - 2), [2]]).astype(np.int64),
        "pocket_coords": rng.normal(size=(n_pocket, 3)).astype(np.float32),
    }


def small_records(n, seed=0):
    rng = np.random.default_rng(seed)
    return [make_record(i, n_text=int(rng.integers(3, 40)), n_atoms=int(rng.integers(1, 30)),
                        n_pocket=int(rng.integers(10, 60)), n_conf=int(rng.integers(1, 4)))
            for i in range(n)]


def record_of_text_row(ids, mask):
    """The record index a padded text row came from (its second token is 1000 + index)."""
    return int(ids[mask.astype(bool)][1]) - 1000


def leaves(batch, path=""):
    """(path, array) of every array of a typed batch (nested NamedTuples), in field order; the
    path names the classes and fields, so two batches of other types or layouts differ."""
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        for f in batch._fields:
            yield from leaves(getattr(batch, f), f"{path}{type(batch).__name__}.{f}/")
    else:
        yield path, batch


def assert_batches_equal(a, b):
    la, lb = list(leaves(a)), list(leaves(b))
    assert [k for k, _ in la] == [k for k, _ in lb]
    for (k, x), (_, y) in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype, k
        np.testing.assert_array_equal(x, y, err_msg=k)
