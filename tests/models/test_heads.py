"""Heads and pooling: torch semantics of LayerNorm/Linear/F.normalize, and the Uni-Mol means."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from molbind_jax.models import heads


def test_l2_normalize_matches_torch_including_zero_rows():
    x = np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32)
    x[2] = 0.0  # F.normalize leaves a zero vector at zero thanks to eps
    x[3] *= 1e-14  # below eps: divided by eps, not by its norm
    ours = np.asarray(heads.l2_normalize(jnp.asarray(x)))
    ref = torch.nn.functional.normalize(torch.from_numpy(x), p=2, dim=-1, eps=1e-12).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
    assert heads.l2_normalize(jnp.ones((2, 3), jnp.bfloat16)).dtype == jnp.float32
    assert np.all(ours[2] == 0)


def test_text_cls_pool_takes_first_position():
    h = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(heads.text_cls_pool(h), h[:, 0])


@pytest.mark.parametrize("layer_norm", [True, False])
def test_projection_head_matches_torch(layer_norm):
    rng = np.random.default_rng(1)
    head = heads.ProjectionHead(6, 5, layer_norm=layer_norm, rngs=nnx.Rngs(0))
    lin = torch.nn.Linear(6, 5)
    ln = torch.nn.LayerNorm(6, eps=1e-5)
    with torch.no_grad():  # non-trivial LayerNorm affine so a swapped scale/bias would show
        ln.weight.copy_(torch.from_numpy(rng.normal(size=6).astype(np.float32)))
        ln.bias.copy_(torch.from_numpy(rng.normal(size=6).astype(np.float32)))
    head.set_from_torch(lin.weight.detach().numpy(), lin.bias.detach().numpy(),
                        *((ln.weight.detach().numpy(), ln.bias.detach().numpy()) if layer_norm else ()))
    x = rng.normal(size=(3, 6)).astype(np.float32) * 3 + 1
    with torch.no_grad():
        t = torch.from_numpy(x)
        ref = lin(ln(t) if layer_norm else t).numpy()
    np.testing.assert_allclose(np.asarray(head(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="projection weight"):
        head.set_from_torch(np.zeros((6, 5)), np.zeros(5))


def test_projection_head_bf16_matmul_keeps_fp32_params():
    head = heads.ProjectionHead(8, 4, layer_norm=True, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    out = head(jnp.ones((2, 8), jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and head.proj.kernel.value.dtype == jnp.float32
    assert head.norm.scale.value.dtype == jnp.float32


def _padded_batch(lengths, num_pos, dim, seed=0):
    """rep/tokens where padded rows of molecule i all equal one vector (the Uni-Mol property)."""
    rng = np.random.default_rng(seed)
    rep = rng.normal(size=(len(lengths), num_pos, dim)).astype(np.float32)
    tokens = np.zeros((len(lengths), num_pos), np.int32)
    pad_vec = rng.normal(size=(len(lengths), dim)).astype(np.float32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(1, 30, size=n)
        rep[i, n:] = pad_vec[i]
    return rep, tokens


def test_atoms_pooling_ignores_padding():
    rep, tokens = _padded_batch([3, 7, 5], 16, 4)
    out = np.asarray(heads.unimol_mean_pool(rep, tokens, "atoms"))
    for i, n in enumerate([3, 7, 5]):
        np.testing.assert_allclose(out[i], rep[i, :n].mean(0), rtol=1e-6)
    # Garbage in the padded rows changes nothing.
    rep2 = rep.copy()
    rep2[tokens == 0] = 1e3
    np.testing.assert_allclose(np.asarray(heads.unimol_mean_pool(rep2, tokens, "atoms")), out, rtol=1e-6)


@pytest.mark.parametrize("lengths,bucket", [([3, 7, 5], 24), ([9, 2], 32), ([16, 4], 16), ([8, 8], 8)])
def test_original_pooling_equals_mean_at_original_padding(lengths, bucket):
    rep, tokens = _padded_batch(lengths, bucket, 4, seed=len(lengths) + bucket)
    n_orig = -(-max(lengths) // 8) * 8
    # The original: plain mean over all n_orig positions of its collater's padding.
    ref = rep[:, :n_orig].mean(1)
    out = np.asarray(heads.unimol_mean_pool(rep, tokens, "original"))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # And it differs from the padding-free mean whenever a molecule is shorter than n_orig.
    if min(lengths) < n_orig:
        assert not np.allclose(out, np.asarray(heads.unimol_mean_pool(rep, tokens, "atoms")))


def test_original_pooling_jits_and_rejects_bad_padding():
    rep, tokens = _padded_batch([3, 5], 16, 4)
    jitted = jax.jit(lambda r, t: heads.unimol_mean_pool(r, t, "original"))
    np.testing.assert_allclose(np.asarray(jitted(rep, tokens)), rep[:, :8].mean(1), rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of 8"):
        heads.unimol_mean_pool(rep[:, :12], tokens[:, :12], "original")
    with pytest.raises(ValueError, match="unknown pooling mode"):
        heads.unimol_mean_pool(rep, tokens, "cls")


@pytest.mark.slow
def test_original_pooling_matches_unimol_forward_at_original_padding():
    """End to end with the Uni-Mol encoder: our bucket padding vs the collater's round_up(max, 8)."""
    unimol = pytest.importorskip("molbind_jax.models.unimol")
    cfg = unimol.UniMolConfig.tiny()
    enc = unimol.UniMolEncoder(cfg, rngs=nnx.Rngs(0))
    lengths = [5, 11, 7]  # incl. [CLS]/[SEP]; the original pads to 16, our bucket to 32
    def batch(num_pos):
        tokens = np.zeros((3, num_pos), np.int32)
        coords = np.zeros((3, num_pos, 3), np.float32)
        r = np.random.default_rng(3)
        for i, n in enumerate(lengths):
            tokens[i, :n] = np.concatenate([[1], r.integers(4, 13, size=n - 2), [2]])
            coords[i, 1:n - 1] = r.normal(size=(n - 2, 3)) * 1.5
        return tokens, coords
    t16, c16 = batch(16)
    t32, c32 = batch(32)
    forward = nnx.jit(lambda m, t, c: m(t, *unimol.pair_inputs(t, c, cfg.vocab_size), train=False))
    rep16, rep32 = forward(enc, t16, c16), forward(enc, t32, c32)
    original = np.asarray(rep16).mean(1)  # the original's pooling at its own padding
    ours = np.asarray(heads.unimol_mean_pool(rep32, t32, "original"))
    np.testing.assert_allclose(ours, original, rtol=1e-5, atol=1e-5)
    # The padding-free mean really differs here (the quirk is visible at this padding).
    assert np.abs(np.asarray(heads.unimol_mean_pool(rep32, t32, "atoms")) - original).max() > 1e-4
