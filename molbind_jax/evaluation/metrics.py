"""Zero-shot retrieval and classification metrics on L2-normalised embeddings.

Conventions used everywhere in this module:

* A *rank* is 0-based: rank 0 means the true target is the top hit.
* **Tie rule: ties count against the target.** The rank of a query is the number of
  *non-target* candidates whose score is ``>=`` the best score among its true targets.
  Other true targets never count against it (duplicates are not penalised), but a
  non-target with exactly the same score does. This is deterministic (independent of
  candidate order and of any sort's stability) and pessimistic: a collapsed model that
  gives every candidate the same score gets the worst rank, never a lucky top-1. The
  original (``argsort`` on bf16 similarities) broke ties arbitrarily; see spec §4.
* NaN scores (failed embeddings) are treated as ``-inf``: a NaN target ranks behind every
  valid non-target, and a NaN non-target never beats a valid target.
* ``targets`` is either an int array ``[Q]`` (one true candidate per query) or, for
  duplicates / several correct answers (classification, repeated molecules), a boolean
  mask ``[Q, C]`` (unblocked) or a padded int array ``[Q, T]`` with ``-1`` for "no more
  targets" (blocked). Every query must have at least one target.
* Recall@K = mean(rank < K); MRR = mean(1 / (rank + 1)).
* **Intervals** (``ci=True``): a percentile bootstrap over the queries (``bootstrap_ci``):
  the queries are resampled with replacement ``BOOTSTRAP_RESAMPLES`` times with a fixed
  seed, each metric recomputed on every resample, and the 2.5th / 97.5th percentiles kept
  as ``summary["ci95"][metric] = [lo, hi]``. They cover the sampling of the test queries,
  not the randomness of training (evaluation/seeds.py reports that spread).

``blocked_ranks`` never materialises the full ``[Q, C]`` similarity matrix: it walks row
blocks x column blocks of a fixed shape (the last blocks are zero-padded and masked), so one
compiled kernel serves every block and exact ties come out bitwise identical to any other
block. The target scores are read out of the *same* block computation (a first pass over
only the column blocks that hold targets), never recomputed with a different kernel, which
would break exact-tie bookkeeping.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (1, 5, 10, 20)


# ----------------------------------------------------------------------------- unblocked


def _targets_to_mask(targets, num_queries: int, num_candidates: int) -> np.ndarray:
    """Any accepted target layout -> boolean mask [Q, C]."""
    t = np.asarray(targets)
    if t.ndim == 2 and t.dtype == bool:
        if t.shape != (num_queries, num_candidates):
            raise ValueError(f"target mask shape {t.shape} != sim shape "
                             f"{(num_queries, num_candidates)}")
        mask = t.copy()
    else:
        t = t.astype(np.int64)
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2 or t.shape[0] != num_queries:
            raise ValueError(f"targets must be [Q] ints, [Q,T] ints or a [Q,C] bool mask; "
                             f"got shape {t.shape} for Q={num_queries}")
        if np.any(t >= num_candidates) or np.any(t < -1):
            raise ValueError("target index out of range")
        mask = np.zeros((num_queries, num_candidates), bool)
        rows, cols = np.nonzero(t >= 0)
        mask[rows, t[rows, cols]] = True
    empty = ~mask.any(axis=1)
    if empty.any():
        raise ValueError(f"{int(empty.sum())} queries have no true target "
                         f"(first: {int(np.argmax(empty))})")
    return mask


def retrieval_ranks(sim, targets) -> np.ndarray:
    """0-based rank of the best true target of each query row of ``sim`` [Q, C].

    Ties count against the target (see module docstring). Returns int64 [Q].
    """
    sim = np.asarray(sim, dtype=np.float32)
    if sim.ndim != 2:
        raise ValueError(f"sim must be [Q, C], got {sim.shape}")
    mask = _targets_to_mask(targets, *sim.shape)
    s = np.where(np.isnan(sim), -np.inf, sim)
    best = np.where(mask, s, -np.inf).max(axis=1)
    return ((s >= best[:, None]) & ~mask).sum(axis=1).astype(np.int64)


def recall_at_k(ranks, ks: Iterable[int] = DEFAULT_KS) -> dict[int, float]:
    """{K: fraction of queries whose rank < K}."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks")
    return {int(k): float(np.mean(ranks < k)) for k in ks}


