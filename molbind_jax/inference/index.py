"""Vector indexes over an embedding file: built once, searched by many queries.

    python -m molbind_jax.index build --embeddings=mols.npy --output=mols.idx        # exact
    python -m molbind_jax.index build --embeddings=mols.npy --output=mols.idx --kind=hnsw
    molbind-index build --embeddings=X.npy --ids=X.ids.txt --output=IDX --kind=ivf --normalize

An index is a directory:
  index.faiss   the faiss index (inner product) over the indexed rows
  rows.npy      int64 [n_indexed]: the row of the embedding file each indexed row came from
  ids.txt       one id per indexed row (from --ids, or `X.ids.txt` beside `X.npy` when it
                exists; otherwise the row number)
  meta.json     kind, dim, counts (rows, indexed, non-finite excluded), normalisation, the
                library and its version, the search parameters

Kinds (faiss, inner product, so cosine on unit rows):
  exact  IndexFlatIP: every row scored; the same ranking as brute force up to float rounding
  hnsw   IndexHNSWFlat (graph; --hnsw_m, --ef_construction; search --ef_search): approximate
  ivf    IndexIVFFlat (k-means cells; --nlist; search --nprobe): approximate, quick to build

Rows with a NaN or an infinity (records that failed to embed) are excluded and counted; their
row numbers are in meta.json. Rows must be unit length (|norm - 1| <= UNIT_TOL): inner
products of other rows are not cosine scores, so such a file is refused unless --normalize
is given (then rows are L2-normalised and all-zero rows excluded and counted).

Brute force (`BruteForceIndex`, used by `search --index=X.npy`) follows the same rules:
top-k by np.argpartition and a sort of the k, equal scores ordered by row.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from molbind_jax.cli import InputError

KINDS = ("exact", "hnsw", "ivf")
UNIT_TOL = 1e-3
CHUNK = 65536  # rows per pass over the matrix (bounded temporaries)
SCORE_BYTES = 1 << 28  # brute force: at most this many bytes of scores at once


# ----------------------------------------------------------------------------- rows


def ids_path(embeddings: str) -> str:
    """`X.ids.txt` beside `X.npy` (written by embed)."""
    return (embeddings[:-4] if embeddings.endswith(".npy") else embeddings) + ".ids.txt"


def read_ids(path: str | None, n: int, embeddings: str = "") -> list[str]:
    """Ids of the n rows: from `path`, else `X.ids.txt` beside the embeddings, else row numbers."""
    if not path and embeddings and os.path.exists(ids_path(embeddings)):
        path = ids_path(embeddings)
    if not path:
        return [str(i) for i in range(n)]
    with open(path, encoding="utf-8") as f:
        ids = f.read().splitlines()
    if len(ids) != n:
        raise InputError(f"{path} has {len(ids)} ids but the embeddings have {n} rows")
    return ids


def load_matrix(path: str) -> np.ndarray:
    """A float32 [N, D] matrix from a .npy file (no pickles)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such embeddings file: {path}")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise InputError(f"{path} is not a .npy array: {err}") from err
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(f"{path} holds an array of shape {x.shape}, not [rows, dim]")
    return np.ascontiguousarray(x, np.float32)


@dataclass
class RowCheck:
    """Which rows of a matrix can be indexed, and why the others cannot."""
    n_rows: int
    finite: np.ndarray                 # bool [N]
    norms: np.ndarray                  # float32 [N] (NaN where not finite)
    nonfinite_rows: list[int] = field(default_factory=list)
    zero_rows: list[int] = field(default_factory=list)
    off_unit: int = 0                  # finite rows whose norm is not 1 within UNIT_TOL

    @property
    def keep(self) -> np.ndarray:
        k = self.finite.copy()
        k[self.zero_rows] = False
        return k


