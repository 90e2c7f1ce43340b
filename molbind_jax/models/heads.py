"""The original's projection heads and pooling functions (spec section 2).

* `ProjectionHead`: optional LayerNorm (float32, eps 1e-5, as the original's fp32 LayerNorm
  subclass in `bind.py` 126-132) then Linear. The text head has no LayerNorm.
* `l2_normalize`: `F.normalize(p=2, dim=-1, eps=1e-12)`.
* `text_cls_pool`: `last_hidden_state[:, 0]`.
* `unimol_mean_pool`: the Uni-Mol mean over positions, either over real atoms only
  ("atoms", independent of padding) or exactly as the original ("original"): a mean over all
  positions of the batch padded to `round_up(max_len, 8)`, padded rows included.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

LAYER_NORM_EPS = 1e-5
POOLING_MODES = ("atoms", "original")


class ProjectionHead(nnx.Module):
    """`Linear(LayerNorm(x))` (or `Linear(x)` with `layer_norm=False`)."""

    def __init__(self, in_dim: int, out_dim: int, *, layer_norm: bool, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.norm = (
            nnx.LayerNorm(in_dim, epsilon=LAYER_NORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
            if layer_norm else None
        )
        # torch.nn.Linear's default init (kaiming-uniform weight, uniform bias in +-1/sqrt(in)).
        bound = 1.0 / np.sqrt(in_dim)
        self.proj = nnx.Linear(
            in_dim, out_dim, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_init=lambda key, shape, dtype: nnx.initializers.uniform(2 * bound)(key, shape, dtype) - bound,
            rngs=rngs)

    def __call__(self, x):
        x = x.astype(jnp.float32)
        if self.norm is not None:
            x = self.norm(x)
        return self.proj(x)

    def set_from_torch(self, weight, bias, ln_weight=None, ln_bias=None) -> None:
        """Copies torch `Linear` (weight [out,in], bias) and LayerNorm arrays into the head."""
        weight = np.asarray(weight, np.float32)
        if weight.shape != self.proj.kernel.value.shape[::-1]:
            raise ValueError(f"projection weight {weight.shape} != expected {self.proj.kernel.value.shape[::-1]}")
        self.proj.kernel.value = jnp.asarray(weight.T)
        self.proj.bias.value = jnp.asarray(np.asarray(bias, np.float32).reshape(self.proj.bias.value.shape))
        if (ln_weight is None) != (self.norm is None):
            raise ValueError("LayerNorm arrays must be given exactly when the head has a LayerNorm")
        if self.norm is not None:
            shape = self.norm.scale.value.shape
            self.norm.scale.value = jnp.asarray(np.asarray(ln_weight, np.float32).reshape(shape))
            self.norm.bias.value = jnp.asarray(np.asarray(ln_bias, np.float32).reshape(shape))


def l2_normalize(x, eps: float = 1e-12):
    """`x / max(||x||_2, eps)` over the last axis, in float32 (torch F.normalize)."""
    x = jnp.asarray(x).astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def text_cls_pool(hidden):
    """The first position of `last_hidden_state` [B,L,H] -> [B,H] (the original's text pooling)."""
    return hidden[:, 0]


def _round_up(n, multiple: int):
    return ((n + multiple - 1) // multiple) * multiple


def unimol_mean_pool(rep, tokens, mode: str = "atoms", pad_multiple: int = 8):
    """Mean of Uni-Mol `encoder_rep` [B,N,D] over positions, in float32 -> [B,D].

    Args:
      rep: encoder output at our (bucket) padding.
      tokens: [B,N] token ids, 0 = [PAD]; real tokens ([CLS] atoms [SEP]) form a prefix.
      mode: "atoms": mean over the non-[PAD] positions (incl. [CLS]/[SEP]); independent of the
        padding. "original": the original's mean over all `N_orig = round_up(max_i n_i,
        pad_multiple)` positions of its collater's padding (spec 1b), reproduced from our
        padding: every padded row of a molecule sees the same inputs (zero embedding, edge
        type 0 and distance 0 against the real keys, padded keys masked) and so has the same
        output, so the original mean is `(sum_real + (N_orig - n_i) * padded_row_i) / N_orig`.
      pad_multiple: the original collater's multiple (8).

    `N_orig` is taken over the rows passed in: the original padded each rank's batch on its
    own, so pass one original batch at a time to reproduce it exactly.

    Requires N to be a multiple of `pad_multiple` for mode "original" (our buckets are), so
    that `N_orig <= N`; a molecule with `n_i == N` then has `N_orig == n_i` and needs no
    padded row.
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")
    rep = jnp.asarray(rep).astype(jnp.float32)
    real = (jnp.asarray(tokens) != 0)
    n = jnp.sum(real, axis=1).astype(jnp.int32)  # [B]
    sum_real = jnp.einsum("bnd,bn->bd", rep, real.astype(jnp.float32))
    if mode == "atoms":
        return sum_real / jnp.maximum(n, 1).astype(jnp.float32)[:, None]

    num_pos = rep.shape[1]
    if num_pos % pad_multiple:
        raise ValueError(f"pooling='original' needs the padded length ({num_pos}) to be a multiple of "
                         f"{pad_multiple}, so that the original's padding fits inside ours")
    n_orig = _round_up(jnp.max(n), pad_multiple)  # the original collater's length for this batch
    # First padded row of each molecule (index n_i); clipped for full rows, whose weight is 0.
    first_pad = jnp.minimum(n, num_pos - 1)
    padded_row = jnp.take_along_axis(rep, first_pad[:, None, None], axis=1)[:, 0]
    n_missing = (n_orig - n).astype(jnp.float32)[:, None]
    padded_part = jnp.where(n_missing > 0, n_missing * padded_row, 0.0)
    return (sum_real + padded_part) / n_orig.astype(jnp.float32)
