"""Layer 1 of the input pipeline: padding and packing per modality (modalities/{text,atoms,graph}.py),
collation into typed `PairBatch`es, sizes and buckets (data/batching.py), synthetic pairs
(data/synthetic.py). Pure numpy, on hand-made records (pipeline_records.py)."""
import itertools
import os
import sys

import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from molbind_data import schema
from molbind_jax.data import batching, synthetic
from molbind_jax.modalities import PairBatch, spec
from molbind_jax.modalities.atoms import AtomsBatch, pad_atoms
from molbind_jax.modalities.graph import GraphBatch, pack_graphs
from molbind_jax.modalities.text import TextBatch, pad_text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline_records import assert_batches_equal, make_record, small_records  # noqa: E402

# ----------------------------------------------------------------------------- padding


def test_pad_text_and_mask():
    b = pad_text([np.array([101, 7, 102]), np.array([101, 102])], 8)
    assert isinstance(b, TextBatch)
    assert b.ids.shape == b.mask.shape == (2, 8) and b.ids.dtype == b.mask.dtype == np.int32
    np.testing.assert_array_equal(b.ids[0], [101, 7, 102, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(b.mask.sum(1), [3, 2])
    with pytest.raises(ValueError, match="more than the padded length"):
        pad_text([np.arange(9)], 8)


def test_pad_atoms():
    b = pad_atoms([np.array([1, 4, 2]), np.array([1, 2])], [np.ones((3, 3)), 2 * np.ones((2, 3))], 8)
    assert isinstance(b, AtomsBatch)
    tok, xyz = b.tokens, b.coords
    assert tok.shape == (2, 8) and xyz.shape == (2, 8, 3) and xyz.dtype == np.float32
    np.testing.assert_array_equal(tok[0], [1, 4, 2, 0, 0, 0, 0, 0])
    assert (xyz[0, :3] == 1).all() and (xyz[0, 3:] == 0).all() and (xyz[1, 2:] == 0).all()
    with pytest.raises(ValueError, match="3 tokens but 2 coordinates"):
        pad_atoms([np.array([1, 4, 2])], [np.ones((2, 3))], 8)


def test_choose_bucket():
    assert batching.choose_bucket(1, (32, 64)) == 32
    assert batching.choose_bucket(32, (64, 32)) == 32
    assert batching.choose_bucket(33, (32, 64)) == 64
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        batching.choose_bucket(65, (32, 64))


def test_suggest_buckets_is_optimal_and_covers():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 120, 300)
    rounded = -(-sizes // 8) * 8
    cands = np.unique(rounded)

    def cost(b):
        b = np.asarray(sorted(b))
        return b[np.searchsorted(b, rounded)].sum()

    for k in (1, 2, 3):
        got = batching.suggest_buckets(sizes, max_shapes=k)
        assert len(got) <= k and got[-1] == cands[-1] and all(b % 8 == 0 for b in got)
        best = min(cost(c + (cands[-1],)) for c in itertools.combinations(cands[:-1], k - 1))
        assert cost(got) == best
    # every budget of one programme is the optimum of that budget
    sets = batching.optimal_bucket_sets(sizes, 3)
    assert sets == [batching.suggest_buckets(sizes, max_shapes=k) for k in (1, 2, 3)]
    with pytest.raises(ValueError, match="max_shapes"):
        batching.suggest_buckets(sizes, max_shapes=0)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_pack_graphs_jraph_conventions_and_shard_assignment():
    recs = [make_record(i, n_atoms=n) for i, n in enumerate([3, 1, 5, 2, 4, 6])]
    out = pack_graphs(recs, num_shards=2, node_budget=16, edge_budget=24)
    assert isinstance(out, GraphBatch)
    assert out.nodes.shape == (2, 16, 2) and out.edges.shape == (2, 24, 2)
    assert out.n_node.shape == (2, 4) and out.nodes.dtype == np.int32
    for s in range(2):
        mine = recs[3 * s:3 * s + 3]  # examples s*B/S .. (s+1)*B/S-1
        g = jraph.GraphsTuple(
            nodes=jnp.asarray(out.nodes[s]), edges=jnp.asarray(out.edges[s]),
            senders=jnp.asarray(out.senders[s]), receivers=jnp.asarray(out.receivers[s]),
            n_node=jnp.asarray(out.n_node[s]), n_edge=jnp.asarray(out.n_edge[s]), globals=None)
        n_real = sum(len(r["graph_node_feat"]) for r in mine)
        e_real = sum(len(r["graph_edge_feat"]) for r in mine)
        np.testing.assert_array_equal(jraph.get_graph_padding_mask(g), [True, True, True, False])
        np.testing.assert_array_equal(jraph.get_node_padding_mask(g), np.arange(16) < n_real)
        np.testing.assert_array_equal(jraph.get_edge_padding_mask(g), np.arange(24) < e_real)
        assert out.n_node[s].sum() == 16 and out.n_edge[s].sum() == 24
        # padding edges point at the last (padding) node
        assert (out.senders[s, e_real:] == 15).all() and (out.receivers[s, e_real:] == 15).all()
        # the real part unpacks to the original graphs, with shard-local offsets
        unpadded = jraph.unpad_with_graphs(g)
        off_n = off_e = 0
        for r in mine:
            n, e = len(r["graph_node_feat"]), len(r["graph_edge_feat"])
            np.testing.assert_array_equal(unpadded.nodes[off_n:off_n + n], r["graph_node_feat"])
            np.testing.assert_array_equal(unpadded.edges[off_e:off_e + e], r["graph_edge_feat"])
            np.testing.assert_array_equal(unpadded.senders[off_e:off_e + e], r["graph_edge_index"][0] + off_n)
            np.testing.assert_array_equal(unpadded.receivers[off_e:off_e + e], r["graph_edge_index"][1] + off_n)
            off_n, off_e = off_n + n, off_e + e
    # a message pass along every edge never lands on a real node from a padding edge
    msg = np.ones((2, 24))
    e_real0 = sum(len(r["graph_edge_feat"]) for r in recs[:3])
    msg[0, :e_real0] = 0.0
    received = jraph.segment_sum(jnp.asarray(msg[0]), jnp.asarray(out.receivers[0]), 16)
    assert float(received[:15].sum()) == 0.0
    with pytest.raises(ValueError, match="over the budgets"):
        pack_graphs(recs, num_shards=2, node_budget=8, edge_budget=24)  # 3+1+5 nodes + 1 padding > 8
    with pytest.raises(ValueError, match="cannot be split evenly"):
        pack_graphs(recs, num_shards=4, node_budget=16, edge_budget=24)


# ----------------------------------------------------------------------------- collation

def test_collate_pair_short_batch_filled_with_dummies():
    recs = [make_record(i, n_text=4 + i, n_atoms=3 + i) for i in range(3)]
    b = batching.collate_pair("graph_text", recs, batch_size=4, num_shards=2)
    assert isinstance(b, PairBatch) and isinstance(b.x, GraphBatch) and isinstance(b.y, TextBatch)
    np.testing.assert_array_equal(b.mask, [True, True, True, False])
    assert b.y.ids.shape == (4, 8) and b.x.n_node.shape == (2, 3)
    np.testing.assert_array_equal(b.y.ids[3], b.y.ids[0])  # a copy of a real example
    b = batching.collate_pair("conformer_pocket", recs, choices={"conformer": [2, 1, 0]})
    assert isinstance(b.x, AtomsBatch) and isinstance(b.y, AtomsBatch)
    assert b.x.tokens.shape == (3, 8) and b.y.tokens.shape == (3, 24)
    np.testing.assert_allclose(b.x.coords[:, 0, 0], [0.2, 1.1, 2.0], rtol=1e-6)
    # default: the first stored conformer
    first = batching.collate_pair("conformer_pocket", recs)
    np.testing.assert_allclose(first.x.coords[:, 0, 0], [0.0, 1.0, 2.0], rtol=1e-6)


def test_collate_pair_refuses_bad_arguments():
    recs = [make_record(i, n_conf=2) for i in range(3)]
    with pytest.raises(ValueError, match="unknown pair type 'graph_txt'; known pair types: graph_text"):
        batching.collate_pair("graph_txt", recs)
    with pytest.raises(ValueError, match="at least one example"):
        batching.collate_pair("graph_text", [])
    with pytest.raises(ValueError, match="4 examples for a batch of 3"):
        batching.collate_pair("graph_text", recs + recs[:1], batch_size=3)
    with pytest.raises(ValueError, match="another length"):
        batching.collate_pair("graph_conformer", recs, choices={"conformer": [0, 1]})
    with pytest.raises(ValueError, match="another length"):
        batching.collate_pair("graph_conformer", recs, pair_mask=[True])
    # choices for a modality the pair does not have, or a variant the record does not store
    with pytest.raises(ValueError, match="choices for 'pocket'.*graph_conformer has graph, conformer"):
        batching.collate_pair("graph_conformer", recs, choices={"pocket": [0, 0, 0]})
    with pytest.raises(ValueError, match="record 1: conformer variant 2 asked for, 2 stored"):
        batching.collate_pair("graph_conformer", recs, choices={"conformer": [0, 2, 1]})
    with pytest.raises(ValueError, match="cannot be split over 2 graph shards"):
        batching.collate_pair("graph_text", recs, num_shards=2)


def test_collate_pair_shapes_and_buckets():
    recs = [make_record(i, n_text=5 + 3 * i, n_atoms=2 + i) for i in range(4)]
    # default: the need rounded up to 8 (graph budgets: the fullest shard + a padding node)
    b = batching.collate_pair("graph_text", recs, num_shards=2)
    assert b.y.ids.shape == (4, 16)  # longest text 14
    assert b.x.nodes.shape == (2, 16, 2)  # shard 1: 4 + 5 nodes + 1 padding = 10 -> 16
    assert b.x.edges.shape == (2, 16, 2)  # shard 1: 6 + 8 edges = 14 -> 16
    # buckets: the smallest that fits; given shapes win over both
    b = batching.collate_pair("graph_text", recs, num_shards=2,
                              buckets={"text": (12, 20, 40), "graph_nodes": (10, 64), "graph_edges": (64,)})
    assert b.y.ids.shape == (4, 20) and b.x.nodes.shape == (2, 10, 2) and b.x.edges.shape == (2, 64, 2)
    b = batching.collate_pair("graph_text", recs, num_shards=2, buckets={"text": (20,)}, shapes={"text": 33})
    assert b.y.ids.shape == (4, 33)
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        batching.collate_pair("graph_text", recs, buckets={"text": (8,)})


def test_collate_modality_is_the_pair_side():
    recs = small_records(6)
    pair = batching.collate_pair("graph_conformer", recs, num_shards=2, choices={"conformer": [0] * 6})
    graphs = batching.collate_modality("graph", recs, num_shards=2)
    conformers = batching.collate_modality("conformer", recs)
    assert_batches_equal(graphs, pair.x)
    assert_batches_equal(conformers, pair.y)
    text = batching.collate_modality("text", recs, shapes={"text": 64})
    assert isinstance(text, TextBatch) and text.ids.shape == (6, 64)
    with pytest.raises(ValueError, match="unknown modality 'txt'; known modalities: text"):
        batching.collate_modality("txt", recs)


# ----------------------------------------------------------------------------- sizes and buckets

def test_record_sizes_choices_and_packed_keys():
    r = make_record(0, n_text=7, n_atoms=5, n_pocket=12, n_conf=3)
    assert batching.record_sizes("graph_text", r) == {"graph_nodes": 5, "graph_edges": 8, "text": 7}
    assert batching.record_sizes("conformer_pocket", r) == {"conformer": 7, "pocket": 12}
    for pair in schema.PAIR_TYPES:  # one size per size key of the pair, x's then y's
        assert tuple(batching.record_sizes(pair, r)) == schema.size_keys(pair)
    assert batching.num_choices("graph_conformer", r) == {"conformer": 3}
    assert batching.num_choices("graph_text", r) == {}
    assert batching.num_choices("conformer_pocket", make_record(0, n_conf=1)) == {}
    assert batching.packed_keys("graph_text") == {"graph_nodes": 1, "graph_edges": 0}
    assert batching.packed_keys("conformer_text") == {}
    bad = {**r, "graph_edge_index": np.array([[0, 9], [1, 0]])}
    with pytest.raises(ValueError, match="edge index out of range"):
        batching.record_sizes("graph_conformer", {**bad, "graph_edge_feat": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="conformer_coords shape"):
        batching.record_sizes("conformer_text", {**r, "conformer_coords": np.zeros((2, 3, 3))})
    with pytest.raises(KeyError):
        batching.record_sizes("conformer_text", {k: v for k, v in r.items() if k != "text_ids"})


def test_buckets_for_flat_per_pair_and_unknown():
    flat = {"text": (32, 64), "graph_nodes": [128], "graph_edges": (256,), "pocket": (64,)}
    assert batching.buckets_for("graph_text", flat) == {"text": (32, 64), "graph_nodes": (128,),
                                                        "graph_edges": (256,)}
    assert batching.buckets_for("conformer_pocket", flat) == {"pocket": (64,)}
    assert batching.buckets_for("graph_conformer", {"text": (32,)}) is None  # none of its keys
    per_pair = {"graph_text": {"text": (16,)}, "conformer_text": {"conformer": (24,)}}
    assert batching.buckets_for("graph_text", per_pair) == {"text": (16,)}
    assert batching.buckets_for("graph_conformer", per_pair) is None
    assert batching.buckets_for("graph_text", None) is None and batching.buckets_for("graph_text", {}) is None
    with pytest.raises(ValueError, match=r"unknown bucket keys \['txt'\]"):
        batching.buckets_for("graph_text", {"txt": (8,)})


# ----------------------------------------------------------------------------- synthetic pairs

@pytest.mark.parametrize("pair", list(schema.PAIR_TYPES))
def test_synthetic_pairs_have_fixed_shapes_and_one_molecule_per_row(pair):
    x_spec, y_spec = (spec(m) for m in schema.pair_type(pair).modalities)
    a = synthetic.pair_batch(pair, range(8), num_local_shards=2, text_vocab=100)
    again = synthetic.pair_batch(pair, range(8), num_local_shards=2, text_vocab=100)
    other = synthetic.pair_batch(pair, range(40, 48), num_local_shards=2, text_vocab=100)
    assert_batches_equal(a, again)  # deterministic
    assert a.mask.all() and a.mask.shape == (8,)
    expected = {**x_spec.synthetic_shapes(4), **y_spec.synthetic_shapes(4)}
    for side, s in ((a.x, x_spec), (a.y, y_spec)):  # the same batch as collating the records
        ref = batching.collate_modality(s.name, [synthetic.record(pair, i, text_vocab=100) for i in range(8)],
                                        num_shards=2, shapes=expected)
        assert_batches_equal(side, ref)
    # fixed shapes: other molecules, the same arrays' shapes
    for (k, u), (_, v) in zip(_shapes(a), _shapes(other)):
        assert u == v, k
    assert any(not np.array_equal(u, v) for u, v in zip(a.x, other.x))


def _shapes(batch):
    return [(f"{side}.{f}", np.shape(getattr(getattr(batch, side), f)))
            for side in ("x", "y") for f in getattr(batch, side)._fields]


def test_synthetic_graph_and_conformer_are_the_same_molecule():
    for idx in (0, 5, 17):
        r = synthetic.record("graph_conformer", idx, text_vocab=100)
        atoms = r["graph_node_feat"][:, 0]
        np.testing.assert_array_equal(r["conformer_tokens"][1:-1], 4 + atoms % 6)
        assert len(r["conformer_coords"]) == len(atoms) + 2
        assert batching.record_sizes("graph_conformer", r)["graph_edges"] == r["graph_edge_index"].shape[1]