def check_rows(x: np.ndarray, *, normalize: bool, source: str = "the embeddings") -> RowCheck:
    """Finite and unit-length checks; refuses rows that are not unit length unless normalize."""
    n = len(x)
    finite = np.empty(n, bool)
    norms = np.empty(n, np.float32)
    for s in range(0, n, CHUNK):
        blk = x[s:s + CHUNK]
        finite[s:s + CHUNK] = np.isfinite(blk).all(axis=1)
        norms[s:s + CHUNK] = np.sqrt(np.einsum("ij,ij->i", blk, blk, dtype=np.float64))
    norms[~finite] = np.nan
    off = finite & (np.abs(norms - 1.0) > UNIT_TOL)
    chk = RowCheck(n, finite, norms, nonfinite_rows=np.nonzero(~finite)[0].tolist(),
                   off_unit=int(off.sum()))
    if chk.off_unit and not normalize:
        lo, hi = float(norms[off].min()), float(norms[off].max())
        raise InputError(
            f"{chk.off_unit} of {int(finite.sum())} finite rows of {source} are not unit length "
            f"(norms {lo:.4g} to {hi:.4g}); inner products of such rows are not cosine scores: "
            f"pass --normalize to L2-normalise them")
    if normalize:
        chk.zero_rows = np.nonzero(finite & (norms == 0))[0].tolist()
    return chk


def normalize_rows(x: np.ndarray, chk: RowCheck) -> np.ndarray:
    """In place: rows divided by their norm (rows that are not kept are left as they are)."""
    scale = np.where(chk.keep, chk.norms, 1.0).astype(np.float32)
    for s in range(0, len(x), CHUNK):
        x[s:s + CHUNK] /= scale[s:s + CHUNK, None]
    return x


# ----------------------------------------------------------------------------- brute force


