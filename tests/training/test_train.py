"""Train step and launcher tests.

The step mechanics (split per-pair jits == one fused jit == a hand-written reference update,
frozen submodules, the finite guard, compile counts, schedule) run on a toy model with the
MolBind interface (`pair_embeddings(pair, batch, *, train)`, a BatchNorm, dropout) over the
synthetic batches of `train_inputs`, so they take a second or two. The end-to-end smoke run of
the real launcher on the real (tiny) MolBind is marked slow.
"""
from __future__ import annotations

import json
import os
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from molbind_data import schema
from molbind_jax.modalities import PairBatch
from molbind_jax.modalities.atoms import AtomsBatch
from molbind_jax.modalities.graph import GraphBatch
from molbind_jax.modalities.text import TextBatch
from molbind_jax.training import losses, sharding, train_inputs
from molbind_jax.training.train_step import (StepOptions, TrainStep, init_trainable, lr_schedule,
                                    fresh, make_optimizer, param_labels, reseed_state,
                                    state_leaves_equal)
from smoke_configs import smoke_config

D = 8
# The original four pair types (the toy model and the tiny MolBind have their four towers).
PAIRS = ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")


class ToyBind(nnx.Module):
    """The MolBind interface in a few parameters: one tower per modality, BN on graphs."""

    def __init__(self, rngs: nnx.Rngs):
        self.text_encoder = nnx.Embed(128, D, rngs=rngs)
        self.graph_encoder = nnx.Embed(120, D, rngs=rngs)
        self.graph_norm = nnx.BatchNorm(D, rngs=rngs)
        self.conformer_encoder = nnx.Linear(4, D, rngs=rngs)
        self.pocket_encoder = nnx.Linear(4, D, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)

    def _atoms(self, enc, tokens, coords):
        feat = jnp.concatenate([coords, tokens[..., None].astype(jnp.float32) / 10], -1)
        m = (tokens > 0)[..., None]
        return (enc(feat) * m).sum(1) / m.sum(1)

    def _embed(self, kind, b, train):
        if kind == "text":
            assert isinstance(b, TextBatch)
            m = b.mask[..., None]
            h = (self.text_encoder(b.ids) * m).sum(1) / m.sum(1)
        elif kind == "graph":
            assert isinstance(b, GraphBatch)
            s, g1 = b.n_node.shape
            node = self.graph_encoder(b.nodes[..., 0])  # [S, Nn, D]
            seg = jax.vmap(lambda n: jnp.repeat(jnp.arange(g1), n, total_repeat_length=node.shape[1]))(b.n_node)
            pooled = jax.vmap(lambda x, i: jax.ops.segment_sum(x, i, g1))(node, seg)
            pooled = pooled[:, :-1].reshape(-1, D)  # drop each shard's padding graph
            h = self.graph_norm(pooled, use_running_average=not train)
        else:
            assert isinstance(b, AtomsBatch)
            h = self._atoms(getattr(self, f"{kind}_encoder"), b.tokens, b.coords)
        h = self.dropout(h, deterministic=not train)
        return h / jnp.linalg.norm(h, axis=-1, keepdims=True)

    def pair_embeddings(self, pair, batch, *, train):
        p = schema.pair_type(pair)
        return self._embed(p.x, batch.x, train), self._embed(p.y, batch.y, train), batch.mask


def _config(batch_size=8):
    c = ml_collections.ConfigDict()
    c.pairs = PAIRS
    c.batch_size = batch_size
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(source="synthetic", synthetic_pool=64))
    return c


def _setup(opts=None, frozen=(), n_dev=2, lr=1e-2, tx=None):
    mesh = sharding.make_mesh(n_dev)
    model = ToyBind(nnx.Rngs(0))
    opts = opts or StepOptions(seed=3)
    labels = param_labels(init_trainable(model, opts), frozen)
    tx = tx or make_optimizer(optax.constant_schedule(lr), weight_decay=0.05, labels=labels)
    ts = TrainStep(model, tx, mesh, opts)
    return mesh, model, ts


def _micro(mesh, n, start=0, batch_size=8):
    it = train_inputs.micro_batches(_config(batch_size), split="train", start=start, train=True,
                                    text_vocab=128, mesh=mesh)
    return [{p: train_inputs.to_global(b, mesh) for p, b in next(it).items()} for _ in range(n)]


