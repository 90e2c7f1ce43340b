"""Uni-Mol encoder (MolBind `SimpleUniMolModel` + `TransformerEncoderWithPair`, spec section 1b).

One module serves molecules (31-token dictionary) and pockets (10 tokens). The pair
representation starts as a Gaussian-kernel embedding of every atom pair's distance,
specialised per edge type (tok_i * V + tok_j), projected to one bias per head. Every layer
adds it to its attention logits, and the pre-softmax logits become the next layer's bias
(the "pair update"), exactly as Uni-Core does with `return_attn=True`.

Padding follows the original: embeddings are zeroed at [PAD] positions before layer 0 only,
and padded KEY columns of the pair bias are -inf (query rows keep their real columns, so they
stay finite). The original switches padding off entirely (`pad=None`) when a batch has no
[PAD]; masking with an all-False pad is the same computation, so no branch is needed. A row
whose keys are *all* padding (an all-[PAD] example, e.g. a filler row of a short last batch)
would be NaN in the original; here its attention output is zero instead, so no NaN appears.

Numerics: the Gaussian kernel, LayerNorms, the pair bias/logits and the softmax are float32;
matmuls run in `config.dtype` (bfloat16 optional).

Layout and speed (docs/performance.md): the layers are one stacked module run by a
`jax.lax.scan` (one compiled layer body whatever the depth), optionally rematerialised
(`config.remat`); the attention has a written-out gradient (`layers.attention`); dropout keys
come from the encoder's one `dropout_rngs` stream, folded per layer and site, and masks are
drawn by `config.dropout_rng` ("hash" by default).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from molbind_jax.models.layers import (attention, check_dropout_rng, check_remat, dropout, scan_layers, site_key,
                                       stack_layers)

# The original's gaussian() hard-codes pi = 3.14159 (Uni-Mol unimol.py), not math.pi.
_GAUSS_NORM = (2 * 3.14159) ** 0.5


AUTO_UNROLL_LAYERS = 4  # scan_unroll=0: stacks up to this depth compile as one unrolled program


@dataclasses.dataclass(frozen=True)
class UniMolConfig:
    num_layers: int = 15
    embed_dim: int = 512
    ffn_dim: int = 2048
    num_heads: int = 64
    num_kernels: int = 128
    vocab_size: int = 31
    emb_dropout: float = 0.1
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    ln_eps: float = 1e-5
    dtype: Any = jnp.float32  # matmul dtype; params and the pair path stay float32
    # Rematerialisation of the scanned layer body: "none", "full" or "dots" (layers.REMAT_POLICIES).
    remat: str = "none"
    # Layers per scan iteration: 1 a loop over one compiled layer body, num_layers a fully
    # unrolled program, 0 (default) `AUTO_UNROLL_LAYERS`: shallow stacks unrolled, deep ones looped.
    scan_unroll: int = 0
    dropout_rng: str = "hash"  # dropout mask generator, layers.DROPOUT_RNGS

    @classmethod
    def molecule(cls, **overrides) -> "UniMolConfig":
        return cls(**{"vocab_size": 31, **overrides})

    @classmethod
    def pocket(cls, **overrides) -> "UniMolConfig":
        return cls(**{"vocab_size": 10, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "UniMolConfig":
        sizes = dict(num_layers=2, embed_dim=32, ffn_dim=64, num_heads=4, num_kernels=16)
        return cls(**{**sizes, **overrides})

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {self.num_layers}")
        if self.scan_unroll < 0:
            raise ValueError(f"scan_unroll must be 0 (auto) or a number of layers, got {self.scan_unroll}")
        object.__setattr__(self, "remat", check_remat(self.remat))
        check_dropout_rng(self.dropout_rng)

    @property
    def unroll(self) -> int:
        """The scan's unroll: `scan_unroll`, or for 0 the whole stack when it has at most
        `AUTO_UNROLL_LAYERS` layers (the mini towers' 2-layer conformer step ran in 22-25 ms
        unrolled against 46-48 ms looped on one core, docs/performance.md) and 1 otherwise (the
        15-layer stack runs as fast looped and compiles in 4-7 s instead of 30-40 s)."""
        if self.scan_unroll:
            return min(self.scan_unroll, self.num_layers)
        return self.num_layers if self.num_layers <= AUTO_UNROLL_LAYERS else 1


def _torch_linear_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _linear(din: int, dout: int, cfg: UniMolConfig, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, dtype=cfg.dtype, kernel_init=_torch_linear_init(din),
                      bias_init=_torch_linear_init(din), rngs=rngs)


class LayerNorm32(nnx.Module):
    """torch.nn.LayerNorm (eps 1e-5, exact two-pass variance) computed in float32."""

    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]
        return y.astype(x.dtype)


class GaussianLayer(nnx.Module):
    """Per-edge-type affine map of the distance, expanded on K Gaussian kernels (float32)."""

    def __init__(self, num_kernels: int, num_edge_types: int, *, rngs: nnx.Rngs):
        self.means = nnx.Param(jax.random.uniform(rngs.params(), (1, num_kernels), jnp.float32, 0.0, 3.0))
        self.stds = nnx.Param(jax.random.uniform(rngs.params(), (1, num_kernels), jnp.float32, 0.0, 3.0))
        self.mul = nnx.Param(jnp.ones((num_edge_types, 1), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_edge_types, 1), jnp.float32))

    def __call__(self, distance, edge_type):
        y = self.mul[...][edge_type] * distance.astype(jnp.float32)[..., None] + self.bias[...][edge_type]
        mean = self.means[...].reshape(-1)
        std = jnp.abs(self.stds[...].reshape(-1)) + 1e-5
        return jnp.exp(-0.5 * jnp.square((y - mean) / std)) / (_GAUSS_NORM * std)


class EncoderLayer(nnx.Module):
    """Pre-LN transformer layer with an additive pair bias; returns (x, pre-softmax logits).

    Holds parameters only: dropout keys come in explicitly (`key`, None in eval mode), one per
    layer, folded per dropout site, so that the encoder can stack the layers and scan them.
    """

    def __init__(self, cfg: UniMolConfig, *, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.cfg = cfg
        self.self_attn_layer_norm = LayerNorm32(d, cfg.ln_eps)
        self.in_proj = _linear(d, 3 * d, cfg, rngs)
        self.out_proj = _linear(d, d, cfg, rngs)
        self.final_layer_norm = LayerNorm32(d, cfg.ln_eps)
        self.fc1 = _linear(d, cfg.ffn_dim, cfg, rngs)
        self.fc2 = _linear(cfg.ffn_dim, d, cfg, rngs)

    def _drop(self, x, rate, key, site):
        return dropout(x, rate, site_key(key, site), impl=self.cfg.dropout_rng)

    def __call__(self, x, bias, key=None):
        cfg = self.cfg
        b, n, d = x.shape
        h, hd = cfg.num_heads, d // cfg.num_heads
        # The token-wise parts run on [B*N, D]: XLA:CPU's matmuls (and their weight gradients,
        # which contract one axis instead of two) are ~15% faster in 2-D.
        x = x.reshape(b * n, d)
        residual = x
        q, k, v = jnp.split(self.in_proj(self.self_attn_layer_norm(x)), 3, axis=-1)
        q = q.reshape(b, n, h, hd) * (hd ** -0.5)
        o, logits = attention(q, k.reshape(b, n, h, hd), v.reshape(b, n, h, hd), bias,
                              dropout_rate=cfg.attention_dropout, key=site_key(key, 0), impl=cfg.dropout_rng)
        x = residual + self._drop(self.out_proj(o.reshape(b * n, d)), cfg.dropout, key, 1)
        residual = x
        y = jax.nn.gelu(self.fc1(self.final_layer_norm(x)), approximate=False)
        y = self.fc2(self._drop(y, cfg.activation_dropout, key, 2))
        x = residual + self._drop(y, cfg.dropout, key, 3)
        return x.reshape(b, n, d), logits


class UniMolEncoder(nnx.Module):
    """tokens [B,N], distance [B,N,N], edge_type [B,N,N] -> encoder_rep [B,N,D].

    `self.layers` is ONE `EncoderLayer` whose parameters carry a leading layer axis
    (`layers.stack_layers`); the forward scans it (`layers.scan_layers`), carrying (x, pair
    bias), so XLA compiles one layer body whatever `num_layers` is.
    """

    def __init__(self, config: UniMolConfig, *, rngs: nnx.Rngs):
        cfg = self.config = config
        v, d = cfg.vocab_size, cfg.embed_dim
        emb = jax.random.normal(rngs.params(), (v, d), jnp.float32)
        self.embed_tokens = nnx.Param(emb.at[0].set(0.0))  # padding_idx 0, as nn.Embedding
        self.gbf = GaussianLayer(cfg.num_kernels, v * v, rngs=rngs)
        self.gbf_proj_linear1 = _linear(cfg.num_kernels, cfg.num_kernels, cfg, rngs)
        self.gbf_proj_linear2 = _linear(cfg.num_kernels, cfg.num_heads, cfg, rngs)
        self.emb_layer_norm = LayerNorm32(d, cfg.ln_eps)
        self.layers = stack_layers(lambda: EncoderLayer(cfg, rngs=rngs), cfg.num_layers)
        self.final_layer_norm = LayerNorm32(d, cfg.ln_eps)
        self.dropout_rngs = rngs["dropout"].fork()  # one draw per training forward

    def pair_bias(self, distance, edge_type):
        """Gaussian features -> per-head bias [B,H,N,N] (float32)."""
        b, n, _ = distance.shape
        g = self.gbf(distance, edge_type).astype(self.config.dtype).reshape(b * n * n, -1)  # 2-D matmuls
        g = jax.nn.gelu(self.gbf_proj_linear1(g), approximate=False)
        g = self.gbf_proj_linear2(g).reshape(b, n, n, -1)
        return jnp.transpose(g, (0, 3, 1, 2)).astype(jnp.float32)

    def __call__(self, tokens, distance, edge_type, *, train: bool = False):
        cfg = self.config
        tokens = jnp.asarray(tokens).astype(jnp.int32)
        edge_type = jnp.asarray(edge_type).astype(jnp.int32)
        pad = tokens == 0  # [B,N]
        key = self.dropout_rngs() if train else None
        emb_key, layer_keys = (None, None) if key is None else (
            jax.random.fold_in(key, 0), jax.random.split(jax.random.fold_in(key, 1), cfg.num_layers))
        x = self.embed_tokens[...][tokens]
        x = self.emb_layer_norm(x).astype(cfg.dtype)
        x = dropout(x, cfg.emb_dropout, emb_key, impl=cfg.dropout_rng)
        x = x * (1 - pad[..., None].astype(x.dtype))
        bias = self.pair_bias(distance, edge_type)
        bias = jnp.where(pad[:, None, None, :], -jnp.inf, bias)  # padded key columns only

        def step(layer, carry, layer_key):
            return layer(*carry, layer_key)  # the logits become the next layer's bias

        x, _ = scan_layers(self.layers, step, (x, bias), layer_keys, remat=cfg.remat, unroll=cfg.unroll)
        return self.final_layer_norm(x)


def pair_inputs(tokens, coords, vocab_size: int):
    """Distance and edge type of every atom pair, as the original dataset + collater build them.

    tokens [B,N] int (0 = [PAD]), coords [B,N,3] -> (distance float32 [B,N,N], edge_type int32
    [B,N,N]). Real pairs: edge_type = tok_i * V + tok_j, distance = Euclidean distance. The
    collater pads both 2-D arrays with 0, so every pair that touches a [PAD] position gets
    edge type 0 and distance 0 (tok_i * V + tok_j alone would give tok_j on padded rows).
    """
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    coords = jnp.asarray(coords).astype(jnp.float32)
    real = tokens != 0
    pair = real[:, :, None] & real[:, None, :]
    edge_type = jnp.where(pair, tokens[:, :, None] * vocab_size + tokens[:, None, :], 0)
    diff = coords[:, :, None, :] - coords[:, None, :, :]
    d2 = jnp.sum(jnp.square(diff), axis=-1)
    positive = pair & (d2 > 0)
    # sqrt only where d2 > 0 keeps gradients finite on the diagonal and at coincident atoms.
    distance = jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)
    return distance.astype(jnp.float32), edge_type.astype(jnp.int32)

