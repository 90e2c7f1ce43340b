"""Frozen towers live outside the trainable state (issue 14).

`StepOptions.frozen` towers sit in `state["frozen"]`: no per-pair gradient leaf, no optimizer
state, never updated. Checked against the formulation before the change (every parameter
trainable, the frozen ones behind stop_gradient with a zero update), computed here, and the
conversion of a checkpoint written in that older layout. On the toy model of test_train.py.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from molbind_jax.training import sharding
from molbind_jax.training.checkpoints import CheckpointMismatchError, Checkpointer
from molbind_jax.training.train_step import (StepOptions, TrainStep, init_trainable, make_optimizer, param_labels,
                                             state_leaves_equal)
from test_train import PAIRS, ToyBind, _micro

FROZEN = ("text_encoder",)
LR = 1e-2


def _paths(tree) -> list[str]:
    return ["/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


class OffsetToy(ToyBind):
    """ToyBind with coordinates off-centre: the synthetic conformers are centred, so the
    mean-pooled tower's kernel rows for x, y, z would get gradients of pure round-off, which
    Adam's first steps (g / (|g| + eps)) blow up to O(lr) differences between two equal sums."""

    def _atoms(self, enc, tokens, coords):
        return super()._atoms(enc, tokens, coords + 1.0)


def _step(labels_fn=True, frozen=FROZEN):
    mesh = sharding.make_mesh(2)
    model = OffsetToy(nnx.Rngs(0))
    opts = StepOptions(seed=3, learn_temperature=True, frozen=frozen)
    labels = (functools.partial(param_labels, frozen=frozen) if labels_fn
              else param_labels(init_trainable(model, opts), frozen))
    tx = make_optimizer(optax.constant_schedule(LR), weight_decay=0.05, labels=labels)
    return mesh, model, TrainStep(model, tx, mesh, opts)


