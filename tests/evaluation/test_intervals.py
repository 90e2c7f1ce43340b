"""Bootstrap intervals (metrics.bootstrap_ci and the `ci=True` summaries): they contain the
point value, shrink with more queries, equal a plain loop over resamples for a fixed seed,
and collapse to the value when every query has the same rank."""
import numpy as np
import pytest

from molbind_jax.evaluation import metrics


def _ranks(n, seed=0):
    return np.random.default_rng(seed).geometric(0.2, size=n) - 1


def test_interval_contains_the_point_value():
    ranks = _ranks(300)
    s = metrics.summarize(ranks, ci=True)
    assert set(s["ci95"]) == {"R@1", "R@5", "R@10", "R@20", "MRR"}
    for k, (lo, hi) in s["ci95"].items():
        assert lo < s[k] < hi, (k, lo, s[k], hi)
    # The point values are the same as without intervals.
    plain = metrics.summarize(ranks)
    assert {k: v for k, v in s.items() if k != "ci95"} == plain


def test_interval_shrinks_with_more_queries():
    small = metrics.rank_intervals(_ranks(50, seed=1))
    large = metrics.rank_intervals(_ranks(5000, seed=2))
    for k in small:
        assert large[k][1] - large[k][0] < 0.5 * (small[k][1] - small[k][0]), k


def test_vectorised_equals_a_plain_loop(monkeypatch):
    ranks = _ranks(37, seed=3)
    b, seed = 200, 7
    rng = np.random.default_rng(seed)
    stats = {k: [] for k in ("R@1", "R@5", "R@10", "R@20", "MRR")}
    for _ in range(b):
        r = ranks[rng.integers(0, len(ranks), size=len(ranks))]
        for k, v in metrics.recall_at_k(r).items():
            stats[f"R@{k}"].append(v)
        stats["MRR"].append(metrics.mrr(r))
    want = {k: np.percentile(v, [2.5, 97.5]) for k, v in stats.items()}
    # Small chunks: the resamples are drawn in several pieces and must be the same stream.
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 37 * 3)  # 3 resamples at a time
    got = metrics.rank_intervals(ranks, n_resamples=b, seed=seed)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-12)
    # Another seed gives other resamples.
    assert metrics.rank_intervals(ranks, n_resamples=b, seed=seed + 1) != got


def test_constant_ranks_give_a_degenerate_interval():
    s = metrics.summarize(np.full(40, 3), ci=True)
    assert s["ci95"]["R@1"] == [0.0, 0.0]
    assert s["ci95"]["R@5"] == [1.0, 1.0]
    assert s["ci95"]["MRR"] == pytest.approx([0.25, 0.25])


def test_bootstrap_ci_shapes_and_level():
    v = np.random.default_rng(4).normal(size=(500, 2))
    ci = metrics.bootstrap_ci(v)
    assert ci.shape == (2, 2)
    assert metrics.bootstrap_ci(v[:, 0]).shape == (2,)
    narrow = metrics.bootstrap_ci(v[:, 0], level=0.5)
    assert ci[0, 0] < narrow[0] < narrow[1] < ci[0, 1]
    with pytest.raises(ValueError, match="no values"):
        metrics.bootstrap_ci(np.zeros(0))


def test_classification_and_in_batch_intervals():
    rng = np.random.default_rng(5)
    sim = rng.normal(size=(80, 6))
    labels = [[int(i % 6)] for i in range(80)]
    sim[np.arange(40), [l[0] for l in labels[:40]]] += 5  # half the queries are easy
    out = metrics.classification_metrics(sim, labels, ci=True)
    assert set(out["ci95"]) == {"accuracy", "top1", "top5", "MRR"}
    for k, (lo, hi) in out["ci95"].items():
        assert lo <= out[k] <= hi
    assert out["ci95"]["accuracy"][0] < out["accuracy"] < out["ci95"]["accuracy"][1]
    assert "ci95" not in metrics.classification_metrics(sim, labels)
    x = rng.normal(size=(70, 8)).astype(np.float32)
    ib = metrics.in_batch_metrics(x, x + 0.5 * rng.normal(size=x.shape).astype(np.float32), ci=True)
    assert ib["x2y"]["ci95"]["R@1"][0] <= ib["x2y"]["R@1"] <= ib["x2y"]["ci95"]["R@1"][1]