def top_k_batch(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k rows of `matrix` (all finite) per query by inner product -> (rows, scores), each
    [Q, min(k, N)], score descending, equal scores ordered by row index.

    np.argpartition finds the k best, and only they are sorted; when rows tie with the k-th
    score across the cut, the lowest rows among them are kept (as a full stable sort would).
    Queries are scored in blocks of at most SCORE_BYTES of scores."""
    if k < 1:
        raise InputError(f"top_k must be at least 1, got {k}")
    matrix = np.asarray(matrix, np.float32)
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    n, d = matrix.shape
    if queries.shape[1] != d:
        raise InputError(f"queries have dimension {queries.shape[1]} but the index {d}")
    k = min(k, n)
    out_rows = np.empty((len(queries), k), np.int64)
    out_scores = np.empty((len(queries), k), np.float32)
    block = max(1, SCORE_BYTES // (4 * max(n, 1)))
    for s in range(0, len(queries), block):
        scores = queries[s:s + block] @ matrix.T
        if k < n:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(n), scores.shape).copy()
        for j in range(len(scores)):
            sc = scores[j]
            sel = part[j]
            kth = sc[sel].min()
            n_eq_in = int(np.sum(sc[sel] == kth))
            if k < n and int(np.count_nonzero(sc == kth)) > n_eq_in:
                # ties cross the cut: keep every row above it, then the lowest tied rows
                above = np.nonzero(sc > kth)[0]
                tied = np.nonzero(sc == kth)[0][:k - len(above)]
                sel = np.concatenate([above, tied])
            order = sel[np.lexsort((sel, -sc[sel]))]
            out_rows[s + j] = order
            out_scores[s + j] = sc[order]
    return out_rows, out_scores


# ----------------------------------------------------------------------------- indexes


@dataclass
class Hits:
    """Search results: rows of the embedding file, their ids and scores, [Q][<= k]."""
    rows: np.ndarray
    scores: np.ndarray
    ids: list[list[str]]


class _Base:
    meta: dict
    rows: np.ndarray       # embedding-file row of each indexed row
    ids: list[str]         # id of each indexed row

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def _hits(self, pos: np.ndarray, scores: np.ndarray) -> Hits:
        rows = np.where(pos >= 0, self.rows[np.maximum(pos, 0)], -1)
        ids = [[self.ids[p] for p in r if p >= 0] for r in pos]
        return Hits(rows, scores, ids)

    def _check_queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        if k < 1:
            raise InputError(f"top_k must be at least 1, got {k}")
        q = np.atleast_2d(np.asarray(queries, np.float32))
        if q.shape[1] != self.dim:
            raise InputError(f"queries have dimension {q.shape[1]} but the index {self.dim}")
        if not np.isfinite(q).all():
            raise InputError("a query vector is not finite (the query could not be embedded)")
        return np.ascontiguousarray(q)


class BruteForceIndex(_Base):
    """Every finite row of an embedding matrix, scored by numpy (`top_k_batch`)."""

    def __init__(self, x: np.ndarray, ids: list[str], *, normalize: bool = False,
                 source: str = "the embeddings"):
        chk = check_rows(x, normalize=normalize, source=source)
        if normalize:
            x = normalize_rows(x, chk)
        keep = chk.keep
        self.rows = np.nonzero(keep)[0]
        self.matrix = x if keep.all() else x[keep]
        self.ids = [ids[r] for r in self.rows] if not keep.all() else list(ids)
        self.meta = meta_from_check(chk, "brute_force", x.shape[1], normalize)

    @classmethod
    def load(cls, path: str, ids: str | None = None, normalize: bool = False) -> "BruteForceIndex":
        x = load_matrix(path)
        return cls(x, read_ids(ids, len(x), path), normalize=normalize, source=path)

    def search(self, queries: np.ndarray, k: int) -> Hits:
        q = self._check_queries(queries, k)
        if len(self.rows) == 0:
            return Hits(np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32),
                        [[] for _ in q])
        pos, scores = top_k_batch(self.matrix, q, k)
        return self._hits(pos, scores)


def meta_from_check(chk: RowCheck, kind: str, dim: int, normalize: bool) -> dict:
    return {"kind": kind, "dim": int(dim), "rows": chk.n_rows, "indexed": int(chk.keep.sum()),
            "nonfinite_excluded": len(chk.nonfinite_rows), "nonfinite_rows": chk.nonfinite_rows,
            "zero_excluded": len(chk.zero_rows), "zero_rows": chk.zero_rows,
            "normalized": bool(normalize), "rows_renormalized": chk.off_unit if normalize else 0}


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a runtime dependency
        raise InputError("building or searching an index needs faiss-cpu (pip install "
                         "faiss-cpu; pinned in pyproject.toml)") from err
    return faiss


def build_faiss(x: np.ndarray, keep: np.ndarray, kind: str, *, hnsw_m: int = 32,
                ef_construction: int = 80, ef_search: int = 64, nlist: int = 0,
                nprobe: int = 16, seed: int = 0, progress: bool = True):
    """A faiss inner-product index over the rows `keep` of x (in order) -> (index, params)."""
    faiss = _faiss()
    d = x.shape[1]
    rows = np.nonzero(keep)[0]
    params: dict = {}
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        params.update(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
    elif kind == "ivf":
        # about sqrt(rows) cells, each trained on >= 39 rows as faiss asks
        nlist = nlist or max(1, min(int(round(np.sqrt(len(rows)))), len(rows) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(rows, size=min(len(rows), 64 * nlist), replace=False))
        index.cp.seed = seed
        index.train(np.ascontiguousarray(x[sample]))
        params.update(nlist=nlist, nprobe=nprobe, train_rows=len(sample))
    else:
        raise InputError(f"--kind must be one of {KINDS}, got {kind!r}")
    starts = range(0, len(x), CHUNK)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc=f"indexing ({kind})", unit="chunk", file=sys.stderr)
    for s in starts:
        blk = x[s:s + CHUNK][keep[s:s + CHUNK]]
        if len(blk):
            index.add(np.ascontiguousarray(blk))
    return index, params


def build(embeddings: str, output: str, *, ids: str | None = None, kind: str = "exact",
          normalize: bool = False, hnsw_m: int = 32, ef_construction: int = 80,
          ef_search: int = 64, nlist: int = 0, nprobe: int = 16, seed: int = 0,
          progress: bool = True) -> dict:
    """Builds the index directory `output` from an embedding .npy; returns its meta."""
    if kind not in KINDS:
        raise InputError(f"--kind must be one of {KINDS}, got {kind!r}")
    faiss = _faiss()
    x = load_matrix(embeddings)
    all_ids = read_ids(ids, len(x), embeddings)
    chk = check_rows(x, normalize=normalize, source=embeddings)
    if normalize:
        x = normalize_rows(x, chk)
    keep = chk.keep
    rows = np.nonzero(keep)[0]
    if len(rows) == 0:
        raise InputError(f"{embeddings}: none of its {len(x)} rows can be indexed "
                         f"({len(chk.nonfinite_rows)} non-finite, {len(chk.zero_rows)} zero)")
    meta = meta_from_check(chk, kind, x.shape[1], normalize)
    index, params = build_faiss(x, keep, kind, hnsw_m=hnsw_m, ef_construction=ef_construction,
                                ef_search=ef_search, nlist=nlist, nprobe=nprobe, seed=seed,
                                progress=progress)
    meta.update(params)
    meta.update(library="faiss-cpu", library_version=faiss.__version__,
                embeddings=os.path.basename(embeddings))
    os.makedirs(output, exist_ok=True)
    faiss.write_index(index, os.path.join(output, "index.faiss"))
    np.save(os.path.join(output, "rows.npy"), rows.astype(np.int64))
    with open(os.path.join(output, "ids.txt"), "w", encoding="utf-8") as f:
        f.write("".join(all_ids[r] + "\n" for r in rows))
    with open(os.path.join(output, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


class FaissIndex(_Base):
    """An index directory written by `build`."""

    def __init__(self, path: str, *, ef_search: int | None = None, nprobe: int | None = None):
        meta_path = os.path.join(path, "meta.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{path} is not an index directory (no meta.json); "
                                    f"build one with `python -m molbind_jax.index build`")
        with open(meta_path, encoding="utf-8") as f:
            self.meta = json.load(f)
        faiss = _faiss()
        self.index = faiss.read_index(os.path.join(path, "index.faiss"))
        self.rows = np.load(os.path.join(path, "rows.npy"), allow_pickle=False)
        with open(os.path.join(path, "ids.txt"), encoding="utf-8") as f:
            self.ids = f.read().splitlines()
        if not (len(self.rows) == len(self.ids) == self.index.ntotal == self.meta["indexed"]):
            raise InputError(f"{path}: index.faiss ({self.index.ntotal}), rows.npy "
                             f"({len(self.rows)}), ids.txt ({len(self.ids)}) and meta.json "
                             f"({self.meta['indexed']}) disagree on the number of rows")
        if self.meta["kind"] == "hnsw":
            self.index.hnsw.efSearch = int(ef_search or self.meta["ef_search"])
        elif self.meta["kind"] == "ivf":
            self.index.nprobe = int(nprobe or self.meta["nprobe"])

    def search(self, queries: np.ndarray, k: int) -> Hits:
        q = self._check_queries(queries, k)
        k = min(k, self.index.ntotal)
        scores, pos = self.index.search(q, k)
        # within the returned k, equal scores ordered by row (faiss's own order is not)
        pos = pos.astype(np.int64)
        for j in range(len(pos)):
            valid = pos[j] >= 0
            p, s = pos[j][valid], scores[j][valid]
            order = np.lexsort((self.rows[p], -s))
            pos[j] = np.concatenate([p[order], np.full((~valid).sum(), -1)])
            scores[j] = np.concatenate([s[order], np.full((~valid).sum(), -np.inf, np.float32)])
        return self._hits(pos, scores)


def open_index(path: str, *, ids: str | None = None, normalize: bool = False,
               ef_search: int | None = None, nprobe: int | None = None) -> _Base:
    """An index directory (built) or an embeddings `.npy` (brute force)."""
    if os.path.isdir(path):
        if normalize:
            raise InputError("--normalize applies to a .npy; a built index was normalised "
                             "(or not) when it was built")
        return FaissIndex(path, ef_search=ef_search, nprobe=nprobe)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such index or embeddings file: {path}")
    return BruteForceIndex.load(path, ids=ids, normalize=normalize)