def test_lr_schedule_matches_lavis_warmup_cosine():
    s = lr_schedule(peak_lr=1e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=10, total_steps=110)
    assert float(s(0)) == pytest.approx(1e-6)
    assert float(s(5)) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5, rel=1e-5)
    assert float(s(10)) == pytest.approx(1e-4, rel=1e-5)
    assert float(s(60)) == pytest.approx(1e-5 + 0.5 * (1e-4 - 1e-5), rel=1e-4)
    assert float(s(110)) == pytest.approx(1e-5, rel=1e-4)
    assert float(s(500)) == pytest.approx(1e-5, rel=1e-4)  # the floor, never below
    # LAVIS mode: the cosine moves once per epoch (4 epochs of 25 steps here).
    e = lr_schedule(peak_lr=1e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=10, total_steps=100,
                    steps_per_epoch=25, cosine_per_epoch=True)
    assert float(e(12)) == pytest.approx(1e-4, rel=1e-5)
    assert float(e(30)) == float(e(49))
    assert float(e(50)) == pytest.approx(1e-5 + (1e-4 - 1e-5) * 0.5 * (1 + np.cos(np.pi * 0.5)), rel=1e-4)


@pytest.fixture(scope="module")
def sgd_toy():
    # Plain SGD so that parameters compare gradients directly (Adam's first step is
    # g/(|g|+eps), which turns float round-off in near-zero gradients into O(lr) differences).
    # Shared by the tests below so that the per-pair programs compile once.
    return _setup(tx=optax.sgd(1.0))


@pytest.mark.slow
def test_split_step_equals_fused_step_and_reference_update(sgd_toy):
    mesh, model, ts = sgd_toy
    micro = _micro(mesh, 2)
    state0 = ts.init_state(model)
    # Reference: one jax.grad over the weighted sum of all pairs and micro-batches, with BN
    # statistics chained pair after pair, then plain AdamW.
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)

    def total_loss(params, stats):
        tot = 0.0
        # dropout keys: fold_in(seed, step), then the micro-batch, then the pair's name
        for i, batches in enumerate(micro):
            for pair in PAIRS:
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), i)
                key = jax.random.fold_in(key, zlib.crc32(pair.encode()) & 0x7FFFFFFF)
                m = nnx.merge(graphdef, *fresh(params, stats, reseed_state(rest, key)))
                x, y, mask = m.pair_embeddings(pair, batches[pair], train=True)
                loss, _ = losses.pair_infonce(x, y, mask, mesh=mesh, temperature=0.1)
                tot = tot + 0.25 * loss
                stats = nnx.state(m, nnx.BatchStat)
        return tot / len(micro), stats

    (ref_loss, ref_stats), g = jax.jit(jax.value_and_grad(total_loss, has_aux=True))(params, stats)
    ref_params = jax.tree.map(lambda p, d: p - d, params, g)

    s1, m1 = ts(jax.tree.map(jnp.copy, state0), micro)
    assert bool(m1["finite"]) and int(s1["step"]) == 1
    np.testing.assert_allclose(float(m1["loss"]), float(ref_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1["trainable"]["model"]), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s1["batch_stats"]), jax.tree.leaves(ref_stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # BN running stats were updated twice (graph_text, graph_conformer) from the initial zeros.
    assert not np.allclose(np.asarray(jax.tree.leaves(s1["batch_stats"])[0]), 0.0)

    ts.opts.fused = True
    try:
        s2, m2 = ts(jax.tree.map(jnp.copy, state0), micro)
    finally:
        ts.opts.fused = False
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_frozen_submodule_and_learnable_temperature():
    opts = StepOptions(learn_temperature=True, temperature=0.1, frozen=("text_encoder",))
    mesh, model, ts = _setup(opts, frozen=("text_encoder",), lr=1e-2)
    state = ts.init_state(model)
    before = jax.tree.map(np.asarray, state["trainable"])
    frozen_before = jax.tree.map(np.asarray, state["frozen"])
    state, m = ts(state, _micro(mesh, 1))
    after = state["trainable"]
    assert "text_encoder" not in after["model"]  # frozen towers live in state["frozen"]
    assert state_leaves_equal(frozen_before, state["frozen"])
    assert not state_leaves_equal(before["model"]["graph_encoder"], after["model"]["graph_encoder"])
    assert not state_leaves_equal(before["log_scale"], after["log_scale"])
    assert float(m["loss"]) > 0


@pytest.mark.slow
def test_nonfinite_batch_leaves_state_unchanged(sgd_toy):
    mesh, model, ts = sgd_toy
    state = ts.init_state(model)
    before = jax.tree.map(np.asarray, state)
    micro = _micro(mesh, 1)
    bad = dict(micro[0])
    bad["conformer_pocket"] = jax.tree.map(lambda v: v * jnp.nan if v.dtype == jnp.float32 else v,
                                           bad["conformer_pocket"])
    assert np.isnan(np.asarray(bad["conformer_pocket"].y.coords)).all()
    state, m = ts(state, [bad])
    assert not bool(m["finite"])
    assert state_leaves_equal(before, state)  # step, params, stats, optimizer: all untouched


@pytest.mark.slow
def test_compiles_grow_with_sum_of_shapes_not_product():
    mesh, model, ts = _setup()
    state = ts.init_state(model)
    base = _micro(mesh, 1)[0]

    def widen(side, extra):
        # Every array of a text or atoms batch is [B, L, ...]: pad L.
        return jax.tree.map(lambda a: jnp.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2)), side)

    # Two text lengths for graph_text and two pocket sizes for conformer_pocket: 2 x 2 shape
    # combinations, but only 2 + 2 per-pair programs (+1 each for the two unchanged pairs).
    for t_extra in (0, 8):
        for p_extra in (0, 8):
            b = dict(base)
            b["graph_text"] = b["graph_text"]._replace(y=widen(b["graph_text"].y, t_extra))
            b["conformer_pocket"] = b["conformer_pocket"]._replace(y=widen(b["conformer_pocket"].y, p_extra))
            state, m = ts(state, [b])
            assert bool(m["finite"])
    sizes = {p: ts.grad_fn(p)._cache_size() for p in PAIRS}
    assert sizes == {"graph_text": 2, "conformer_text": 1, "graph_conformer": 1, "conformer_pocket": 2}
    assert ts._update._cache_size() == 1


