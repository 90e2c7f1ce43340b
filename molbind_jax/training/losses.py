"""Symmetric InfoNCE over embeddings sharded on the mesh axis "data" (spec section 2).

Which device holds which rows: the global batch of one pair type, `x [B, E]` and `y [B, E]`
(row i of x and row i of y are the two views of example i), is sharded with
`PartitionSpec("data")`, so device d of the "data" axis holds rows `d*b .. (d+1)*b - 1` with
`b = B / num_devices`. Inside `jax.shard_map` every device

  1. gathers the columns of all devices (`jax.lax.all_gather(..., tiled=True)`, [B, E]),
  2. scores its b local anchors against the B gathered columns ([b, B] logits, or chunks of
     them), in float32, divided by the temperature,
  3. uses labels `axis_index("data") * b + arange(b)`: the positive of local anchor i is the
     gathered column of the same global row,
  4. sums the cross-entropies of its valid anchors; a `psum` over "data" of the sums and of
     the counts gives the mean over the valid anchors of the GLOBAL batch.

Both directions are computed (x anchors against y columns, y anchors against x columns) and
averaged: `L = (L_xy + L_yx) / 2`, the original's `(CE(X Y_all^T/t) + CE(Y X_all^T/t)) / 2`.

Masking: `mask [B]` (a `PairBatch`'s `mask`) marks real pairs. A masked example is neither an
anchor (its loss is not counted) nor a negative (its column gets a logit of -1e30, i.e. zero
probability). The loss is the mean over valid anchors of the global batch, so a padded short
last batch gives the same loss as the unpadded batch.

Duplicates (`x_key`, `y_key` given; the train step passes a `PairBatch`'s keys when
`duplicate_aware` is on, the default): two rows of a batch may hold the same molecule, text
or protein (the conformer_pocket pairs of one protein target, a molecule with two
descriptions). The plain loss would push such a row's true partner away as a negative. With
integer identity keys [B] per side (`PairBatch.x_key`/`y_key`), for anchor row i the column
j != i is left out of the softmax denominator (its logit set to -1e30, whose exp is exactly 0
in float32; finite, so no inf - inf NaN) when x_key[j] == x_key[i] or y_key[j] == y_key[i];
the positive j == i is never left out, so every valid anchor keeps a finite loss. The rule is
the same in both directions (x anchors against y columns, y anchors against x columns). A
negative key matches nothing (padding rows, unknown identities). Keys are gathered across
"data" like the mask, so the masked set, the loss and its gradients do not depend on the
device count. Without keys (None) nothing is masked: the original's loss exactly. The
in-batch accuracy then counts a hit against the columns that are left.

Gradients (`gather_gradient=True`, the default): the gather is differentiated (its transpose
is a reduce-scatter), so the loss and every gradient equal the single-device loss over the
whole global batch, whatever the device count: each embedding receives the gradient of its
role as an anchor AND of its role as a column (positive or negative) of the other direction.

`gather_gradient=False` reproduces the original (`pl_concat_all_gather` is `@torch.no_grad()`,
and DDP averages gradients over ranks): the gathered columns are constants, including the
device's own slice, so the positive logit carries no gradient into its column either. With
p_ij the softmax of anchor x_i over columns y_j (and q for the other direction), t the
temperature and N the number of valid anchors, the gradient is

    dL/dx_i = 1/(2N) * sum_j (p_ij - [j == i]) y_j / t        (anchor role only)
    dL/dy_i = 1/(2N) * sum_j (q_ij - [j == i]) x_j / t        (anchor role only)

whereas the full gradient adds the column terms 1/(2N) * sum_k (q_ki - [k == i]) y_k / t to
dL/dx_i (and symmetrically for y). This rule does not depend on how rows are split over
devices. When every device holds the same number of valid anchors (the original always does:
`drop_last=True`) it equals DDP's average of the per-rank losses' gradients exactly; with
masked rows it weighs every valid anchor equally rather than every device. The loss VALUE is
the same as with `gather_gradient=True`.

`chunk_size` switches to the chunked form: the gathered columns are visited in chunks with an
online (running max, running sum) logsumexp inside a `lax.scan` whose body is wrapped in
`jax.checkpoint`, so neither the forward nor the backward pass materialises the [b, B] logits:
memory is O(b * chunk_size + B * E) per device, linear in the global batch. It computes the
same function as the dense form (tested to float32 round-off).

Temperature: a fixed float (the original: 0.1 for every pair), or a traced value computed
from a learnable log-scale with `temperature_from_log_scale`, which clamps the scale CLIP
style (scale = 1/t <= 100 by default) so that the logits cannot blow up.
"""
from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

