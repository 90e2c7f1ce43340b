"""The sharded InfoNCE against independent single-device references (8 simulated CPU devices).

References are written here from the spec, not from losses.py: a full B x B logits matrix for
the gradient-through-gather loss, and per-rank loops with stop_gradient on the gathered
tensors, averaged over ranks as DDP does, for the original's rule.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from molbind_jax.training import losses
from molbind_jax.training.sharding import make_mesh

TAU = 0.1


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def embeddings(batch=16, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim)).astype(np.float32)
    y = (0.5 * x + rng.normal(size=(batch, dim))).astype(np.float32)  # correlated views
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y


def reference_loss(x, y, mask, tau=TAU):
    """Single-device symmetric InfoNCE, masked rows neither anchors nor negatives."""
    idx = np.flatnonzero(np.asarray(mask))
    xs, ys = x[idx], y[idx]
    logits = xs @ ys.T / tau
    labels = jnp.arange(len(idx))
    ce_xy = -jax.nn.log_softmax(logits, axis=1)[labels, labels]
    ce_yx = -jax.nn.log_softmax(logits.T, axis=1)[labels, labels]
    return 0.5 * (ce_xy.mean() + ce_yx.mean())


def reference_ddp_no_grad_gather(x, y, world, tau=TAU):
    """The original: per-rank loss with no-grad all_gather, gradients averaged over ranks."""
    b = x.shape[0] // world
    x_all, y_all = jax.lax.stop_gradient(x), jax.lax.stop_gradient(y)
    per_rank = []
    for r in range(world):
        xr, yr = x[r * b:(r + 1) * b], y[r * b:(r + 1) * b]
        labels = r * b + jnp.arange(b)
        lx = -jax.nn.log_softmax(xr @ y_all.T / tau, axis=1)[jnp.arange(b), labels].mean()
        ly = -jax.nn.log_softmax(yr @ x_all.T / tau, axis=1)[jnp.arange(b), labels].mean()
        per_rank.append(0.5 * (lx + ly))
    return sum(per_rank) / world  # DDP: average of the ranks' gradients = gradient of the mean


def sharded(mesh, *arrays):
    s = NamedSharding(mesh, P("data"))
    return [jax.device_put(a, s) for a in arrays]


def loss_and_grads(x, y, mask, *, mesh, **kw):
    fn = lambda a, b: losses.pair_infonce(a, b, mask, mesh=mesh, temperature=TAU, **kw)[0]
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(x, y)


@pytest.fixture(scope="module")
def mesh8():
    assert jax.device_count() >= 8, "tests/conftest.py should simulate 8 CPU devices"
    return make_mesh(8)


@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_sharded_loss_and_grads_equal_single_device(mesh8, chunk_size):
    x, y = embeddings(32)
    mask = np.ones(32, bool)
    ref_val, ref_g = jax.value_and_grad(lambda a, b: reference_loss(a, b, mask), argnums=(0, 1))(x, y)
    xs, ys, ms = sharded(mesh8, x, y, mask)
    for mesh, args in ((mesh8, (xs, ys, ms)), (make_mesh(1), (x, y, mask)), (None, (x, y, mask))):
        val, g = loss_and_grads(*args, mesh=mesh, chunk_size=chunk_size)
        assert rel_err(val, ref_val) <= 1e-5
        assert rel_err(g[0], ref_g[0]) <= 1e-5 and rel_err(g[1], ref_g[1]) <= 1e-5


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_no_grad_gather_matches_original_ddp_rule(mesh8):
    x, y = embeddings(32, seed=1)
    mask = np.ones(32, bool)
    ref_val, ref_g = jax.value_and_grad(lambda a, b: reference_ddp_no_grad_gather(a, b, 8), argnums=(0, 1))(x, y)
    for chunk_size in (None, 3):
        val, g = loss_and_grads(*sharded(mesh8, x, y, mask), mesh=mesh8, gather_gradient=False, chunk_size=chunk_size)
        assert rel_err(val, ref_val) <= 1e-5
        assert rel_err(g[0], ref_g[0]) <= 1e-5 and rel_err(g[1], ref_g[1]) <= 1e-5
    # The rule is really different from the full gradient (the flag is not ignored) ...
    _, g_full = loss_and_grads(*sharded(mesh8, x, y, mask), mesh=mesh8)
    assert rel_err(g[0], g_full[0]) > 0.1
    # ... and does not depend on the device count (the same per-anchor rule on 1 device).
    val1, g1 = loss_and_grads(x, y, mask, mesh=None, gather_gradient=False)
    assert rel_err(val1, ref_val) <= 1e-5 and rel_err(g1[0], ref_g[0]) <= 1e-5


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_no_grad_gather_with_masked_rows_is_the_per_anchor_rule(mesh8):
    """With masked rows the compat rule weighs every valid anchor equally (documented)."""
    x, y = embeddings(24, seed=6)
    mask = np.ones(24, bool)
    mask[[0, 1, 2, 20]] = False  # device 0 holds one valid anchor, device 1 three

    def ref(a, b):
        idx = np.flatnonzero(mask)
        a, b = a[idx], b[idx]
        sa, sb = jax.lax.stop_gradient(a), jax.lax.stop_gradient(b)
        lab = jnp.arange(len(idx))
        lx = -jax.nn.log_softmax(a @ sb.T / TAU, axis=1)[lab, lab].mean()
        ly = -jax.nn.log_softmax(b @ sa.T / TAU, axis=1)[lab, lab].mean()
        return 0.5 * (lx + ly)

    ref_val, ref_g = jax.value_and_grad(ref, argnums=(0, 1))(x, y)
    for chunk_size in (None, 5):
        val, g = loss_and_grads(*sharded(mesh8, x, y, mask), mesh=mesh8, gather_gradient=False, chunk_size=chunk_size)
        assert rel_err(val, ref_val) <= 1e-5
        assert rel_err(g[0], ref_g[0]) <= 1e-5 and rel_err(g[1], ref_g[1]) <= 1e-5


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_masked_pairs_are_neither_anchors_nor_negatives(mesh8, chunk_size):
    x, y = embeddings(24, seed=2)
    mask = np.ones(24, bool)
    mask[[3, 10, 11, 23]] = False  # padded / missing pairs on several devices
    val, g = loss_and_grads(*sharded(mesh8, x, y, mask), mesh=mesh8, chunk_size=chunk_size)
    ref_val, ref_g = jax.value_and_grad(lambda a, b: reference_loss(a, b, mask), argnums=(0, 1))(x, y)
    assert rel_err(val, ref_val) <= 1e-5
    assert rel_err(g[0], ref_g[0]) <= 1e-5 and rel_err(g[1], ref_g[1]) <= 1e-5
    assert np.all(np.asarray(g[0])[~mask] == 0) and np.all(np.asarray(g[1])[~mask] == 0)
    # Garbage (even NaN-free huge values) in masked rows changes nothing.
    x2, y2 = x.copy(), y.copy()
    x2[~mask] = 7.0
    y2[~mask] = -3.0
    val2, _ = loss_and_grads(*sharded(mesh8, x2, y2, mask), mesh=mesh8, chunk_size=chunk_size)
    assert rel_err(val2, val) <= 1e-6


def test_all_masked_batch_gives_zero_loss_and_finite_grads(mesh8):
    x, y = embeddings(16)
    mask = np.zeros(16, bool)
    val, g = loss_and_grads(*sharded(mesh8, x, y, mask), mesh=mesh8)
    assert float(val) == 0.0 and np.all(np.asarray(g[0]) == 0)


def test_known_values():
    # All embeddings identical: every column has the same logit, loss = log(B) exactly.
    x = np.tile(np.array([[0.6, 0.8]], np.float32), (8, 1))
    val, aux = losses.pair_infonce(x, x, None, mesh=None, temperature=TAU)
    assert abs(float(val) - math.log(8)) < 1e-5
    # Orthonormal pairs x_i = y_i = e_i: loss = log(1 + (B-1) e^{-1/tau}) per anchor.
    e = np.eye(8, dtype=np.float32)
    val, aux = losses.pair_infonce(e, e, None, mesh=None, temperature=TAU)
    assert abs(float(val) - math.log(1 + 7 * math.exp(-10))) < 1e-6
    assert float(aux["accuracy_xy"]) == 1.0 and float(aux["num_valid"]) == 8


@pytest.mark.parametrize("gather_gradient", [True, False])
@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_chunked_equals_dense_bfloat16_inputs(mesh8, gather_gradient):
    x, y = embeddings(40, dim=16, seed=3)
    mask = np.ones(40, bool)
    mask[-5:] = False
    xb, yb = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)  # math still runs in float32
    dense = loss_and_grads(*sharded(mesh8, xb, yb, mask), mesh=mesh8, gather_gradient=gather_gradient)
    for chunk in (1, 7, 40, 64):
        ch = loss_and_grads(*sharded(mesh8, xb, yb, mask), mesh=mesh8, gather_gradient=gather_gradient, chunk_size=chunk)
        assert ch[0].dtype == jnp.float32
        assert rel_err(ch[0], dense[0]) <= 1e-5
        assert rel_err(np.asarray(ch[1][0], np.float32), np.asarray(dense[1][0], np.float32)) <= 1e-2  # bf16 grads


def test_chunked_accuracy_matches_dense(mesh8):
    x, y = embeddings(32, seed=4)
    mask = np.ones(32, bool)
    args = sharded(mesh8, x, y, mask)
    _, aux_d = jax.jit(lambda *a: losses.pair_infonce(*a, mesh=mesh8))(*args)
    _, aux_c = jax.jit(lambda *a: losses.pair_infonce(*a, mesh=mesh8, chunk_size=6))(*args)
    for k in ("accuracy_xy", "accuracy_yx", "loss_xy", "loss_yx"):
        assert abs(float(aux_d[k]) - float(aux_c[k])) < 1e-5, k


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_learnable_temperature_clamped():
    init = losses.log_scale_init(0.1)
    assert abs(float(losses.temperature_from_log_scale(init)) - 0.1) < 1e-6
    assert abs(float(losses.temperature_from_log_scale(10.0)) - 0.01) < 1e-7  # scale <= 100
    assert abs(float(losses.temperature_from_log_scale(-3.0)) - 1.0) < 1e-7  # scale >= 1
    x, y = embeddings(8, seed=5)

    def loss_of(log_scale):
        t = losses.temperature_from_log_scale(log_scale)
        return losses.pair_infonce(x, y, None, mesh=None, temperature=t)[0]

    g_in = float(jax.grad(loss_of)(jnp.float32(init)))
    assert g_in != 0.0 and np.isfinite(g_in)
    # Finite-difference check of the gradient inside the clamp range.
    eps = 1e-2
    fd = (float(loss_of(jnp.float32(init + eps))) - float(loss_of(jnp.float32(init - eps)))) / (2 * eps)
    assert abs(fd - g_in) / abs(g_in) < 1e-2
    assert float(jax.grad(loss_of)(jnp.float32(8.0))) == 0.0  # beyond the clamp: no gradient


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_molbind_loss_weights_and_missing_pairs(mesh8):
    pairs = {}
    for i, name in enumerate(("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")):
        x, y = embeddings(16, seed=10 + i)
        pairs[name] = tuple(sharded(mesh8, x, y, np.ones(16, bool)))
    total, per_pair = jax.jit(lambda e: losses.molbind_loss(e, mesh=mesh8))(pairs)
    singles = {p: float(reference_loss(*(np.asarray(a) for a in v))) for p, v in pairs.items()}
    assert abs(float(total) - 0.25 * sum(singles.values())) < 1e-5
    for p in pairs:
        assert abs(float(per_pair[p][0]) - singles[p]) < 1e-5
    # Without conformer_text (the emergent setting) the other three still count.
    three = {p: v for p, v in pairs.items() if p != "conformer_text"}
    total3, _ = jax.jit(lambda e: losses.molbind_loss(e, mesh=mesh8, temperatures={p: TAU for p in e}))(three)
    assert abs(float(total3) - 0.25 * sum(v for p, v in singles.items() if p != "conformer_text")) < 1e-5
    # Explicit weights must cover every pair given (default: 0.25 for each pair given).
    with pytest.raises(KeyError, match=r"no loss weight for pair type 'mystery' \(weights given for \['graph_text'\]\)"):
        losses.molbind_loss({"mystery": pairs["graph_text"]}, weights={"graph_text": 0.25}, mesh=mesh8)
    weighted, _ = jax.jit(lambda e: losses.molbind_loss(e, weights={"graph_text": 2.0, "conformer_pocket": 0.5},
                                                        mesh=mesh8))({p: pairs[p] for p in ("graph_text", "conformer_pocket")})
    assert abs(float(weighted) - (2.0 * singles["graph_text"] + 0.5 * singles["conformer_pocket"])) < 1e-5


def test_bad_inputs(mesh8):
    x, y = embeddings(12)
    with pytest.raises(ValueError, match="not divisible"):
        losses.pair_infonce(x, y, None, mesh=mesh8)
    with pytest.raises(ValueError, match="same shape"):
        losses.pair_infonce(x, y[:, :4], None, mesh=None)
    with pytest.raises(ValueError, match="mask must have shape"):
        losses.pair_infonce(x, y, np.ones(5, bool), mesh=None)