def test_synthetic_batches_follow_the_design_layout():
    mesh = sharding.make_mesh(4)
    it = train_inputs.micro_batches(_config(16), split="train", start=5, train=True, text_vocab=128, mesh=mesh)
    b = next(it)
    g = b["graph_text"]
    assert isinstance(g, PairBatch) and isinstance(g.x, GraphBatch) and isinstance(g.y, TextBatch)
    assert g.x.nodes.shape[0] == 4 and g.x.n_node.shape == (4, 16 // 4 + 1)
    assert (g.x.n_node.sum(1) == g.x.nodes.shape[1]).all()
    assert (g.x.n_edge.sum(1) == g.x.senders.shape[1]).all()
    assert g.y.ids.shape[0] == 16 and g.mask.all()
    assert isinstance(b["conformer_pocket"].y, AtomsBatch) and b["conformer_pocket"].y.tokens.shape[1] % 8 == 0
    # Resumable: micro-step 5 from a fresh iterator is the same batch.
    again = next(train_inputs.micro_batches(_config(16), split="train", start=5, train=True, text_vocab=128,
                                            mesh=mesh))
    assert set(again) == set(b) == set(PAIRS)
    assert all(jax.tree.all(jax.tree.map(np.array_equal, b[p], again[p])) for p in b)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_pair_batch_size_and_pair_every_reach_the_step():
    mesh = sharding.make_mesh(2)
    c = _config(8)
    c.pair_batch_size = {"graph_conformer": 24, "graph_text": 0}  # 0 = batch_size
    c.pair_every = {"conformer_pocket": 2}
    assert train_inputs.pair_batch_sizes(c) == {"graph_text": 8, "conformer_text": 8, "graph_conformer": 24,
                                                "conformer_pocket": 8}
    steps = [next(train_inputs.micro_batches(c, split="train", start=s, train=True, text_vocab=128, mesh=mesh))
             for s in range(4)]
    assert [("conformer_pocket" in b) for b in steps] == [False, True, False, True]
    assert all(b["graph_conformer"].mask.shape == (24,) for b in steps)
    mesh, model, ts = _setup()
    state, m = ts(ts.init_state(model), [{p: train_inputs.to_global(x, mesh) for p, x in steps[0].items()}])
    assert "loss/conformer_pocket" not in m and bool(m["finite"])
    np.testing.assert_allclose(float(m["loss"]), 0.25 * sum(float(m[f"loss/{p}"]) for p in
                                                            ("graph_text", "conformer_text", "graph_conformer")),
                               rtol=1e-6)
    # Two micro-batches, conformer_pocket in the second only: its logged loss is that batch's
    # loss (not halved), and the total is the objective, the weighted sum averaged over both.
    mesh, model, ts = _setup()
    state = ts.init_state(model)
    micro = [{p: train_inputs.to_global(x, mesh) for p, x in b.items()} for b in steps[:2]]
    ref = {(p, i): float(ts.grad_fn(p)(state["trainable"], state["batch_stats"], b[p], state["step"], i)[0])
           for i, b in enumerate(micro) for p in b}
    state, m = ts(state, micro)
    np.testing.assert_allclose(float(m["loss/conformer_pocket"]), ref["conformer_pocket", 1], rtol=1e-6)
    np.testing.assert_allclose(float(m["loss/graph_text"]), (ref["graph_text", 0] + ref["graph_text", 1]) / 2,
                               rtol=1e-6)
    np.testing.assert_allclose(float(m["loss"]), 0.25 * sum(ref.values()) / 2, rtol=1e-6)
    c.pair_batch_size = {"graph_conformer": 12}
    with pytest.raises(ValueError, match=r"pair_batch_size\[graph_conformer\] 12 must be divisible by 8"):
        next(train_inputs.micro_batches(c, split="train", start=0, train=True, text_vocab=128, mesh=mesh))


def test_pair_every_warns_when_logged_steps_miss_a_pair():
    from molbind_jax.training import train

    cfg = smoke_config(log_every=5)
    assert train.pair_every_log_warning(cfg) is None  # smoke trains every pair on every step
    cfg.pair_every.conformer_pocket = 2
    assert "conformer_pocket" in train.pair_every_log_warning(cfg)
    cfg.log_every = 10
    assert train.pair_every_log_warning(cfg) is None
    cfg.log_every, cfg.accumulate_steps = 5, 2
    assert train.pair_every_log_warning(cfg) is None


# ----------------------------------------------------------------------------------------------
# The real launcher, in process, on the tiny MolBind and synthetic pairs (mini.py:smoke).

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from molbind_jax.training import train

    workdir = str(tmp_path_factory.mktemp("smoke") / "run")
    cfg = smoke_config(total_steps=6, log_every=1, eval_every=3, eval_batches=1, checkpoint_every=4)
    summary = train.train_and_evaluate(cfg, workdir)
    return workdir, cfg, summary


@pytest.mark.slow
def test_smoke_run_writes_metrics_evals_checkpoints(smoke_run):
    from molbind_jax.training.checkpoints import Checkpointer
    from molbind_jax.training.metric_writer import read_metrics

    workdir, cfg, summary = smoke_run
    recs = read_metrics(workdir)
    train_recs = [r for r in recs if not r.get("eval")]
    evals = [r for r in recs if r.get("eval")]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    for r in train_recs:
        assert np.isfinite(r["loss"]) and r["learning_rate"] > 0 and r["steps_per_sec"] > 0
        np.testing.assert_allclose(r["loss"], 0.25 * sum(r[f"loss/{p}"] for p in PAIRS), rtol=1e-5)
        assert r["temperature/graph_text"] == pytest.approx(0.1)
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0.0 <= evals[-1][f"r1/{p}"] <= 1.0 and evals[-1][f"n/{p}"] == 16 for p in PAIRS)
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    ck = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ck.all_steps() == [4, 6]
    assert ck.restore_meta()["input_position"] == 6
    ck.close()
    with open(os.path.join(workdir, "train_summary.json")) as f:
        s = json.load(f)
    assert s["steps_run"] == 6 and s["mean_step_time_s"] > 0 and set(s["final_eval"]) >= {f"r1/{p}" for p in PAIRS}
    with open(os.path.join(workdir, "config.json")) as f:
        run = json.load(f)
    assert run["model"]["embed_dim"] == 16
    assert run["text_dir"] == "" and run["train"]["init"]["scratch"] == ["text", "graph", "conformer", "pocket"]