DATA_AXIS = "data"
# The original: loss = 0.25*(L_gt + L_ct) + 0.25*(L_gc + L_cp) (contrastive.py 186-190).
DEFAULT_WEIGHT = 0.25
DEFAULT_TEMPERATURE = 0.1
# Logit given to masked columns. Finite (not -inf) so that a row with every column masked
# still has a finite logsumexp and gradient (masked rows are then dropped by the mean).
_MASKED_LOGIT = -1e30


# ----------------------------------------------------------------------------- temperature
def log_scale_init(temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Initial value of a learnable log-scale parameter for a starting temperature."""
    return math.log(1.0 / temperature)


def temperature_from_log_scale(log_scale, *, max_scale: float = 100.0, min_scale: float = 1.0):
    """Temperature from a learnable log-scale, clamped CLIP style.

    scale = exp(clip(log_scale, log(min_scale), log(max_scale))), temperature = 1/scale.
    CLIP clamps its logit scale at 100 (temperature >= 0.01); the lower bound (temperature
    <= 1 by default) keeps a diverging parameter from flattening the softmax completely.
    Outside the bounds the gradient w.r.t. log_scale is zero, as with a clamp.
    """
    log_scale = jnp.asarray(log_scale, jnp.float32)
    clipped = jnp.clip(log_scale, math.log(min_scale), math.log(max_scale))
    return jnp.exp(-clipped)


# ------------------------------------------------------------------------- per-device math
def _allowed(col_mask, col_index, anchor_keys, col_keys, labels):
    """[b, n] bool: column j enters anchor i's softmax. Without keys (None): the column mask.
    With keys ((kx, ky) of the anchors, (kx, ky) of the columns): also leave out every other
    column whose x key or y key equals the anchor's (a duplicate); the positive stays."""
    allowed = col_mask[None, :]
    if anchor_keys is None:
        return allowed
    dup = jnp.zeros((labels.shape[0], col_index.shape[0]), bool)
    for a, c in zip(anchor_keys, col_keys):
        dup = dup | ((a[:, None] == c[None, :]) & (a[:, None] >= 0))
    return allowed & (~dup | (col_index[None, :] == labels[:, None]))


def _direction_dense(anchors, columns_all, col_mask_all, labels, inv_t, anchor_keys=None, col_keys=None):
    """Per-anchor cross-entropy and top-1 hit against all columns, dense [b, B] logits."""
    logits = jnp.dot(anchors, columns_all.T, precision=jax.lax.Precision.HIGHEST) * inv_t
    col_index = jnp.arange(columns_all.shape[0])
    logits = jnp.where(_allowed(col_mask_all, col_index, anchor_keys, col_keys, labels), logits, _MASKED_LOGIT)
    lse = jax.nn.logsumexp(logits, axis=-1)
    pos = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    hit = pos >= jnp.max(logits, axis=-1)
    return lse - pos, hit


def _direction_chunked(anchors, positives, columns_all, col_mask_all, inv_t, chunk_size, labels=None,
                       anchor_keys=None, col_keys=None):
    """Same as `_direction_dense`, visiting the columns in chunks with an online logsumexp.

    The positive logit is computed from the anchor's own partner row (`positives`), which is
    the gathered column at the anchor's label: the same number without searching the chunks.
    """
    n, e = columns_all.shape
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n
    col_index = jnp.arange(n)
    if pad:
        columns_all = jnp.pad(columns_all, ((0, pad), (0, 0)))
        col_mask_all = jnp.pad(col_mask_all, (0, pad))  # padding columns are masked
        col_index = jnp.pad(col_index, (0, pad), constant_values=-1)
        if col_keys is not None:
            col_keys = tuple(jnp.pad(k, (0, pad), constant_values=-1) for k in col_keys)
    cols = columns_all.reshape(num_chunks, chunk_size, e)
    cmask = col_mask_all.reshape(num_chunks, chunk_size)
    cindex = col_index.reshape(num_chunks, chunk_size)
    ckeys = None if col_keys is None else tuple(k.reshape(num_chunks, chunk_size) for k in col_keys)

    @jax.checkpoint  # recompute each chunk's logits in the backward pass: O(b*chunk) memory
    def body(carry, chunk):
        run_max, run_sum = carry
        c, m, idx, k = chunk
        logits = jnp.dot(anchors, c.T, precision=jax.lax.Precision.HIGHEST) * inv_t
        logits = jnp.where(_allowed(m, idx, anchor_keys, k, labels), logits, _MASKED_LOGIT)
        new_max = jnp.maximum(run_max, jnp.max(logits, axis=-1))
        run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=-1)
        return (new_max, run_sum), None

    # Derived from `anchors` (not jnp.full) so that, inside shard_map, the carry has the same
    # per-device ("varying") type as the body's output.
    zeros = jnp.zeros_like(anchors[:, 0])
    init = (zeros + _MASKED_LOGIT, zeros)
    (run_max, run_sum), _ = jax.lax.scan(body, init, (cols, cmask, cindex, ckeys))
    lse = run_max + jnp.log(run_sum)
    pos = jnp.sum(anchors * positives, axis=-1) * inv_t
    # pos is not bit-identical to its matmul twin inside the chunks: allow round-off.
    hit = pos + 1e-5 * jnp.maximum(1.0, jnp.abs(pos)) >= jax.lax.stop_gradient(run_max)
    return lse - pos, hit


