"""The optimised train step computes the stated objective (molbind_jax/training/objective.py).

One update of `TrainStep` (per-pair jitted gradients summed, then the optimizer; and the fused
single program) on the tiny MolBind without dropout, one micro-batch of each of the four pair
types, must give the loss, the parameter gradient, the update and the BatchNorm statistics of
`jax.value_and_grad` of the plain `objective` on one device over the whole batch, whether the
step runs on one device or on eight (rows and graph shards split over "data").

The gradient the step used is read back from the optimizer state: `optax.sgd(lr, momentum)`
keeps it as the momentum trace after the first update (trace = g + momentum * 0).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from molbind_jax.data import synthetic
from molbind_jax.models.molbind import MolBind, MolBindConfig
from molbind_jax.training import sharding
from molbind_jax.training.objective import objective
from molbind_jax.training.train_step import StepOptions, TrainStep

PAIRS = ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")
# Unequal weights, so that a pair weighted twice or not at all shows.
WEIGHTS = {"graph_text": 0.25, "conformer_text": 0.5, "graph_conformer": 0.125, "conformer_pocket": 1.0}
LR = 0.5


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def assert_trees_close(got, want, what):
    """max |got - want| / max |want| <= 1e-5 over all leaves; per leaf rtol 1e-4 plus 1e-6 of the
    largest value (analytically zero gradients computed as round-off, see test_molbind.py)."""
    flat_w = jax.tree_util.tree_leaves_with_path(want)
    flat_g = dict(jax.tree_util.tree_leaves_with_path(got))
    assert len(flat_g) == len(flat_w), what
    vec_w = np.concatenate([np.ravel(a) for _, a in flat_w])
    vec_g = np.concatenate([np.ravel(flat_g[p]) for p, _ in flat_w])
    assert rel_err(vec_g, vec_w) <= 1e-5, what
    scale = np.max(np.abs(vec_w))
    for path, a in flat_w:
        a, b = np.asarray(a), np.asarray(flat_g[path])
        assert np.max(np.abs(b - a)) <= 1e-4 * np.max(np.abs(a)) + 1e-6 * scale, (what, jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def setup():
    cfg = MolBindConfig.tiny()
    no_dropout = dict(emb_dropout=0.0, dropout=0.0, attention_dropout=0.0)
    cfg = cfg.replace(conformer=dataclasses.replace(cfg.conformer, **no_dropout),
                      pocket=dataclasses.replace(cfg.pocket, **no_dropout))
    assert cfg.bert.dropout == cfg.bert.attention_dropout == cfg.gin.drop_ratio == 0.0
    model = MolBind(cfg, rngs=nnx.Rngs(0))
    # 16 rows in 8 graph shards; the last two rows of graph_text and the last of conformer_pocket
    # only pad the batch (neither anchors nor negatives).
    batches = {p: synthetic.pair_batch(p, range(16 * i, 16 * i + 16), num_local_shards=8,
                                       text_vocab=cfg.bert.vocab_size) for i, p in enumerate(PAIRS)}
    for pair, n_pad in (("graph_text", 2), ("conformer_pocket", 1)):
        mask = np.ones(16, bool)
        mask[16 - n_pad:] = False
        batches[pair] = batches[pair]._replace(mask=mask)

    # The reference: jax.value_and_grad of the plain objective, one device, no mesh.
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)

    def total(params):
        m = nnx.merge(graphdef, params, stats, rest, copy=True)
        loss, per_pair = objective(m, batches, weights=WEIGHTS, temperatures=0.1, mesh=None)
        return loss, ({p: v[0] for p, v in per_pair.items()}, nnx.state(m, nnx.BatchStat))

    (loss, (per_pair, new_stats)), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    host = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731  (copies the step cannot donate)
    ref = dict(loss=float(loss), per_pair={p: float(v) for p, v in per_pair.items()}, grads=host(grads),
               params=host(params), stats=host(new_stats))
    return model, batches, ref


def _one_step(model, batches, num_devices, fused=False):
    mesh = sharding.make_mesh(num_devices)
    opts = StepOptions(pairs=PAIRS, weights=WEIGHTS, temperature=0.1, seed=0, fused=fused)
    ts = TrainStep(model, optax.sgd(LR, momentum=0.9), mesh, opts)
    # The step donates its state: start from copies, so the model's own arrays stay usable.
    state = jax.tree.map(jnp.copy, ts.init_state(model))
    new, metrics = ts(state, [{p: sharding.global_batch(b, mesh) for p, b in batches.items()}])
    assert bool(metrics["finite"]) and int(new["step"]) == 1
    return new, metrics


def _check(new, metrics, ref):
    np.testing.assert_allclose(float(metrics["loss"]), ref["loss"], rtol=1e-5)
    for p in PAIRS:
        np.testing.assert_allclose(float(metrics[f"loss/{p}"]), ref["per_pair"][p], rtol=1e-5)
    # The gradient the step applied (the momentum trace after one update).
    trace = new["opt_state"][0].trace
    assert set(trace) == {"model"}
    assert_trees_close(trace["model"], ref["grads"], "gradient")
    # The update itself: params - LR * gradient.
    want = jax.tree.map(lambda p, g: p - LR * g, ref["params"], ref["grads"])
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(new["trainable"]["model"])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    assert_trees_close(new["batch_stats"], ref["stats"], "BatchNorm statistics")


@pytest.mark.slow  # compiles the per-pair steps of the tiny MolBind twice (1 and 8 devices)
def test_split_step_is_the_gradient_of_the_objective_on_1_and_8_devices(setup):
    model, batches, ref = setup
    assert ref["loss"] == pytest.approx(sum(WEIGHTS[p] * v for p, v in ref["per_pair"].items()), rel=1e-6)
    assert ref["loss"] > 0 and np.isfinite(ref["loss"])
    # The reference saw every tower: no parameter group has an all-zero gradient.
    for tower in ("text_encoder", "graph_encoder", "conformer_encoder", "pocket_encoder",
                  "text_proj", "graph_proj", "conf_proj", "pro_proj"):
        assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(ref["grads"][tower])), tower
    for n in (1, 8):
        new, metrics = _one_step(model, batches, n)
        _check(new, metrics, ref)


@pytest.mark.slow  # the whole step as one program
def test_fused_step_is_the_gradient_of_the_objective(setup):
    model, batches, ref = setup
    new, metrics = _one_step(model, batches, 8, fused=True)
    _check(new, metrics, ref)


def test_objective_is_the_weighted_sum_of_pair_losses():
    """The plain statement itself, on a stand-in model: weights multiply, absent pairs are not
    summed, and each pair's embeddings come from `pair_embeddings(..., train=True)`."""
    from molbind_jax.training import losses

    rng = np.random.default_rng(0)
    emb = {p: (rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32))
           for p in PAIRS}
    calls = []

    class Stub:
        def pair_embeddings(self, pair, batch, *, train):
            calls.append((pair, batch, train))
            x, y = emb[pair]
            return jnp.asarray(x), jnp.asarray(y), jnp.ones(8, bool)

    batches = {"graph_text": "b0", "conformer_pocket": "b1"}
    total, per_pair = objective(Stub(), batches, weights=WEIGHTS, temperatures=0.1)
    assert calls == [("graph_text", "b0", True), ("conformer_pocket", "b1", True)]
    want = {p: float(losses.pair_infonce(*emb[p], None, mesh=None, temperature=0.1)[0]) for p in batches}
    assert set(per_pair) == set(batches)
    for p in batches:
        assert float(per_pair[p][0]) == pytest.approx(want[p], rel=1e-6)
    assert float(total) == pytest.approx(0.25 * want["graph_text"] + 1.0 * want["conformer_pocket"], rel=1e-6)