@pytest.mark.slow
def test_export_round_trip_reproduces_embeddings(smoke_run, tmp_path):
    from molbind_jax.inference import export_reader
    from molbind_jax.training import export, train
    from molbind_jax.training.checkpoints import Checkpointer
    from molbind_jax.models.molbind import MolBind, MolBindConfig

    workdir, cfg, _ = smoke_run
    out = export.export_run(workdir, str(tmp_path / "export"))
    assert sorted(os.listdir(out)) == ["config.json", "dictionaries", "state", "tokenizer"]
    model, mcfg, tok = export_reader.load_export(out)
    assert isinstance(model, MolBind) and isinstance(mcfg, MolBindConfig) and mcfg.embed_dim == 16
    assert tok("a benzene ring")["input_ids"][0] == tok.cls_token_id

    # The trained state, straight from the run's last checkpoint, through the train step.
    mesh = sharding.make_mesh(1)
    ref_model, _, _ = train.build_model(cfg)
    opts = train.step_options(cfg)
    labels = param_labels(init_trainable(ref_model, opts), ())
    ts = TrainStep(ref_model, make_optimizer(train.make_schedule(cfg), labels=labels), mesh, opts)
    ck = Checkpointer(os.path.join(workdir, "checkpoints"))
    state, _ = ck.restore(ts.init_state(ref_model))
    ck.close()
    batches = next(train_inputs.micro_batches(cfg, split="validation", start=0, train=False,
                                              text_vocab=mcfg.bert.vocab_size, mesh=mesh))
    trained_params = jax.tree.leaves(state["trainable"]["model"])
    assert not all(np.array_equal(a, b) for a, b in
                   zip(trained_params, jax.tree.leaves(nnx.state(ref_model, nnx.Param))))  # it trained
    for pair in PAIRS:
        want = ts.eval_embeddings(state, pair, batches[pair])
        got = model.pair_embeddings(pair, batches[pair], train=False)
        for w, g in zip(want[:2], got[:2]):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)