def mrr(ranks) -> float:
    """Mean reciprocal rank, ranks 0-based."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks")
    return float(np.mean(1.0 / (ranks + 1.0)))


def summarize(ranks, ks: Iterable[int] = DEFAULT_KS, *, ci: bool = False
              ) -> dict[str, float]:
    """{'R@1': .., 'R@5': .., 'R@10': .., 'R@20': .., 'MRR': .., 'n': ..} (fractions);
    with ``ci``, also 'ci95': {metric: [lo, hi]} (bootstrap over the queries)."""
    ks = tuple(ks)
    out = {f"R@{k}": v for k, v in recall_at_k(ranks, ks).items()}
    out["MRR"] = mrr(ranks)
    out["n"] = int(np.asarray(ranks).size)
    if ci:
        out["ci95"] = rank_intervals(ranks, ks)
    return out


# ----------------------------------------------------------------------------- bootstrap

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
_CHUNK_ELEMENTS = 4_000_000  # resample indices drawn at a time (memory bound, ~32 MB)


def bootstrap_means(values, n_resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Column means of ``values`` [n, m] (one row per resampling unit, e.g. per query) on
    ``n_resamples`` resamples of the rows with replacement -> [n_resamples, m].

    Resample b draws its n row indices as ``rng.integers(0, n, size=n)``, the b-th such draw
    of ``np.random.default_rng(seed)``; the draws are made in chunks of whole resamples
    (same stream, bounded memory), so every metric of one call sees the same resamples."""
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        v = v[:, None]
    n = v.shape[0]
    if n == 0:
        raise ValueError("no values to resample")
    rng = np.random.default_rng(seed)
    out = np.empty((int(n_resamples), v.shape[1]))
    step = max(1, _CHUNK_ELEMENTS // n)
    for b0 in range(0, int(n_resamples), step):
        idx = rng.integers(0, n, size=(min(step, int(n_resamples) - b0), n))
        # How often each unit was drawn, per resample; the mean is then one product.
        flat = (idx + n * np.arange(idx.shape[0])[:, None]).ravel()
        counts = np.bincount(flat, minlength=idx.size).reshape(idx.shape)
        out[b0:b0 + idx.shape[0]] = counts @ v / n
    return out


def bootstrap_ci(values, level: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Percentile bootstrap interval of the mean of each column of ``values`` [n, m]
    (or [n]) -> [m, 2] (or [2]): the (1-level)/2 and (1+level)/2 quantiles of the
    resampled means (`bootstrap_means`)."""
    v = np.asarray(values, np.float64)
    means = bootstrap_means(v, n_resamples, seed)
    alpha = 100 * (1 - level) / 2
    lo_hi = np.percentile(means, [alpha, 100 - alpha], axis=0).T
    return lo_hi[0] if v.ndim == 1 else lo_hi


def per_query_rank_values(ranks, ks: Iterable[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """{metric: its per-query value} whose means are `summarize`'s numbers (hit at K,
    reciprocal rank)."""
    r = np.asarray(ranks)
    out = {f"R@{k}": (r < k).astype(np.float64) for k in ks}
    out["MRR"] = 1.0 / (r.astype(np.float64) + 1.0)
    return out


def intervals(per_unit: Mapping[str, np.ndarray], **kw) -> dict[str, list[float]]:
    """{metric: [lo, hi]} from {metric: per-unit values}, all metrics on the same resamples."""
    names = list(per_unit)
    ci = bootstrap_ci(np.stack([np.asarray(per_unit[k], np.float64) for k in names], 1), **kw)
    return {k: [float(lo), float(hi)] for k, (lo, hi) in zip(names, ci)}


def rank_intervals(ranks, ks: Iterable[int] = DEFAULT_KS, **kw) -> dict[str, list[float]]:
    """Bootstrap 95% intervals (resampling the queries) of R@K and MRR from the ranks."""
    return intervals(per_query_rank_values(ranks, ks), **kw)


def in_batch_metrics(x, y, batch_size: int = 64, ks: Iterable[int] = DEFAULT_KS, *,
                     ci: bool = False) -> dict[str, dict[str, float]]:
    """The original's in-batch retrieval: consecutive batches of ``batch_size`` pairs
    (last partial batch kept, as in spec §4), row i of x pairs with row i of y.

    Returns {'x2y': summary, 'y2x': summary}. Note that in a batch smaller than K,
    Recall@K is 1 by construction (as in the original). ``ci``: intervals from resampling
    the queries, each keeping the rank it got in its batch.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must pair row by row: {x.shape[0]} != {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("no pairs")
    x2y, y2x = [], []
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        sim = xb @ yb.T
        diag = np.arange(xb.shape[0])
        x2y.append(retrieval_ranks(sim, diag))
        y2x.append(retrieval_ranks(sim.T, diag))
    return {"x2y": summarize(np.concatenate(x2y), ks, ci=ci),
            "y2x": summarize(np.concatenate(y2x), ks, ci=ci)}


# ----------------------------------------------------------------------------- blocked


def _normalise_targets(targets, num_queries: int, num_candidates: int) -> np.ndarray:
    """-> int32 [Q, T] padded with -1, validated."""
    t = np.asarray(targets)
    if t.dtype == bool:
        raise ValueError("blocked_ranks takes int targets ([Q] or [Q,T] padded with -1), "
                         "not a dense [Q,C] mask")
    if t.ndim == 1 and t.dtype == object:  # ragged lists of indices
        width = max(1, max(len(r) for r in t))
        out = np.full((num_queries, width), -1, np.int64)
        for i, r in enumerate(t):
            out[i, :len(r)] = r
        t = out
    t = t.astype(np.int64)
    if t.ndim == 1:
        t = t[:, None]
    if t.shape[0] != num_queries:
        raise ValueError(f"{t.shape[0]} target rows for {num_queries} queries")
    if np.any(t >= num_candidates) or np.any(t < -1):
        raise ValueError("target index out of range")
    if np.any((t < 0).all(axis=1)):
        raise ValueError("a query has no true target")
    return t.astype(np.int32)


@jax.jit
def _block_sim(q, c):
    # The one kernel that produces every score (both passes call it with the same block
    # shapes), so an exact tie in real arithmetic is an exact tie here too.
    return jnp.dot(q, c.T, preferred_element_type=jnp.float32)


@jax.jit
def _block_target_best(s, col0, tgt):
    """Best score among the targets that fall in this column block ([Qb]; -inf if none)."""
    s = jnp.where(jnp.isnan(s), -jnp.inf, s)
    cols = col0 + jnp.arange(s.shape[1])
    is_t = (cols[None, None, :] == tgt[:, :, None]).any(axis=1)
    return jnp.where(is_t, s, -jnp.inf).max(axis=1)


@jax.jit
def _block_count(s, col0, n_valid, tgt, best):
    """Per query: number of valid non-target columns of this block scoring >= best."""
    s = jnp.where(jnp.isnan(s), -jnp.inf, s)
    cols = col0 + jnp.arange(s.shape[1])
    is_t = (cols[None, None, :] == tgt[:, :, None]).any(axis=1)
    hit = (s >= best[:, None]) & ~is_t & (cols < n_valid)[None, :]
    return hit.sum(axis=1, dtype=jnp.int32)


def _pad_rows(a: np.ndarray, multiple: int) -> np.ndarray:
    pad = (-a.shape[0]) % multiple
    if pad:
        a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
    return a


def blocked_ranks(queries, candidates, targets, block_size: int = 1024, *,
                  mesh: jax.sharding.Mesh | None = None, progress: bool = False
                  ) -> np.ndarray:
    """Ranks of ``targets`` for ``queries`` [Q,E] against ``candidates`` [C,E], computed
    block by block (memory O(block_size^2), never Q x C).

    Equal to ``retrieval_ranks(queries @ candidates.T, targets)`` (same tie rule).
    ``targets``: int [Q], int [Q,T] padded with -1, or a sequence of index lists.
    ``mesh``: optional 1-axis mesh; each query block is sharded over its first axis
    (``block_size`` must then be a multiple of the mesh size), candidates replicated.
    """
    q = np.asarray(queries, np.float32)
    c = np.asarray(candidates, np.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"queries {q.shape} and candidates {c.shape} must be [*, E]")
    nq, nc = q.shape[0], c.shape[0]
    tgt = _normalise_targets(targets, nq, nc)
    bs = int(block_size)
    qp, cp = _pad_rows(q, bs), _pad_rows(c, bs)
    tp = np.concatenate([tgt, np.full((qp.shape[0] - nq, tgt.shape[1]), -1, np.int32)]) \
        if qp.shape[0] > nq else tgt
    q_sharding = None
    if mesh is not None:
        axis = mesh.axis_names[0]
        if bs % mesh.shape[axis]:
            raise ValueError(f"block_size {bs} must be a multiple of the mesh size "
                             f"{mesh.shape[axis]}")
        P = jax.sharding.PartitionSpec
        q_sharding = jax.sharding.NamedSharding(mesh, P(axis, None))
        rep = jax.sharding.NamedSharding(mesh, P())
    n_cb = cp.shape[0] // bs
    ranks = np.zeros(qp.shape[0], np.int64)
    row_blocks = range(0, qp.shape[0], bs)
    if progress:
        from tqdm import tqdm
        row_blocks = tqdm(row_blocks, desc="ranking", unit="block", leave=False)
    for r0 in row_blocks:
        qb, tb = qp[r0:r0 + bs], tp[r0:r0 + bs]
        if q_sharding is not None:
            qb = jax.device_put(qb, q_sharding)
            tb = jax.device_put(tb, q_sharding)
        else:
            qb, tb = jnp.asarray(qb), jnp.asarray(tb)
        # Pass 1: target scores from the column blocks that contain targets only.
        valid_t = tp[r0:r0 + bs][tp[r0:r0 + bs] >= 0]
        best = jnp.full((bs,), -jnp.inf, jnp.float32)
        for cb in np.unique(valid_t // bs):
            cblk = cp[cb * bs:(cb + 1) * bs]
            if q_sharding is not None:
                cblk = jax.device_put(cblk, rep)
            best = jnp.maximum(best, _block_target_best(_block_sim(qb, cblk), cb * bs, tb))
        # Pass 2: count non-targets at or above the best target score.
        count = jnp.zeros((bs,), jnp.int32)
        for cb in range(n_cb):
            cblk = cp[cb * bs:(cb + 1) * bs]
            if q_sharding is not None:
                cblk = jax.device_put(cblk, rep)
            count = count + _block_count(_block_sim(qb, cblk), cb * bs, nc, tb, best)
        ranks[r0:r0 + bs] = np.asarray(count)
    return ranks[:nq]


def full_split_metrics(x, y, x2y_targets=None, y2x_targets=None, block_size: int = 1024,
                       ks: Iterable[int] = DEFAULT_KS, **kw) -> dict[str, dict[str, float]]:
    """Retrieval against the whole split, both directions. Default targets: row i <-> row i.

    Pass explicit targets (e.g. every row holding the same molecule) to count duplicates
    as correct answers instead of letting identical candidates tie against the target.
    """
    n = np.asarray(x).shape[0]
    diag = np.arange(n)
    x2y = blocked_ranks(x, y, diag if x2y_targets is None else x2y_targets, block_size, **kw)
    y2x = blocked_ranks(y, x, diag if y2x_targets is None else y2x_targets, block_size, **kw)
    return {"x2y": summarize(x2y, ks), "y2x": summarize(y2x, ks)}


def duplicate_targets(keys: Sequence) -> np.ndarray:
    """Row i's targets = every row j with keys[j] == keys[i] (int [N, T] padded with -1).

    Used for full-split retrieval where the same molecule / text / protein appears in
    several pairs: those rows are all correct answers.
    """
    groups: dict = {}
    for j, k in enumerate(keys):
        groups.setdefault(k, []).append(j)
    width = max(len(g) for g in groups.values()) if groups else 1
    out = np.full((len(keys), width), -1, np.int32)
    for i, k in enumerate(keys):
        g = groups[k]
        out[i, :len(g)] = g
    return out


# ----------------------------------------------------------------------- classification


def classification_metrics(sim, labels, ks: Sequence[int] = (1, 5), *, ci: bool = False
                           ) -> dict[str, float]:
    """Zero-shot classification: ``sim`` [Q, n_classes]; ``labels`` a [Q, n_classes] bool
    mask or a list of label-index lists (any listed class is correct).

    Returns accuracy (= top-1), top-K for each K, MRR and n; with ``ci`` also
    'ci95': {metric: [lo, hi]} (bootstrap over the queries).
    """
    sim = np.asarray(sim, np.float32)
    if not isinstance(labels, np.ndarray):
        mask = np.zeros(sim.shape, bool)
        for i, row in enumerate(labels):
            mask[i, list(row)] = True
        labels = mask
    ranks = retrieval_ranks(sim, labels)
    out = {"accuracy": float(np.mean(ranks < 1))}
    out.update({f"top{k}": float(np.mean(ranks < k)) for k in ks})
    out["MRR"] = mrr(ranks)
    out["n"] = int(ranks.size)
    if ci:
        per_query = {"accuracy": (ranks < 1).astype(np.float64)}
        per_query.update({f"top{k}": (ranks < k).astype(np.float64) for k in ks})
        per_query["MRR"] = 1.0 / (ranks + 1.0)
        out["ci95"] = intervals(per_query)
    return out


def random_baseline(num_candidates: int, num_targets: int = 1,
                    ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Analytic expectation for a random scorer without ties: with C candidates of which
    T are correct, the number of wrong ones ranked before the first correct one is
    uniform-like; P(rank < K) = 1 - C(C-T, K)/C(C, K), E[1/(rank+1)] exactly.
    """
    C, T = int(num_candidates), int(num_targets)
    if not 1 <= T <= C:
        raise ValueError("need 1 <= num_targets <= num_candidates")
    # P(rank >= r) = prod_{i<r} (C-T-i)/(C-i): the first r draws are all wrong.
    n_wrong = C - T
    p_ge = np.ones(n_wrong + 2)
    for r in range(1, n_wrong + 2):
        p_ge[r] = p_ge[r - 1] * max(n_wrong - (r - 1), 0) / (C - (r - 1))
    p_eq = p_ge[:-1] - p_ge[1:]  # P(rank == r), r = 0..n_wrong
    out = {f"R@{k}": float(1.0 - p_ge[min(k, n_wrong + 1)]) for k in ks}
    out["MRR"] = float(np.sum(p_eq / np.arange(1, n_wrong + 2)))
    out["n"] = 0
    return out


def format_table(rows: Mapping[str, Mapping[str, float]], ks: Iterable[int] = DEFAULT_KS,
                 percent: bool = True) -> str:
    """Markdown table of {row name: summary} (fractions shown as percentages)."""
    cols = [f"R@{k}" for k in ks] + ["MRR"]
    lines = ["| " + " | ".join(["retrieval"] + cols + ["n"]) + " |",
             "|" + "---|" * (len(cols) + 2)]
    for name, s in rows.items():
        vals = [f"{100 * s[c]:.2f}" if percent else f"{s[c]:.4f}" for c in cols]
        lines.append("| " + " | ".join([name] + vals + [str(s.get("n", ""))]) + " |")
    return "\n".join(lines)
