"""The text cache of a locked text tower (molbind_jax/training/text_cache.py).

On the hand-made records of tests/data (text ids 1000 + index, lengths 3..39) and the tiny
MolBind with a text table as large as the MiniLM tokenizer (so that an export ships it):
the cached vectors are the eval-mode [CLS] rows of the tower; a cache of another fingerprint,
a changed record text and a damaged chunk are refused (and `ensure` rebuilds the damage);
shuffled training batches carry their own records' vectors; one train step from the cache
gives the loss and update of the step through the tower (dropout off); the trained model's
cached path, its full tower and its export embed the same text alike.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"))
from pipeline_records import small_records  # noqa: E402

from molbind_jax.data import pipeline  # noqa: E402
from molbind_jax.modalities.text import TextBatch, TextFeatures, pad_text  # noqa: E402
from molbind_jax.models.molbind import MolBind, MolBindConfig  # noqa: E402
from molbind_jax.training import sharding, text_cache, text_cache_run  # noqa: E402
from molbind_jax.training.train_step import StepOptions, TrainStep, init_trainable, param_labels  # noqa: E402

MINILM_VOCAB = 30522
PAIRS = ("graph_text",)  # conformer_text takes the same path (and would compile a Uni-Mol step too)


def tiny_model(seed=0):
    cfg = MolBindConfig.tiny()
    cfg = cfg.replace(bert=dataclasses.replace(cfg.bert, vocab_size=MINILM_VOCAB, dropout=0.0, attention_dropout=0.0))
    return MolBind(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def forward(model):
    return text_cache.encoder_forward(model)


def sources():
    # graph_text and conformer_text read the same stored records here; validation shares some
    # texts with train (same index and length), which the cache stores once.
    return {"graph_text/train": small_records(40, seed=0), "graph_text/validation": small_records(12, seed=0)}


def fp_of(model, srcs):
    return text_cache.fingerprint(dataset={"name": "test", "sizes": {k: len(v) for k, v in srcs.items()}},
                                  tokenizer="none", weights=text_cache.weights_digest(model.text_encoder),
                                  tower=text_cache.tower_description(model.config.bert))


@pytest.fixture
def built(tmp_path, model, forward, monkeypatch):
    monkeypatch.setattr(text_cache, "CHUNK", 8)  # several chunks from 40 texts
    srcs = sources()
    fp, parts = fp_of(model, srcs)
    directory = str(tmp_path / "cache")
    cache = text_cache.ensure(directory, fp, parts, srcs, forward)
    return cache, srcs, fp, parts, directory


_DIRECT = {}


def direct(model, ids_list):
    """The tower's eval-mode [CLS] row of each text: one forward of all texts (at most 64) at
    length 64, other rows and padding than the cache's length-sorted batches."""
    if id(model) not in _DIRECT:
        _DIRECT[id(model)] = jax.jit(lambda ids, mask: model.text_encoder(ids, mask, train=False)[:, 0])
    n = len(ids_list)
    b = pad_text(list(ids_list) + [ids_list[0]] * (64 - n), 64)
    return np.asarray(_DIRECT[id(model)](b.ids, b.mask), np.float32)[:n]


def test_cache_equals_direct_forward(built, model):
    cache, srcs, *_ = built
    assert cache.features.dtype == np.float32 and cache.features.shape[1] == model.config.bert.hidden_size
    assert len(cache.features) < sum(len(v) for v in srcs.values())  # shared texts stored once
    for name, records in srcs.items():
        wrapped = cache.records(name, records)
        got = np.stack([wrapped[i][text_cache.TEXT_FEATURE_KEY] for i in range(len(records))])
        want = direct(model, [r["text_ids"] for r in records])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_stale_fingerprint_and_changed_text_rejected(built, model):
    cache, srcs, fp, parts, directory = built
    with pytest.raises(text_cache.TextCacheError, match="stale"):
        text_cache.load(directory, "0" * 64)
    other = tiny_model(seed=5)  # other weights: another fingerprint
    assert fp_of(other, srcs)[0] != fp
    changed = list(srcs["graph_text/train"])
    changed[3] = dict(changed[3], text_ids=np.array([101, 7, 7, 102]))
    wrapped = cache.records("graph_text/train", changed)
    wrapped[2]  # untouched records are fine
    with pytest.raises(text_cache.TextCacheError, match="another text"):
        wrapped[3]
    with pytest.raises(text_cache.TextCacheError, match="stale"):
        cache.records("graph_text/train", changed[:-1])


