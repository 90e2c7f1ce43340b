"""search.top_k: NaN rows never returned, ties ordered by row, k larger than the index."""
import numpy as np
import pytest

from molbind_jax.inference import search


def test_top_k_skips_nan_rows_and_orders_ties_by_row():
    index = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]],
                     np.float32)
    hits = search.top_k(index, np.array([1.0, 0.0]), k=10)
    assert [r for r, _ in hits] == [0, 3, 4, 2]  # row 1 (NaN) never appears; 0 and 3 tie
    assert hits[0][1] == pytest.approx(1.0) and hits[2][1] == pytest.approx(0.6)
    assert [r for r, _ in search.top_k(index, np.array([0.0, 1.0]), k=2)] == [2, 4]


def test_top_k_rejects_bad_query():
    index = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="could not be embedded"):
        search.top_k(index, np.full(3, np.nan), 2)
    with pytest.raises(ValueError, match="dimensions"):
        search.top_k(index, np.ones(4), 2)


def test_labels_must_match_index(tmp_path):
    p = tmp_path / "labels.txt"
    p.write_text("a\n\nc\n")
    assert search.read_labels(str(p), 3) == ["a", "", "c"]
    with pytest.raises(ValueError, match="3 lines but the index has 4"):
        search.read_labels(str(p), 4)
