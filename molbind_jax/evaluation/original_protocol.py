"""The original MolBind retrieval protocol, reproduced number for number (spec section 4).

The original (`model/run.py`, `eval_retrieval_inbatch` and `eval_retrieval_fullset`) ranks
differently from `molbind_jax.evaluation.metrics`, and this module exists so that its published numbers
can be checked against ours. What it does, and how each step is reproduced here:

* Features are the raw projections `proj(ln(pool))`, NOT L2-normalised (spec bug 2), so the
  score is a plain dot product. Pass unnormalised embeddings (`MolBind.embed_*(...,
  normalize=False)`).
* Under bf16 autocast the representations are bf16 and so is the similarity matrix:
  `bf16=True` rounds both embeddings to bfloat16, multiplies in float32 (as a GPU GEMM
  accumulates) and rounds the scores to bfloat16. That produces many exact ties.
* The rank of the true partner (row i pairs with column i) is its position in a descending
  `argsort` of the query's row. The original's GPU sort is not stable, so tied candidates came
  in an arbitrary order; here ties are broken by candidate index (a stable sort: among equal
  scores the lower index comes first), which is what torch's stable CPU sort gives. Ties are
  counted (`tied_queries`) so their effect is visible.
* In-batch: consecutive batches of `batch_size` (64) in file order, the last partial batch
  kept; `Acc = #(rank == 0)`, `R@20 = #(rank < 20)`, summed over batches, divided by N, x100,
  NOT rounded (the original logs the raw floats).
* Full set: every query against all N candidates (the original computes the N x N scores in
  chunks of 8 rows; chunking does not change a dot product's value); percentages rounded to 2
  decimals as the original does.

Ours (`metrics`) differs on purpose: cosine scores in float32, ties counted against the target,
duplicates (same molecule / text / protein) all count as correct. `evaluate --protocol=both`
prints the two side by side.
"""
from __future__ import annotations

import numpy as np

KEYS = ("a2b_acc", "a2b_rec20", "b2a_acc", "b2a_rec20")


def similarity(a, b, *, bf16: bool = False) -> np.ndarray:
    """a [Na, E] . b [Nb, E]^T as the original computes it (float32 result either way)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"embeddings must be [N, E] with the same E, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("non-finite embeddings: the original protocol has no rule for failed rows; "
                         "drop them (and their partners) first")
    if not bf16:
        return a @ b.T
    import ml_dtypes

    bf = ml_dtypes.bfloat16
    sim = a.astype(bf).astype(np.float32) @ b.astype(bf).astype(np.float32).T
    return sim.astype(bf).astype(np.float32)


def diagonal_ranks(sim: np.ndarray, offset: int = 0) -> tuple[np.ndarray, int]:
    """Rank of column `offset + i` in row i's descending stable sort, and the number of rows
    where another candidate has exactly the true partner's score (a tie the sort decided)."""
    sim = np.asarray(sim)
    rows = np.arange(sim.shape[0])
    target = offset + rows
    # Stable descending order: sort by (-score, index).
    order = np.argsort(-sim, axis=1, kind="stable")
    ranks = np.argmax(order == target[:, None], axis=1)
    true = sim[rows, target]
    ties = ((sim == true[:, None]).sum(axis=1) > 1).sum()
    return ranks.astype(np.int64), int(ties)


def in_batch(a, b, *, batch_size: int = 64, bf16: bool = False) -> dict:
    """`eval_retrieval_inbatch`: {a2b_acc, a2b_rec20, b2a_acc, b2a_rec20 (%, unrounded), n,
    tied_queries}."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape[0] != b.shape[0] or a.shape[0] == 0:
        raise ValueError(f"a and b must pair row by row and be non-empty: {a.shape[0]} vs {b.shape[0]}")
    counts = dict.fromkeys(KEYS, 0)
    ties = 0
    for start in range(0, a.shape[0], batch_size):
        sim = similarity(a[start:start + batch_size], b[start:start + batch_size], bf16=bf16)
        for direction, s in (("a2b", sim), ("b2a", sim.T)):
            ranks, t = diagonal_ranks(s)
            counts[f"{direction}_acc"] += int((ranks == 0).sum())
            counts[f"{direction}_rec20"] += int((ranks < 20).sum())
            ties += t
    n = a.shape[0]
    out = {k: v / n * 100 for k, v in counts.items()}
    return dict(out, n=n, tied_queries=ties)


def full_set(a, b, *, bf16: bool = False) -> dict:
    """`eval_retrieval_fullset`: the same keys, rounded to 2 decimals as the original."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape[0] != b.shape[0] or a.shape[0] == 0:
        raise ValueError(f"a and b must pair row by row and be non-empty: {a.shape[0]} vs {b.shape[0]}")
    sim = similarity(a, b, bf16=bf16)
    out, ties = {}, 0
    for direction, s in (("a2b", sim), ("b2a", sim.T)):
        ranks, t = diagonal_ranks(s)
        out[f"{direction}_acc"] = round(float((ranks == 0).mean()) * 100, 2)
        out[f"{direction}_rec20"] = round(float((ranks < 20).mean()) * 100, 2)
        ties += t
    return dict(out, n=int(a.shape[0]), tied_queries=ties)


def evaluate(a, b, *, batch_size: int = 64, bf16: bool = False) -> dict:
    """{"in_batch": in_batch(...), "full": full_set(...)} of one pair type, rows in file order."""
    return {"in_batch": in_batch(a, b, batch_size=batch_size, bf16=bf16), "full": full_set(a, b, bf16=bf16)}