def _local_loss_terms(x, y, mask, x_all, y_all, mask_all, offset, inv_t, gather_gradient, chunk_size,
                      keys=None, keys_all=None):
    """Sums over this device's valid anchors: (ce_xy, ce_yx, hits_xy, hits_yx, count).
    keys / keys_all: (x_key, y_key) of the local rows and of all gathered rows, or None."""
    if not gather_gradient:
        # The original's no-grad gather: every gathered column is a constant.
        x_all = jax.lax.stop_gradient(x_all)
        y_all = jax.lax.stop_gradient(y_all)
    valid = mask.astype(jnp.float32)
    labels = offset + jnp.arange(x.shape[0])
    if chunk_size is None:
        # The duplicate rule is symmetric in x and y: one mask serves both directions.
        ce_xy, hit_xy = _direction_dense(x, y_all, mask_all, labels, inv_t, keys, keys_all)
        ce_yx, hit_yx = _direction_dense(y, x_all, mask_all, labels, inv_t, keys, keys_all)
    else:
        # The positive partner is this device's own row; in the original it comes from the
        # no-grad gathered tensor, so it is a constant too under gather_gradient=False.
        y_pos = y if gather_gradient else jax.lax.stop_gradient(y)
        x_pos = x if gather_gradient else jax.lax.stop_gradient(x)
        ce_xy, hit_xy = _direction_chunked(x, y_pos, y_all, mask_all, inv_t, chunk_size, labels, keys, keys_all)
        ce_yx, hit_yx = _direction_chunked(y, x_pos, x_all, mask_all, inv_t, chunk_size, labels, keys, keys_all)
    return (
        jnp.sum(ce_xy * valid),
        jnp.sum(ce_yx * valid),
        jnp.sum(hit_xy * valid),
        jnp.sum(hit_yx * valid),
        jnp.sum(valid),
    )


def _finish(ce_xy, ce_yx, hit_xy, hit_yx, count):
    denom = jnp.maximum(count, 1.0)  # an all-masked batch gives loss 0, not NaN
    loss_xy = ce_xy / denom
    loss_yx = ce_yx / denom
    aux = {
        "loss_xy": loss_xy,
        "loss_yx": loss_yx,
        "accuracy_xy": hit_xy / denom,
        "accuracy_yx": hit_yx / denom,
        "num_valid": count,
    }
    return 0.5 * (loss_xy + loss_yx), aux


# ------------------------------------------------------------------------------ public API
def batch_keys(batch, duplicate_aware: bool) -> tuple:
    """(x_key, y_key) of a PairBatch for the loss: its identity keys when `duplicate_aware`
    and the batch has them (collate_pair always fills them), else (None, None): plain loss."""
    if not duplicate_aware:
        return None, None
    x_key, y_key = getattr(batch, "x_key", None), getattr(batch, "y_key", None)
    return (None, None) if x_key is None or y_key is None else (x_key, y_key)


