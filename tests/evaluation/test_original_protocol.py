"""The original's retrieval protocol against a direct torch implementation of spec section 4."""
import numpy as np
import pytest
import torch

from molbind_jax.evaluation import original_protocol as op


def direct(a, b, batch_size=64, bf16=False):
    """Spec section 4 written out with torch: per batch a.b^T, descending stable argsort, the
    position of the diagonal; full set against the global index, rounded to 2 decimals."""
    ta, tb = torch.tensor(a), torch.tensor(b)
    if bf16:
        ta, tb = ta.bfloat16(), tb.bfloat16()

    def ranks(sim, offset):
        order = torch.argsort(sim.float(), dim=1, descending=True, stable=True)
        want = torch.arange(offset, offset + sim.shape[0]).reshape(-1, 1)
        return (order == want).int().argmax(dim=-1)

    counts = dict.fromkeys(op.KEYS, 0.0)
    for s in range(0, len(a), batch_size):
        sim = torch.mm(ta[s:s + batch_size], tb[s:s + batch_size].T)
        for d, m in (("a2b", sim), ("b2a", sim.T)):
            r = ranks(m, 0)
            counts[f"{d}_acc"] += float((r == 0).sum())
            counts[f"{d}_rec20"] += float((r < 20).sum())
    inb = {k: v / len(a) * 100 for k, v in counts.items()}
    sim = torch.cat([torch.mm(ta[i:i + 8], tb.T) for i in range(0, len(a), 8)])
    full = {}
    for d, m in (("a2b", sim), ("b2a", sim.T)):
        r = torch.cat([ranks(m[i:i + 8], i) for i in range(0, len(a), 8)])
        full[f"{d}_acc"] = round(float((r == 0).float().mean()) * 100, 2)
        full[f"{d}_rec20"] = round(float((r < 20).float().mean()) * 100, 2)
    return inb, full


def hand_made(n=150, dim=8, seed=0):
    """Small integers: every dot product is exact in float32, and many are tied."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-2, 3, (n, dim)).astype(np.float32)
    b = (a + rng.integers(-1, 2, (n, dim))).astype(np.float32)
    b[5] = b[6]  # two identical candidates: a guaranteed tie
    return a, b


@pytest.mark.parametrize("bf16", [False, True])
def test_equals_direct_implementation_with_ties_and_partial_batch(bf16):
    a, b = hand_made()
    if bf16:  # exact bf16 inputs whose dot products (up to ~1000) need more than bf16's 8
        a, b = a * 9, b * 7  # bits: the rounded scores tie where float32 ones differ
        assert (op.similarity(a, b, bf16=True) != op.similarity(a, b)).any()
    out = op.evaluate(a, b, batch_size=64, bf16=bf16)  # 150 = 64 + 64 + 22 (partial batch kept)
    inb, full = direct(a, b, batch_size=64, bf16=bf16)
    for k in op.KEYS:
        assert out["in_batch"][k] == pytest.approx(inb[k], abs=1e-9), k
        assert out["full"][k] == full[k], k
    assert out["in_batch"]["n"] == out["full"]["n"] == 150
    assert out["full"]["tied_queries"] > 0


def test_ties_break_by_index_and_last_batch_counts():
    # 3 pairs; all candidates score the same: the stable sort puts index 0 first, so only
    # query 0 finds its partner at rank 0.
    a = np.ones((3, 2), np.float32)
    b = np.ones((3, 2), np.float32)
    full = op.full_set(a, b)
    assert full["a2b_acc"] == round(100 / 3, 2) and full["a2b_rec20"] == 100.0
    assert full["tied_queries"] == 6
    # batch 2: batches [0,1] and [2]; the last (single-row) batch is kept and scores a hit.
    inb = op.in_batch(a, b, batch_size=2)
    assert inb["a2b_acc"] == pytest.approx(200 / 3)  # rows 0 and 2


def test_unnormalised_dot_product_not_cosine():
    # Cosine would pick candidate 0 for query 0; the raw dot product prefers the longer vector.
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([[1.0, 0.0], [10.0, 1.0]], np.float32)
    assert op.full_set(a, b)["a2b_acc"] == 50.0


def test_bf16_rounds_scores():
    a = np.array([[1.0, 0.0]], np.float32)
    b = np.array([[1.0 + 2 ** -9, 0.0]], np.float32)  # not representable in bf16 (8 bits)
    assert op.similarity(a, b)[0, 0] != 1.0
    assert op.similarity(a, b, bf16=True)[0, 0] in (1.0, 1.0 + 2 ** -7)


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="pair row by row"):
        op.full_set(np.ones((3, 2)), np.ones((2, 2)))
    bad = np.ones((2, 2), np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        op.in_batch(bad, np.ones((2, 2)))