def test_truncated_chunk_is_an_error_and_rebuilt(built, forward, caplog):
    cache, srcs, fp, parts, directory = built
    chunk = os.path.join(directory, "chunks", "00002.npy")
    with open(chunk, "r+b") as f:
        f.truncate(os.path.getsize(chunk) // 2)
    with pytest.raises(text_cache.TextCacheError, match="00002.npy"):
        text_cache.load(directory, fp)
    calls = []

    def counting(ids, mask):
        calls.append(len(ids))
        return forward(ids, mask)

    with caplog.at_level(logging.WARNING, logger="molbind_jax.training.text_cache"):
        again = text_cache.ensure(directory, fp, parts, srcs, counting)
    assert "00002.npy" in caplog.text
    assert len(calls) == 1  # only the damaged chunk (8 texts, one forward) was recomputed
    np.testing.assert_array_equal(again.features, cache.features)


def test_unfinished_build_resumes(built, forward):
    cache, srcs, fp, parts, directory = built
    os.remove(os.path.join(directory, "manifest.json"))  # killed before the end ...
    os.remove(os.path.join(directory, "chunks", "00001.npy"))  # ... and before this chunk
    with pytest.raises(text_cache.TextCacheError, match="did not finish"):
        text_cache.load(directory, fp)
    calls = []
    again = text_cache.ensure(directory, fp, parts, srcs, lambda i, m: calls.append(1) or forward(i, m))
    assert len(calls) == 1
    np.testing.assert_array_equal(again.features, cache.features)


def test_shuffled_batches_carry_their_own_features(built, model):
    cache, srcs, *_ = built
    records = srcs["graph_text/train"]
    kw = dict(global_batch_size=8, num_local_shards=2, seed=3, train=True, prefetch=0)
    plain = pipeline.PairBatches("graph_text", records, **kw)
    cached = pipeline.PairBatches("graph_text", cache.records("graph_text/train", records), **kw)
    for step in (0, 3, 7):  # epoch 0 and a reshuffled epoch 1
        a, b = plain.host_batch(step), cached.host_batch(step)
        assert isinstance(a.y, TextBatch) and isinstance(b.y, TextFeatures)
        np.testing.assert_array_equal(a.mask, b.mask)
        idx, _ = plain.host_rows(step)
        assert not np.array_equal(idx, np.sort(idx))  # shuffled
        want = direct(model, [records[i]["text_ids"] for i in idx])
        np.testing.assert_allclose(b.y.features, want, atol=1e-5, rtol=1e-5)


def _step(mesh, batches):
    model = tiny_model()  # the weights the cache was made with (the step donates the state's arrays)
    opts = StepOptions(pairs=PAIRS, weights={p: 0.5 for p in PAIRS}, frozen=("text_encoder",))
    # SGD: the update is the gradient (Adam's first step would be the sign of round-off-sized ones)
    sgd = optax.sgd(0.1)
    tx = optax.multi_transform({"train": sgd, "temperature": sgd, "frozen": optax.set_to_zero()},
                               param_labels(init_trainable(model, opts), opts.frozen))
    ts = TrainStep(model, tx, mesh, opts)
    state = ts.init_state(model)
    glob = {p: sharding.global_batch(b, mesh) for p, b in batches.items()}
    state, m = ts(state, [glob])
    return ts, state, m


@pytest.mark.slow  # two train-step compiles and an export: ~20 s on 2 idle cores
def test_train_step_from_cache_equals_tower_and_export(built, model, tmp_path):
    from molbind_jax.inference.export_reader import load_export
    from molbind_jax.training.export import default_tokenizer, write_export

    cache, srcs, *_ = built
    records = srcs["graph_text/train"]
    mesh = sharding.make_mesh(2)
    kw = dict(global_batch_size=8, num_local_shards=2, seed=1, train=True, prefetch=0)
    plain = {p: pipeline.PairBatches(p, records, **kw).host_batch(0) for p in PAIRS}
    cached = {p: pipeline.PairBatches(p, cache.records("graph_text/train", records), **kw).host_batch(0)
              for p in PAIRS}
    _, s_plain, m_plain = _step(mesh, plain)
    ts, s_cached, m_cached = _step(mesh, cached)
    for k in ("loss", "loss/graph_text"):
        np.testing.assert_allclose(float(m_cached[k]), float(m_plain[k]), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s_cached["trainable"]), jax.tree.leaves(s_plain["trainable"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    # After the step: the cached path, the full tower and the export embed a text alike.
    trained = ts.merged_model(s_cached)
    ids = [r["text_ids"] for r in records[:6]]
    b = pad_text(ids, 64)
    feats = np.stack([cache.records("graph_text/train", records)[i][text_cache.TEXT_FEATURE_KEY] for i in range(6)])
    via_cache = np.asarray(trained.embed("text", TextFeatures(feats)))
    via_tower = np.asarray(trained.embed_text(b.ids, b.mask))
    np.testing.assert_allclose(via_cache, via_tower, atol=1e-5)
    out = write_export(trained, trained.config, str(tmp_path / "export"), tokenizer_dir=default_tokenizer())
    exported, _, _ = load_export(out)
    np.testing.assert_allclose(np.asarray(exported.embed_text(b.ids, b.mask)), via_cache, atol=1e-5)


def test_modes():
    c = ConfigDict(dict(pairs=("graph_text", "graph_conformer"), frozen=("text_encoder",), text_cache="auto",
                        data=dict(source="tfds")))
    assert text_cache_run.enabled(c)
    c.data.source = "synthetic"
    assert not text_cache_run.enabled(c)
    c.text_cache = "on"
    with pytest.raises(ValueError, match="tfds"):
        text_cache_run.enabled(c)
    c.data.source, c.frozen = "tfds", ()
    with pytest.raises(ValueError, match="locked"):
        text_cache_run.enabled(c)
    c.text_cache = "auto"
    assert not text_cache_run.enabled(c)
    c.frozen, c.pairs = ("text_encoder",), ("graph_conformer",)
    assert not text_cache_run.enabled(c)  # no text pair
    c.text_cache = "sometimes"
    with pytest.raises(ValueError, match="text_cache"):
        text_cache_run.enabled(c)


def test_a_runs_cache_reused_and_fed_to_the_pipeline(tmp_path, model, monkeypatch):
    """for_training -> records_for -> mixed_pair_batches, the TFDS reading replaced by records."""
    srcs = {"graph_text/train": small_records(24, seed=0), "conformer_text/train": small_records(16, seed=1)}
    part = {"name": "test", "configs": {"graph_text": {"version": "1.0.0"}}}
    monkeypatch.setattr(text_cache_run, "tfds_sources", lambda config: (dict(srcs), part))
    c = ConfigDict(dict(pairs=("graph_text", "conformer_text", "graph_conformer"), frozen=("text_encoder",),
                        text_cache="auto", text_cache_dir=str(tmp_path), text_cache_rebuild=False,
                        data=dict(source="tfds", dataset="molbind_test", data_dir="")))
    cache = text_cache_run.for_training(c, model, "")
    assert os.path.dirname(cache.directory) == str(tmp_path / "molbind_test")
    mtime = os.path.getmtime(os.path.join(cache.directory, "manifest.json"))
    again = text_cache_run.for_training(c, model, "")  # the next run (another seed) reuses it
    assert again.directory == cache.directory
    assert os.path.getmtime(os.path.join(cache.directory, "manifest.json")) == mtime
    records = text_cache_run.records_for(cache, c, "train")
    assert set(records) == {"graph_text", "conformer_text"}  # graph_conformer reads the dataset
    step = next(pipeline.mixed_pair_batches(["graph_text", "conformer_text"], "train", records=records,
                                            global_batch_size=8, num_local_shards=1, process_index=0,
                                            process_count=1, prefetch=0))
    for pair in ("graph_text", "conformer_text"):
        assert isinstance(step[pair].y, TextFeatures) and step[pair].y.features.shape == (8, 32)
    assert text_cache_run.records_for(None, c, "train") is None
