"""Metrics on hand-made similarity matrices: tie rule, duplicates, K boundaries, partial
in-batch batches, blocked == unblocked ranking, analytic random baseline."""
import itertools

import jax
import numpy as np
import pytest

from molbind_jax.evaluation import metrics


def test_ranks_simple_and_ties_count_against_target():
    sim = np.array([[0.9, 0.1, 0.5],    # target 0 is top -> 0
                    [0.5, 0.5, 0.1],    # target 1 ties with col 0 -> 1 (pessimistic)
                    [0.2, 0.2, 0.2]])   # all equal: target 2 behind both -> 2
    assert metrics.retrieval_ranks(sim, [0, 1, 2]).tolist() == [0, 1, 2]
    # Column order must not matter (no dependence on a sort's stability).
    perm = [2, 0, 1]
    inv = np.argsort(perm)
    assert metrics.retrieval_ranks(sim[:, perm], inv[[0, 1, 2]]).tolist() == [0, 1, 2]


def test_duplicates_do_not_count_against_each_other():
    sim = np.array([[0.3, 0.9, 0.9, 0.5]])
    mask = np.array([[False, True, True, False]])
    assert metrics.retrieval_ranks(sim, mask).tolist() == [0]
    # The best of several targets counts; non-targets above it do.
    sim = np.array([[0.8, 0.1, 0.6, 0.7]])
    assert metrics.retrieval_ranks(sim, np.array([[1, 2]])).tolist() == [2]
    assert metrics.retrieval_ranks(sim, np.array([[2, -1]])).tolist() == [2]


def test_nan_scores_rank_last_and_missing_target_raises():
    sim = np.array([[np.nan, 0.1, 0.2], [0.5, np.nan, 0.1]])
    assert metrics.retrieval_ranks(sim, [0, 0]).tolist() == [2, 0]
    with pytest.raises(ValueError, match="no true target"):
        metrics.retrieval_ranks(sim, np.zeros((2, 3), bool))


def test_recall_boundaries_k1_k20_and_mrr():
    ranks = np.array([0, 1, 19, 20, 4])
    r = metrics.recall_at_k(ranks, (1, 5, 10, 20))
    assert r == {1: 0.2, 5: 0.6, 10: 0.6, 20: 0.8}
    assert metrics.mrr(ranks) == pytest.approx(np.mean([1, 1 / 2, 1 / 20, 1 / 21, 1 / 5]))


def test_in_batch_partial_last_batch_kept():
    rng = np.random.default_rng(0)
    n = 64 + 5
    x = rng.normal(size=(n, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = x + 0.01 * rng.normal(size=(n, 32)).astype(np.float32)
    # Row 66 of y points elsewhere; in its batch of 5 it can rank at most 4.
    y[66] = -x[66]
    out = metrics.in_batch_metrics(x, y, batch_size=64)
    assert out["x2y"]["n"] == n and out["y2x"]["n"] == n
    assert out["x2y"]["R@1"] == pytest.approx((n - 1) / n)
    # R@5 covers the whole last batch of 5, so everything is found.
    assert out["x2y"]["R@5"] == 1.0
    # Direct check of the batch boundary: the same data in one batch differs.
    whole = metrics.in_batch_metrics(x, y, batch_size=1000)
    ranks = metrics.retrieval_ranks(x @ y.T, np.arange(n))
    assert whole["x2y"]["R@5"] == pytest.approx(np.mean(ranks < 5))


@pytest.mark.parametrize("block_size", [4, 7, 64])
def test_blocked_equals_unblocked_with_exact_ties(block_size):
    rng = np.random.default_rng(1)
    # Small integers -> dot products exact in float32, so ties are exact ties.
    q = rng.integers(-2, 3, size=(23, 6)).astype(np.float32)
    c = rng.integers(-2, 3, size=(31, 6)).astype(np.float32)
    c[5] = c[7]  # duplicate candidates
    sim = q @ c.T
    tgt = rng.integers(0, 31, size=23)
    assert (sim == sim[np.arange(23), tgt][:, None]).sum() > 23  # ties really occur
    want = metrics.retrieval_ranks(sim, tgt)
    got = metrics.blocked_ranks(q, c, tgt, block_size=block_size)
    np.testing.assert_array_equal(got, want)
    # Several targets, padded with -1, including targets in different column blocks.
    multi = np.stack([tgt, (tgt + 13) % 31, np.full(23, -1)], axis=1)
    mask = np.zeros_like(sim, bool)
    for i, row in enumerate(multi):
        mask[i, row[row >= 0]] = True
    np.testing.assert_array_equal(metrics.blocked_ranks(q, c, multi, block_size),
                                  metrics.retrieval_ranks(sim, mask))


def test_blocked_sharded_over_devices_matches():
    devs = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devs), ("data",))
    rng = np.random.default_rng(2)
    q = rng.normal(size=(40, 16)).astype(np.float32)
    c = rng.normal(size=(50, 16)).astype(np.float32)
    tgt = rng.integers(0, 50, size=40)
    want = metrics.retrieval_ranks(q @ c.T, tgt)
    got = metrics.blocked_ranks(q, c, tgt, block_size=2 * len(devs),
                                mesh=mesh)
    np.testing.assert_array_equal(got, want)


def test_duplicate_targets_and_full_split():
    keys = ["a", "b", "a", "c"]
    t = metrics.duplicate_targets(keys)
    assert t.tolist() == [[0, 2], [1, -1], [0, 2], [3, -1]]
    x = np.eye(4, dtype=np.float32)
    x[2] = x[0]  # rows 0 and 2 hold the same molecule on both sides
    y = x.copy()
    naive = metrics.full_split_metrics(x, y, block_size=2)
    dedup = metrics.full_split_metrics(x, y, x2y_targets=t, y2x_targets=t, block_size=2)
    assert naive["x2y"]["R@1"] < 1.0  # identical candidates tie against the target
    assert dedup["x2y"]["R@1"] == 1.0 and dedup["y2x"]["R@1"] == 1.0


def test_classification_accuracy_top5():
    sim = np.array([[0.1, 0.9, 0.2, 0.3, 0.0, 0.0, 0.05],
                    [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])
    out = metrics.classification_metrics(sim, [[1], [4, 6]])
    assert out["accuracy"] == 0.5
    assert out["top5"] == 1.0
    assert out["MRR"] == pytest.approx((1 + 1 / 5) / 2)


def test_random_baseline_analytic_matches_enumeration():
    C, T = 6, 2
    ranks = []
    for perm in itertools.permutations(range(C)):
        # candidates 0..T-1 are correct; rank = wrong items before the first correct one
        ranks.append(next(i for i, p in enumerate(perm) if p < T))
    ranks = np.array(ranks)
    got = metrics.random_baseline(C, T, ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert got[f"R@{k}"] == pytest.approx(np.mean(ranks < k))
    assert got["MRR"] == pytest.approx(np.mean(1 / (ranks + 1)))
    assert metrics.random_baseline(100, 1)["R@20"] == pytest.approx(0.2)
