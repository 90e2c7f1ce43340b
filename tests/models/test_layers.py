"""Shared tower pieces (`models/layers.py`): the lean softmax and attention gradients equal
autodiff's, the dropout masks (rate, independence, determinism, threefry = nnx.Dropout), and
the layer stack (stacking keeps each layer's initial values, scan == a Python loop)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from molbind_jax.models import layers


def _plain_softmax(x):
    return layers._softmax(x)  # the same forward, differentiated by autodiff


def _logits(seed=0, shape=(2, 3, 5, 7)):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3
    x[0, :, :, 5:] = -np.inf  # padded key columns
    x[1, 2, 4, :] = -np.inf  # a row whose keys are all padding
    return jnp.asarray(x)


def test_safe_softmax_values_and_custom_gradient_equal_autodiff():
    x = _logits()
    p = layers.safe_softmax(x)
    assert np.isfinite(np.asarray(p)).all()
    np.testing.assert_array_equal(np.asarray(p[1, 2, 4]), 0.0)  # all -inf row: zeros, not NaN
    np.testing.assert_allclose(np.asarray(p[0, 0, 0, :5]), np.asarray(jax.nn.softmax(x[0, 0, 0, :5])), rtol=1e-6)
    w = jnp.asarray(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))
    got = jax.jit(jax.grad(lambda t: jnp.sum(layers.safe_softmax(t) * w)))(x)
    want = jax.jit(jax.grad(lambda t: jnp.sum(_plain_softmax(t) * w)))(x)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(got)).max() > 1e-3  # a real gradient, not zeros on both sides


def _spelled_out_attention(q, k, v, bias, key, rate, impl):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
    p = layers.dropout(_plain_softmax(logits), rate, key, impl=impl)
    return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v), logits


@pytest.mark.parametrize("rate,impl,bias_heads", [
    (0.0, "hash", 3), (0.3, "hash", 1),
    pytest.param(0.3, "threefry", 3, marks=pytest.mark.slow),  # threefry programs compile for seconds
])
def test_attention_custom_gradient_equals_autodiff(rate, impl, bias_heads):
    rng = np.random.default_rng(2)
    b, n, h, d = 2, 7, 3, 4
    q, k, v = (jnp.asarray(rng.normal(size=(b, n, h, d)).astype(np.float32)) for _ in range(3))
    bias = np.asarray(rng.normal(size=(b, bias_heads, n, n)).astype(np.float32))
    bias[0, :, :, 5:] = -np.inf
    bias = jnp.asarray(bias)
    key = jax.random.key(4) if rate else None
    wo = jnp.asarray(rng.normal(size=(b, n, h, d)).astype(np.float32))
    wl = jnp.asarray(rng.normal(size=(b, h, n, n)).astype(np.float32))

    def loss(fn):
        def f(q, k, v, bias):
            o, logits = fn(q, k, v, bias)
            # The logits feed the next layer in Uni-Mol: their gradient path is tested too.
            return jnp.sum(o * wo) + jnp.sum(jnp.where(jnp.isfinite(logits), logits * wl, 0.0))
        return f

    ours = lambda q, k, v, bias: layers.attention(q, k, v, bias, dropout_rate=rate, key=key, impl=impl)
    ref = lambda q, k, v, bias: _spelled_out_attention(q, k, v, bias, key, rate, impl)
    o1, l1 = jax.jit(ours)(q, k, v, bias)
    o2, l2 = jax.jit(ref)(q, k, v, bias)
    np.testing.assert_allclose(np.asarray(o1), np.asarray(o2), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(l1), np.asarray(l2))
    g1 = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2, 3)))(q, k, v, bias)
    g2 = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2, 3)))(q, k, v, bias)
    for a, e in zip(g1, g2):
        assert a.shape == e.shape
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------------------ dropout
def test_hash_mask_rate_determinism_and_independence():
    shape, rate = (64, 4096), 0.1
    k1, k2 = jax.random.key(0), jax.random.key(1)
    m1 = np.asarray(layers.keep_mask(k1, shape, rate))
    np.testing.assert_array_equal(m1, np.asarray(layers.keep_mask(k1, shape, rate)))  # a function of the key
    n = m1.size
    sd = np.sqrt(0.9 * 0.1 / n)
    assert abs(m1.mean() - 0.9) < 5 * sd
    m2 = np.asarray(layers.keep_mask(k2, shape, rate))
    assert not np.array_equal(m1, m2)
    # Two keys: as independent masks would be (agreement 0.9^2 + 0.1^2 = 0.82).
    assert abs((m1 == m2).mean() - 0.82) < 5 * np.sqrt(0.82 * 0.18 / n)
    # Neighbouring elements (in the flat counter) are uncorrelated.
    flat = m1.reshape(-1).astype(np.float64)
    for lag in (1, 2, 4096):
        c = np.corrcoef(flat[:-lag], flat[lag:])[0, 1]
        assert abs(c) < 5 / np.sqrt(n), (lag, c)
    # A key folded in per layer (as the towers do) gives different masks per layer.
    m3 = np.asarray(layers.keep_mask(jax.random.fold_in(k1, 1), shape, rate))
    assert abs((m1 == m3).mean() - 0.82) < 5 * np.sqrt(0.82 * 0.18 / n)


def test_dropout_scales_and_threefry_matches_nnx_dropout():
    x = jnp.ones((8, 300), jnp.float32)
    key = jax.random.key(3)
    y = np.asarray(layers.dropout(x, 0.25, key))
    assert set(np.unique(y).tolist()) <= {0.0, np.float32(1 / 0.75)}
    assert layers.dropout(x, 0.25, None) is x  # eval mode
    np.testing.assert_array_equal(np.asarray(layers.dropout(x, 1.0, key)), 0.0)
    ref = nnx.Dropout(0.25, rngs=nnx.Rngs(0))(x, deterministic=False, rngs=key)
    np.testing.assert_array_equal(np.asarray(layers.dropout(x, 0.25, key, impl="threefry")), np.asarray(ref))
    with pytest.raises(ValueError, match="dropout_rng"):
        layers.dropout(x, 0.25, key, impl="mt19937")


def test_dropout_module_train_flag_and_fresh_masks():
    d = layers.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    x = jnp.ones((4, 64))
    assert d(x, train=False) is x
    a, b = np.asarray(d(x, train=True)), np.asarray(d(x, train=True))
    assert not np.array_equal(a, b)  # the stream advances per call


# ------------------------------------------------------------------------------ layer stacks
class _Layer(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(6, 6, rngs=rngs)

    def __call__(self, x, key):
        return jnp.tanh(self.lin(x)) + layers.dropout(x, 0.5, key)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_stack_keeps_the_initial_values_of_a_layer_list_and_scan_equals_a_loop():
    rngs_a, rngs_b = nnx.Rngs(7), nnx.Rngs(7)
    listed = [_Layer(rngs_a) for _ in range(3)]
    stack = layers.stack_layers(lambda: _Layer(rngs_b), 3)
    assert stack.lin.kernel[...].shape == (3, 6, 6) and layers.num_stacked(stack) == 3
    for i, layer in enumerate(listed):
        np.testing.assert_array_equal(np.asarray(layers.layer_slice(stack, i).lin.kernel[...]),
                                      np.asarray(layer.lin.kernel[...]))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32))
    keys = jax.random.split(jax.random.key(1), 3)
    want = x
    for i, layer in enumerate(listed):
        want = layer(want, keys[i])
    for remat in ("none", "full", "dots"):
        got = layers.scan_layers(stack, lambda layer, c, k: layer(c, k), x, keys, remat=remat)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="remat"):
        layers.check_remat("some")


# ------------------------------------------------------------------------------ re-seeding
def _stream_keys(rest):
    leaves = jax.tree_util.tree_flatten_with_path(rest, is_leaf=lambda v: isinstance(v, nnx.RngKey))[0]
    return {jax.tree_util.keystr(p): tuple(np.asarray(jax.random.key_data(v[...])).tolist())
            for p, v in leaves if isinstance(v, nnx.RngKey)}


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_reseeded_dropout_is_a_function_of_the_step_key_and_distinct_per_stream():
    """What an exact resume rests on: the train step re-derives every dropout stream from the
    step key (`train_step.reseed_state`); each stream (tower) gets its own key, and the same
    key gives bit-identical train-mode outputs, another key other masks."""
    from molbind_jax.models.molbind import MolBind, MolBindConfig
    from molbind_jax.models.unimol import UniMolConfig, UniMolEncoder
    from molbind_jax.training.train_step import reseed_state

    model = nnx.eval_shape(lambda: MolBind(MolBindConfig.tiny(), rngs=nnx.Rngs(0)))  # no weights needed
    _, _, rest = nnx.split(model, nnx.Param, ...)
    a, b, c = (_stream_keys(reseed_state(rest, jax.random.key(s))) for s in (5, 5, 6))
    assert len(a) == 4 and len(set(a.values())) == 4  # text, graph, conformer, pocket streams
    assert a == b and all(a[k] != c[k] for k in a)

    enc = UniMolEncoder(UniMolConfig.tiny(), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
    tokens = jnp.asarray([[1, 5, 6, 7, 2, 0, 0, 0], [1, 8, 9, 2, 0, 0, 0, 0]])
    dist = jnp.asarray(np.random.default_rng(0).uniform(0, 3, (2, 8, 8)).astype(np.float32))

    @jax.jit
    def forward(params, rest, key):
        m = nnx.merge(graphdef, *jax.tree.map(lambda x: x, (params, reseed_state(rest, key))))
        return m(tokens, dist, tokens[:, :, None] * 31 + tokens[:, None, :], train=True)

    y1, y2, y3 = (np.asarray(forward(params, rest, jax.random.key(s))) for s in (1, 1, 2))
    np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(y1, y3)