def pair_infonce(
    x,
    y,
    mask=None,
    *,
    mesh: Mesh | None,
    temperature=DEFAULT_TEMPERATURE,
    gather_gradient: bool = True,
    chunk_size: int | None = None,
    x_key=None,
    y_key=None,
    axis_name: str = DATA_AXIS,
):
    """Symmetric InfoNCE of one pair type over the global batch (see the module docstring).

    Args:
      x, y: [B, E] embeddings (any float dtype; the math runs in float32), row i of each being
        the two views of example i. Global arrays sharded `P("data")` on `mesh` (or anything
        jit can reshard); B must be divisible by the size of the "data" axis.
      mask: [B] bool, False for padded or missing pairs; None = all valid.
      mesh: the mesh with the "data" axis. None computes on one device without shard_map
        (same numbers; useful as a reference and for tiny CPU runs).
      temperature: float or traced scalar (e.g. `temperature_from_log_scale(p)`).
      gather_gradient: True = gradients through the gather (equals the 1-device loss);
        False = the original's no-grad gather (anchor-only gradient, see module docstring).
      chunk_size: None = dense [b, B] logits per device; an int = online logsumexp over
        column chunks of that size with rematerialisation (memory linear in B).
      x_key, y_key: [B] int identity keys of the rows' x and y sides (`PairBatch.x_key`,
        `y_key`), both or neither: the duplicate-aware loss (module docstring). None = the
        plain loss, every other row a negative.

    Returns:
      (loss, aux): the scalar float32 loss (replicated) and a dict with loss_xy, loss_yx,
      accuracy_xy, accuracy_yx (in-batch top-1 of the positive; ties count as hits) and
      num_valid.
    """
    x = jnp.asarray(x).astype(jnp.float32)
    y = jnp.asarray(y).astype(jnp.float32)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"pair_infonce expects x and y of the same shape [B, E], got {x.shape} and {y.shape}")
    if mask is None:
        mask = jnp.ones(x.shape[:1], bool)
    mask = jnp.asarray(mask).astype(bool)
    if mask.shape != x.shape[:1]:
        raise ValueError(f"mask must have shape {x.shape[:1]}, got {mask.shape}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
    if (x_key is None) != (y_key is None):
        raise ValueError("pair_infonce takes both identity keys (x_key, y_key) or neither")
    keys = None
    if x_key is not None:
        keys = tuple(jnp.asarray(k).astype(jnp.int32) for k in (x_key, y_key))
        if any(k.shape != x.shape[:1] for k in keys):
            raise ValueError(f"x_key and y_key must have shape {x.shape[:1]}, got {keys[0].shape} and {keys[1].shape}")

    if mesh is None:
        terms = _local_loss_terms(x, y, mask, x, y, mask, 0, inv_t, gather_gradient, chunk_size, keys, keys)
        return _finish(*terms)

    n_dev = mesh.shape[axis_name]
    if x.shape[0] % n_dev:
        raise ValueError(
            f"global batch {x.shape[0]} is not divisible by the {n_dev} devices of mesh axis '{axis_name}'"
        )

    def per_device(xl, yl, ml, inv_t, kl):
        x_all = jax.lax.all_gather(xl, axis_name, tiled=True)
        y_all = jax.lax.all_gather(yl, axis_name, tiled=True)
        m_all = jax.lax.all_gather(ml, axis_name, tiled=True)
        # The keys travel like the mask (integers: no gradient either way).
        k_all = None if kl is None else tuple(jax.lax.all_gather(k, axis_name, tiled=True) for k in kl)
        offset = jax.lax.axis_index(axis_name) * xl.shape[0]
        terms = _local_loss_terms(xl, yl, ml, x_all, y_all, m_all, offset, inv_t, gather_gradient, chunk_size,
                                  kl, k_all)
        return tuple(jax.lax.psum(t, axis_name) for t in terms)

    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(axis_name), P(axis_name), P(axis_name), P(), P(axis_name)),  # keys: None or a pair
        out_specs=(P(),) * 5,
    )
    return _finish(*sharded(x, y, mask, inv_t, keys))


def molbind_loss(
    embeddings: Mapping[str, tuple],
    weights: Mapping[str, float] | None = None,
    temperatures: float | Mapping[str, object] = DEFAULT_TEMPERATURE,
    *,
    mesh: Mesh | None,
    gather_gradient: bool = True,
    chunk_size: int | None = None,
    keys: Mapping[str, tuple] | None = None,
):
    """The original's total loss: sum over pair types of weight * pair InfoNCE.

    Args:
      embeddings: {pair name: (x, y, mask)}, e.g. from `MolBind.pair_embeddings`. Pairs that
        are absent (say, no conformer_text in the emergent setting) are simply not summed.
      weights: {pair: weight}; default 0.25 each (the original's hard-coded weight).
      temperatures: one float/scalar for all pairs, or {pair: scalar}.
      keys: {pair: (x_key, y_key)} identity keys for the duplicate-aware loss (a pair absent
        here, or with None keys, gets the plain loss); None = plain loss for every pair.

    Returns:
      (total, per_pair) with per_pair[pair] = (unweighted loss, aux dict).
    """
    weights = {p: DEFAULT_WEIGHT for p in embeddings} if weights is None else dict(weights)
    total = jnp.zeros((), jnp.float32)
    per_pair = {}
    for pair, (x, y, mask) in embeddings.items():
        if pair not in weights:
            raise KeyError(f"no loss weight for pair type '{pair}' (weights given for {sorted(weights)})")
        t = temperatures[pair] if isinstance(temperatures, Mapping) else temperatures
        x_key, y_key = (keys or {}).get(pair) or (None, None)
        loss, aux = pair_infonce(
            x, y, mask, mesh=mesh, temperature=t, gather_gradient=gather_gradient, chunk_size=chunk_size,
            x_key=x_key, y_key=y_key,
        )
        per_pair[pair] = (loss, aux)
        total = total + weights[pair] * loss
    return total, per_pair
