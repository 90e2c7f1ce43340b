"""The duplicate-aware InfoNCE: rows holding the same molecule, text or protein are not
negatives of each other (losses.py), the identity keys collate_pair puts in a PairBatch, and
the config flag down to the train step.

References are numpy, written from the rule (column j != i leaves anchor i's softmax when
x_key[j] == x_key[i] or y_key[j] == y_key[i]), with the allowed columns listed by hand where
the batch is small enough.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from molbind_data import schema
from molbind_jax.data import synthetic
from molbind_jax.data.batching import collate_pair
from molbind_jax.modalities.base import NO_KEY, identity_key
from molbind_jax.modalities import spec
from molbind_jax.training import losses, loop_parts, sharding, train_inputs
from molbind_jax.training.objective import objective
from molbind_jax.training.train_step import StepOptions, TrainStep, init_trainable, make_optimizer, param_labels

TAU = 0.1


def embeddings(batch, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim)).astype(np.float32)
    y = (0.3 * x + rng.normal(size=(batch, dim))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y


def ce(logits_row, i, allowed):
    """-log softmax of column i over the allowed columns (float64)."""
    z = np.asarray(logits_row, np.float64)[list(allowed)]
    return float(np.log(np.exp(z - z.max()).sum()) + z.max() - logits_row[i])


def reference(x, y, allowed, valid, tau=TAU):
    """Symmetric loss from per-anchor allowed column sets (the same sets in both directions)."""
    s = x.astype(np.float64) @ y.astype(np.float64).T / tau
    rows = [i for i in range(len(x)) if valid[i]]
    l_xy = np.mean([ce(s[i], i, allowed[i]) for i in rows])
    l_yx = np.mean([ce(s.T[i], i, allowed[i]) for i in rows])
    return 0.5 * (l_xy + l_yx)


def rule_allowed(kx, ky, mask):
    """The rule, written directly: the allowed column set of every anchor."""
    n = len(kx)
    return [{j for j in range(n) if mask[j] and (j == i or not (
        (kx[j] == kx[i] and kx[i] >= 0) or (ky[j] == ky[i] and ky[i] >= 0)))} for i in range(n)]


@pytest.fixture(scope="module")
def mesh8():
    assert jax.device_count() >= 8, "tests/conftest.py should simulate 8 CPU devices"
    return sharding.make_mesh(8)


# ----------------------------------------------------------------------------- the loss

@pytest.mark.parametrize("chunk_size", [None, 3])
def test_hand_made_duplicates(chunk_size):
    # rows 0 and 1: the same molecule (x), different texts; rows 2 and 3: the same protein (y).
    x, y = embeddings(4)
    kx, ky = np.array([10, 10, 11, 12]), np.array([20, 21, 22, 22])
    allowed = [{0, 2, 3}, {1, 2, 3}, {0, 1, 2}, {0, 1, 3}]  # by hand
    assert allowed == rule_allowed(kx, ky, np.ones(4, bool))
    want = reference(x, y, allowed, np.ones(4, bool))
    got, aux = losses.pair_infonce(x, y, mesh=None, temperature=TAU, chunk_size=chunk_size, x_key=kx, y_key=ky)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
    plain = reference(x, y, [set(range(4))] * 4, np.ones(4, bool))
    assert abs(want - plain) > 1e-3  # the masking changes the number
    # directions: x->y uses rows of x @ y.T, y->x its transpose, the same allowed sets
    s = x.astype(np.float64) @ y.astype(np.float64).T / TAU
    np.testing.assert_allclose(float(aux["loss_xy"]), np.mean([ce(s[i], i, allowed[i]) for i in range(4)]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(aux["loss_yx"]), np.mean([ce(s.T[i], i, allowed[i]) for i in range(4)]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_padding_rows_match_nothing_and_are_no_anchors(chunk_size):
    x, y = embeddings(12, seed=1)
    kx = np.array([1, 1, 2, 3, 4, 5, 6, 7, 1, 1, -1, -1])
    ky = np.array([9, 8, 9, 7, 6, 5, 4, 3, 9, 9, -1, -1])
    mask = np.ones(12, bool)
    mask[8:] = False  # padding rows, two of them with real keys equal to row 0's
    want = reference(x, y, rule_allowed(kx, ky, mask), mask)
    got, aux = losses.pair_infonce(x, y, mask, mesh=None, temperature=TAU, chunk_size=chunk_size, x_key=kx, y_key=ky)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
    assert float(aux["num_valid"]) == 8
    # the loss of the 8 real rows alone, with their keys
    alone, _ = losses.pair_infonce(x[:8], y[:8], mesh=None, temperature=TAU, x_key=kx[:8], y_key=ky[:8])
    np.testing.assert_allclose(float(got), float(alone), rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_no_duplicates_equals_the_plain_loss(chunk_size):
    x, y = embeddings(16, seed=2)
    mask = np.arange(16) % 5 != 4
    kx, ky = np.arange(16) * 3 + 1, np.arange(16) * 7 + 2
    kx[3] = ky[5] = NO_KEY  # unknown identities match nothing either
    ky[6] = NO_KEY
    plain, pa = losses.pair_infonce(x, y, mask, mesh=None, temperature=TAU, chunk_size=chunk_size)
    dup, da = losses.pair_infonce(x, y, mask, mesh=None, temperature=TAU, chunk_size=chunk_size, x_key=kx, y_key=ky)
    assert abs(float(plain) - float(dup)) <= 1e-6 * abs(float(plain))
    for k in pa:
        np.testing.assert_allclose(np.asarray(da[k]), np.asarray(pa[k]), rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("gather_gradient", [True, False])
def test_all_rows_share_a_key_keeps_the_positive(chunk_size, gather_gradient):
    x, y = embeddings(8, seed=3)
    same = np.zeros(8, np.int32) + 5
    mask = np.ones(8, bool)
    mask[-1] = False

    def f(a, b):
        return losses.pair_infonce(a, b, mask, mesh=None, temperature=TAU, chunk_size=chunk_size,
                                   gather_gradient=gather_gradient, x_key=same, y_key=np.arange(8))[0]

    loss, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, y)
    # each anchor's softmax holds its positive only: -log 1 = 0, and no gradient
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() < 1e-5
    _, aux = losses.pair_infonce(x, y, mask, mesh=None, temperature=TAU, x_key=same, y_key=same)
    assert float(aux["accuracy_xy"]) == 1.0 and float(aux["accuracy_yx"]) == 1.0


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_gradients_finite_and_match_the_reference(chunk_size):
    x, y = embeddings(6, seed=4)
    kx, ky = np.array([0, 0, 0, 1, 2, 2]), np.array([3, 4, 5, 5, 6, 7])
    mask = np.array([1, 1, 1, 1, 1, 0], bool)
    allowed = rule_allowed(kx, ky, mask)
    cols = np.zeros((6, 6), bool)
    for i, a in enumerate(allowed):
        cols[i, list(a)] = True

    def ref(a, b):  # dense jnp reference from the allowed sets
        s = a @ b.T / TAU
        z = jnp.where(cols, s, -jnp.inf)
        lxy = jax.nn.logsumexp(z, axis=1) - jnp.diag(s)
        lyx = jax.nn.logsumexp(jnp.where(cols, s.T, -jnp.inf), axis=1) - jnp.diag(s)
        m = jnp.asarray(mask, jnp.float32)
        return 0.5 * (jnp.sum(lxy * m) + jnp.sum(lyx * m)) / m.sum()

    def f(a, b):
        return losses.pair_infonce(a, b, mask, mesh=None, temperature=TAU, chunk_size=chunk_size,
                                   x_key=kx, y_key=ky)[0]

    got, g = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, y)
    want, gw = jax.jit(jax.value_and_grad(ref, argnums=(0, 1)))(x, y)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for a, b in zip(g, gw):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_keys_both_or_neither_and_shapes():
    x, y = embeddings(4)
    with pytest.raises(ValueError, match="both identity keys"):
        losses.pair_infonce(x, y, mesh=None, x_key=np.arange(4))
    with pytest.raises(ValueError, match="x_key and y_key must have shape"):
        losses.pair_infonce(x, y, mesh=None, x_key=np.arange(3), y_key=np.arange(3))


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_eight_devices_equal_one(mesh8, chunk_size):
    """Keys are gathered like the embeddings: the masked set, the loss and the gradients do not
    depend on the device count, with and without gradients through the gather."""
    x, y = embeddings(32, dim=8, seed=5)
    rng = np.random.default_rng(6)
    kx, ky = rng.integers(0, 9, 32), rng.integers(0, 5, 32)  # many duplicates, across devices
    mask = np.ones(32, bool)
    mask[[7, 30, 31]] = False
    mesh1 = sharding.make_mesh(1)
    want_value = reference(x, y, rule_allowed(kx, ky, mask), mask)
    for gather_gradient in (True, False):
        out = {}
        for name, mesh in (("one", mesh1), ("eight", mesh8)):
            s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
            args = [jax.device_put(a, s) for a in (x, y, mask, kx.astype(np.int32), ky.astype(np.int32))]

            def f(a, b, m, k1, k2):
                return losses.pair_infonce(a, b, m, mesh=mesh, temperature=TAU, chunk_size=chunk_size,
                                           gather_gradient=gather_gradient, x_key=k1, y_key=k2)[0]

            out[name] = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(*args)
        (v1, g1), (v8, g8) = out["one"], out["eight"]
        np.testing.assert_allclose(float(v8), float(v1), rtol=1e-6)
        np.testing.assert_allclose(float(v1), want_value, rtol=1e-5)
        for a, b in zip(g8, g1):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- the keys

def _pocket_record(i, smiles, target, rid=None):
    r = synthetic.record("conformer_pocket", i, text_vocab=64)
    r.update(smiles=smiles, target=target)
    if rid is not None:
        r["id"] = rid
    return r


def test_collate_pair_fills_identity_keys():
    recs = [_pocket_record(0, "CCO", "P1"), _pocket_record(1, "CCN", b"P1"), _pocket_record(2, b"CCO", "P2"),
            _pocket_record(3, "", "", rid="r3"), _pocket_record(4, "", "", rid="")]
    b = collate_pair("conformer_pocket", recs, batch_size=8, pair_mask=[1, 1, 1, 1, 0])
    assert b.x_key.dtype == np.int32 and b.x_key.shape == b.y_key.shape == (8,)
    assert b.x_key[0] == b.x_key[2] == identity_key("CCO") and b.x_key[1] != b.x_key[0]
    assert b.y_key[0] == b.y_key[1] == identity_key("P1") and b.y_key[2] != b.y_key[0]
    assert b.x_key[3] == identity_key("id:r3") >= 0  # no identity: the record id (unique)
    assert list(b.x_key[4:]) == [NO_KEY] * 4 and list(b.y_key[4:]) == [NO_KEY] * 4  # masked, padding
    assert (b.x_key[:4] >= 0).all()
    # a record with neither identity nor id matches nothing
    assert spec("conformer").identity_key({"smiles": "", "id": ""}) == NO_KEY


def test_text_keys_fold_case_and_whitespace():
    t = spec("text")
    assert t.identity_key({"text": "A  benzene\nring "}) == t.identity_key({"text": "a benzene ring"})
    assert t.identity_key({"text": "a benzene ring"}) != t.identity_key({"text": "a benzene rings"})
    assert 0 <= identity_key("x") < 2 ** 31 and identity_key("x") == identity_key("x")


# ----------------------------------------------------------------------------- the flag

def test_config_flag_reaches_the_step_options():
    import importlib.util
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")
    loaded = {}
    for name in ("common", "m4"):
        s = importlib.util.spec_from_file_location(f"_cfg_{name}", os.path.join(root, f"{name}.py"))
        loaded[name] = importlib.util.module_from_spec(s)
        s.loader.exec_module(loaded[name])
    assert loop_parts.step_options(loaded["common"].base_config()).duplicate_aware is True
    assert loop_parts.step_options(loaded["m4"].get_config("")).duplicate_aware is True
    assert loop_parts.step_options(loaded["m4"].get_config("parity")).duplicate_aware is False


PAIR = "conformer_pocket"


class AtomsBind(nnx.Module):
    """The MolBind interface for one pair type in a few parameters."""

    def __init__(self, rngs):
        self.conformer = nnx.Linear(4, 8, rngs=rngs)
        self.pocket = nnx.Linear(4, 8, rngs=rngs)

    def _embed(self, lin, b):
        feat = jnp.concatenate([b.coords, b.tokens[..., None].astype(jnp.float32) / 10], -1)
        m = (b.tokens > 0)[..., None]
        h = (lin(feat) * m).sum(1) / m.sum(1)
        return h / jnp.linalg.norm(h, axis=-1, keepdims=True)

    def pair_embeddings(self, pair, batch, *, train):
        return self._embed(self.conformer, batch.x), self._embed(self.pocket, batch.y), batch.mask


def test_train_step_loss_follows_the_flag():
    """Pockets of 2 proteins over 8 rows (2 devices): the step's loss is the duplicate-aware
    loss of the batch's keys with the flag on and the plain loss with it off."""
    mesh = sharding.make_mesh(2)
    recs = [_pocket_record(i, f"L{i}", f"P{i % 2}") for i in range(8)]
    host = collate_pair(PAIR, recs, num_shards=2)
    assert len(set(host.y_key.tolist())) == 2
    batch = train_inputs.to_global(host, mesh)
    model = AtomsBind(nnx.Rngs(0))
    x, y, mask = model.pair_embeddings(PAIR, batch, train=True)
    loss = jax.jit(lambda a, b, m, kx, ky: losses.pair_infonce(a, b, m, mesh=None, x_key=kx, y_key=ky)[0])
    want = {True: float(loss(x, y, mask, host.x_key, host.y_key)),
            False: float(jax.jit(lambda a, b, m: losses.pair_infonce(a, b, m, mesh=None)[0])(x, y, mask))}
    assert want[True] < want[False] - 1e-3  # 3 same-protein negatives gone per row
    for flag in (True, False):
        model = AtomsBind(nnx.Rngs(0))  # the step donates its state: a fresh model each time
        opts = StepOptions(pairs=(PAIR,), weights={PAIR: 1.0}, duplicate_aware=flag)
        tx = make_optimizer(optax.constant_schedule(1e-3), labels=param_labels(init_trainable(model, opts), ()))
        ts = TrainStep(model, tx, mesh, opts)
        _, metrics = ts(ts.init_state(model), [{PAIR: batch}])
        np.testing.assert_allclose(float(metrics[f"loss/{PAIR}"]), want[flag], rtol=1e-6)


def test_objective_passes_the_keys_by_the_flag(monkeypatch):
    seen = {}

    def fake(embeddings, weights, temperatures, *, mesh, gather_gradient, chunk_size, keys):
        seen.update(keys)
        return 0.0, {}

    monkeypatch.setattr(losses, "molbind_loss", fake)
    b = collate_pair(PAIR, [_pocket_record(i, "L", f"P{i}") for i in range(2)])
    model = AtomsBind(nnx.Rngs(0))
    objective(model, {PAIR: b})
    assert seen[PAIR][0] is b.x_key and seen[PAIR][1] is b.y_key
    objective(model, {PAIR: b}, duplicate_aware=False)
    assert seen[PAIR] == (None, None)
    objective(model, {PAIR: b._replace(x_key=None, y_key=None)})  # a batch without keys: plain
    assert seen[PAIR] == (None, None)