def _old_formulation(ts, model, micro_steps):
    """The step as it was before frozen towers left the state: all parameters in
    trainable["model"], per-pair gradients of the full tree with stop_gradient on the frozen
    towers, summed, and AdamW with a zero update for the "frozen" label. Returns the state after
    each micro list of `micro_steps` (old layout)."""
    # Copies: the step under test donates its state, whose first buffers may be the model's.
    params = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    trainable = {"model": params, **{k: v for k, v in init_trainable(model, ts.opts).items() if k != "model"}}
    tx = make_optimizer(optax.constant_schedule(LR), weight_decay=0.05, labels=param_labels(trainable, FROZEN))
    state = {"step": jnp.zeros((), jnp.int32), "trainable": trainable,
             "batch_stats": jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat)), "opt_state": tx.init(trainable)}

    def pair_grad(pair, trainable, stats, batch, step, micro):
        def loss(trainable):
            sg = jax.tree_util.tree_map_with_path(
                lambda path, v: jax.lax.stop_gradient(v) if getattr(path[0], "key", None) in FROZEN else v,
                trainable["model"])
            return ts._pair_loss(pair, {**trainable, "model": sg}, None, stats, ts.rest, batch, step, micro)

        (_, (l, new_stats)), g = jax.value_and_grad(loss, has_aux=True)(trainable)
        return l, g, new_stats

    pair_grad = jax.jit(pair_grad, static_argnums=0)
    out = []
    for micro in micro_steps:
        grads, stats = None, state["batch_stats"]
        for i, batches in enumerate(micro):
            for pair in PAIRS:
                _, g, stats = pair_grad(pair, state["trainable"], stats, batches[pair], state["step"], i)
                grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        grads = jax.tree.map(lambda g: g / len(micro), grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
        state = {"step": state["step"] + 1, "trainable": optax.apply_updates(state["trainable"], updates),
                 "batch_stats": stats, "opt_state": opt_state}
        out.append(state)
    return out


def test_pair_gradient_and_optimizer_state_hold_no_frozen_leaves():
    mesh, model, ts = _step()
    state = ts.init_state(model)
    assert "text_encoder" not in state["trainable"]["model"] and "text_encoder" in state["frozen"]
    n_frozen = sum(x.size for x in jax.tree.leaves(state["frozen"]))
    n_train = sum(x.size for x in jax.tree.leaves(state["trainable"]))
    assert n_frozen == model.text_encoder.embedding.value.size > 0
    batch = _micro(mesh, 1)[0]["graph_text"]
    loss, grads, _ = ts.pair_grad(state, "graph_text", batch)
    assert np.isfinite(float(loss))
    assert not [p for p in _paths(grads) if "text_encoder" in p]
    assert jax.tree.structure(grads) == jax.tree.structure(state["trainable"])
    assert not [p for p in _paths(state["opt_state"]) if "text_encoder" in p]
    # Adam's two moments over the trainable leaves (AdamW for the model, Adam for the
    # temperatures) plus scalar counts: nothing of the size of the frozen table.
    floats = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
    assert 2 * n_train <= floats < 2 * n_train + 16
    # The frozen part must be given when the step has frozen towers.
    with pytest.raises(ValueError, match="frozen"):
        ts.grad_fn("graph_text")(state["trainable"], state["batch_stats"], batch, state["step"], 0)


@pytest.mark.slow
def test_two_steps_equal_old_stop_gradient_formulation_and_legacy_checkpoint_converts(tmp_path):
    mesh, model, ts = _step()
    micro_steps = [_micro(mesh, 1, start=0), _micro(mesh, 1, start=1)]
    ref = _old_formulation(ts, model, micro_steps)[-1]
    template = jax.tree.map(jnp.copy, ts.init_state(model))
    state = ts.init_state(model)
    frozen0 = jax.tree.map(np.asarray, state["frozen"])
    trainable0 = jax.tree.map(np.asarray, state["trainable"])
    for micro in micro_steps:
        state, m = ts(state, micro)
        assert bool(m["finite"])

    assert state_leaves_equal(frozen0, state["frozen"])  # never updated
    assert state_leaves_equal(ref["trainable"]["model"]["text_encoder"], state["frozen"]["text_encoder"])
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(trainable0),
                                                     jax.tree.leaves(state["trainable"]))]
    assert sum(moved) >= len(moved) - 1  # the step did train (the graph BN bias may stay)
    ref_trainable = dict(zip(_paths(ref["trainable"]), jax.tree.leaves(ref["trainable"])))
    for path, a in zip(_paths(state["trainable"]), jax.tree.leaves(state["trainable"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(ref_trainable[path]), rtol=1e-5, atol=1e-7, err_msg=path)
    for a, b in zip(jax.tree.leaves(state["opt_state"]), jax.tree.leaves(ref["opt_state"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)

    # A checkpoint in the old layout: refused (not moved aside as damage) without a conversion,
    # converted to the new layout with it.
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(2, ref, {"step": 2}, force=True)
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))  # a fresh reader, as a resumed process has
    with pytest.raises(CheckpointMismatchError, match="older state layout"):
        ckpt.restore_intact(template)
    assert ckpt.all_steps() == [2]
    step, restored, _ = ckpt.restore_intact(template, legacy=ts.legacy_layout)
    assert step == 2 and set(restored) == set(state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # ... and trains on from it.
    nxt, m = ts(restored, _micro(mesh, 1, start=2))
    assert bool(m["finite"]) and int(nxt["step"]) == 3
    # An optimizer built with a label tree cannot label the old layout: a clear refusal.
    _, model2, ts_tree = _step(labels_fn=False)
    with pytest.raises(CheckpointMismatchError, match="labels=functools.partial"):
        ckpt.restore_intact(ts_tree.init_state(model2), legacy=ts_tree.legacy_layout)
    assert ckpt.all_steps() == [2]
    ckpt.close()


@pytest.mark.slow
def test_fused_step_with_frozen_towers_equals_split_step():
    mesh, model, ts = _step()
    micro = _micro(mesh, 2)
    state0 = jax.tree.map(jnp.copy, ts.init_state(model))
    split, m1 = ts(jax.tree.map(jnp.copy, state0), micro)
    ts.opts.fused = True
    fused, m2 = ts(jax.tree.map(jnp.copy, state0), micro)
    assert set(fused) == set(split) and "frozen" in fused
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(split)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert state_leaves_equal(fused["frozen"], state0["frozen"])
