"""Brute-force top-k and faiss indexes: top-k == a full stable sort (ties by row), batched ==
one by one, non-finite rows excluded and counted, ids kept, rows that are not unit length
refused, top_k < 1 refused, the `molbind_jax.index` command's errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from molbind_jax.cli import InputError
from molbind_jax.inference import index as ix
from molbind_jax.inference import search

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _full_sort(matrix, q, k):
    s = matrix @ q
    order = np.lexsort((np.arange(len(s)), -s))[:k]
    return order, s[order]


def test_argpartition_top_k_equals_full_sort_with_ties():
    rng = np.random.default_rng(0)
    # small integer entries: many exactly equal scores, ties across every cut
    m = rng.integers(-2, 3, size=(300, 6)).astype(np.float32)
    qs = rng.integers(-2, 3, size=(20, 6)).astype(np.float32)
    for k in (1, 2, 7, 50, 299, 300, 1000):
        rows, scores = ix.top_k_batch(m, qs, k)
        assert rows.shape == (20, min(k, 300))
        for q, r, s in zip(qs, rows, scores):
            want_r, want_s = _full_sort(m, q, k)
            np.testing.assert_array_equal(r, want_r)
            np.testing.assert_array_equal(s, want_s)


def test_batched_queries_equal_one_by_one(monkeypatch):
    rng = np.random.default_rng(1)
    m = _unit(rng.standard_normal((500, 16)))
    qs = _unit(rng.standard_normal((37, 16)))
    # force several score blocks so that the block loop is exercised
    monkeypatch.setattr(ix, "SCORE_BYTES", 4 * 500 * 5)
    bf = ix.BruteForceIndex(m.copy(), [f"r{i}" for i in range(500)])
    batch = bf.search(qs, 10)
    for i, q in enumerate(qs):
        one = bf.search(q[None], 10)
        np.testing.assert_array_equal(batch.rows[i], one.rows[0])
        # a matrix product over a block of queries rounds differently from one over a
        # single query (BLAS kernels): scores agree to float32 rounding
        np.testing.assert_allclose(batch.scores[i], one.scores[0], rtol=0, atol=1e-6)
        assert batch.ids[i] == one.ids[0] == [f"r{r}" for r in one.rows[0]]


def test_top_k_below_one_is_refused():
    m = np.eye(3, dtype=np.float32)
    for k in (0, -1):
        with pytest.raises(InputError, match="at least 1"):
            ix.top_k_batch(m, m[:1], k)
        with pytest.raises(InputError, match="at least 1"):
            ix.BruteForceIndex(m.copy(), ["a", "b", "c"]).search(m[:1], k)
        with pytest.raises(InputError, match="at least 1"):
            search.top_k(m, m[0], k)


def test_nan_rows_excluded_counted_and_ids_kept(tmp_path):
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((50, 8)))
    bad = [3, 17, 49]
    x[bad[:2]] = np.nan
    x[bad[2], 0] = np.inf
    npy = tmp_path / "x.npy"
    np.save(npy, x)
    (tmp_path / "x.ids.txt").write_text("".join(f"mol{i}\n" for i in range(50)))
    meta = ix.build(str(npy), str(tmp_path / "idx"), kind="exact", progress=False)
    assert meta["rows"] == 50 and meta["indexed"] == 47
    assert meta["nonfinite_excluded"] == 3 and meta["nonfinite_rows"] == bad
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["nonfinite_rows"] == bad
    built = ix.open_index(str(tmp_path / "idx"))
    brute = ix.open_index(str(npy))  # reads x.ids.txt beside x.npy
    assert brute.meta["nonfinite_excluded"] == 3
    qs = x[[0, 10, 20]]
    for idx in (built, brute):
        hits = idx.search(qs, 47)
        assert not set(hits.rows.ravel()) & set(bad)
        assert sorted(hits.rows[0]) == sorted(set(range(50)) - set(bad))
        for rows, ids in zip(hits.rows, hits.ids):
            assert ids == [f"mol{r}" for r in rows]
        np.testing.assert_array_equal(hits.rows[:, 0], [0, 10, 20])  # each query finds itself


def test_exact_index_equals_brute_force_and_ivf_full_probe_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    x = _unit(rng.standard_normal((400, 32)))
    np.save(tmp_path / "x.npy", x)
    qs = _unit(rng.standard_normal((25, 32)))
    brute = ix.open_index(str(tmp_path / "x.npy")).search(qs, 10)
    ix.build(str(tmp_path / "x.npy"), str(tmp_path / "exact"), progress=False)
    exact = ix.open_index(str(tmp_path / "exact")).search(qs, 10)
    np.testing.assert_array_equal(exact.rows, brute.rows)
    np.testing.assert_allclose(exact.scores, brute.scores, atol=1e-5)
    meta = ix.build(str(tmp_path / "x.npy"), str(tmp_path / "ivf"), kind="ivf", nlist=8,
                    progress=False)
    assert meta["nlist"] == 8
    ivf_all = ix.open_index(str(tmp_path / "ivf"), nprobe=8).search(qs, 10)
    np.testing.assert_array_equal(ivf_all.rows, brute.rows)
    ix.build(str(tmp_path / "x.npy"), str(tmp_path / "hnsw"), kind="hnsw", progress=False)
    hnsw = ix.open_index(str(tmp_path / "hnsw"), ef_search=400).search(qs, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw.rows, brute.rows)])
    assert recall >= 0.9


def test_rows_not_unit_length_refused_unless_normalize(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 8)).astype(np.float32)  # norms around 2.8
    x[5] = 0.0
    np.save(tmp_path / "raw.npy", x)
    with pytest.raises(InputError, match="not unit length.*--normalize"):
        ix.build(str(tmp_path / "raw.npy"), str(tmp_path / "idx"), progress=False)
    assert not (tmp_path / "idx").exists()
    with pytest.raises(InputError, match="not unit length"):
        ix.open_index(str(tmp_path / "raw.npy"))
    meta = ix.build(str(tmp_path / "raw.npy"), str(tmp_path / "idx"), normalize=True,
                    progress=False)
    assert meta["normalized"] and meta["zero_rows"] == [5] and meta["indexed"] == 29
    hits = ix.open_index(str(tmp_path / "idx")).search(x[[2]], 3)
    want, want_s = _full_sort(np.delete(_unit(np.delete(x, 5, 0)), [], 0), _unit(x[[2]])[0], 3)
    rows_wo5 = np.delete(np.arange(30), 5)
    np.testing.assert_array_equal(hits.rows[0], rows_wo5[want])
    assert hits.scores[0][0] == pytest.approx(float(np.linalg.norm(x[2])), rel=1e-5)
    with pytest.raises(InputError, match="applies to a .npy"):
        ix.open_index(str(tmp_path / "idx"), normalize=True)


def test_ids_file_must_match_rows(tmp_path):
    np.save(tmp_path / "x.npy", np.eye(4, dtype=np.float32))
    (tmp_path / "ids.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match="2 ids but the embeddings have 4 rows"):
        ix.build(str(tmp_path / "x.npy"), str(tmp_path / "idx"), ids=str(tmp_path / "ids.txt"),
                 progress=False)


def _index_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, ".pyshim"), REPO]))
    return subprocess.run([sys.executable, "-m", "molbind_jax.index", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_index_cli_build_and_errors(tmp_path):
    x = np.eye(5, dtype=np.float32)
    x[1] = np.nan
    np.save(tmp_path / "x.npy", x)
    ok = _index_cli("build", f"--embeddings={tmp_path / 'x.npy'}", f"--output={tmp_path / 'idx'}")
    assert ok.returncode == 0, ok.stderr
    assert "exact index of 4 of 5 rows x 5 (1 non-finite rows excluded" in ok.stdout
    assert (tmp_path / "idx" / "ids.txt").read_text().split() == ["0", "2", "3", "4"]
    for args, msg in [(("build", f"--embeddings={tmp_path / 'no.npy'}", f"--output={tmp_path / 'o'}"),
                       "no such embeddings file"),
                      (("build", f"--output={tmp_path / 'o'}"), "--embeddings is required"),
                      (("query", f"--embeddings={tmp_path / 'x.npy'}"), "usage: molbind-index build")]:
        bad = _index_cli(*args)
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == [bad.stderr.strip().splitlines()[-1]]
        assert bad.stderr.strip().startswith("error:") and msg in bad.stderr


def test_hit_records_and_writers(tmp_path):
    m = np.eye(3, dtype=np.float32)
    idx = ix.BruteForceIndex(m.copy(), ["a", "b", "c"])
    vecs = np.array([[1, 0, 0], [np.nan] * 3, [0, 0.6, 0.8]], np.float32)
    hits, ok = search.answer(idx, vecs, 2)
    recs = search.hit_records(["q0", "q1", "q2"], ["x", "", "z"], hits, ok,
                              labels=["la", "lb", "lc"],
                              failures=[{"index": 1, "reason": "empty_text", "detail": "empty"}])
    assert [(r["query_id"], r.get("rank"), r.get("id")) for r in recs] == [
        ("q0", 1, "a"), ("q0", 2, "b"), ("q1", None, None), ("q2", 1, "c"), ("q2", 2, "b")]
    assert recs[2]["error"] == "empty_text: empty" and recs[3]["label"] == "lc"
    search.write_hits(str(tmp_path / "h.tsv"), recs)
    lines = (tmp_path / "h.tsv").read_text().splitlines()
    assert lines[0] == "query_id\trank\trow\tid\tscore\tlabel" and len(lines) == 5
    assert lines[3].split("\t")[:4] == ["q2", "1", "2", "c"]
    search.write_hits(str(tmp_path / "h.jsonl"), recs)
    js = [json.loads(l) for l in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert len(js) == 5 and js[2] == {"query_id": "q1", "query": "", "error": "empty_text: empty"}
    assert js[3]["score"] == pytest.approx(0.8)


def test_read_queries_ids(tmp_path):
    p = tmp_path / "q.smi"
    p.write_text("CCO ethanol\n\nc1ccccc1\n")
    assert search.read_queries(str(p), "smiles") == (["ethanol", "1", "2"], ["CCO", "", "c1ccccc1"])
    assert search.read_queries(str(p), "text")[0] == ["0", "1", "2"]
