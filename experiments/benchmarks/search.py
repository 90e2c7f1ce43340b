"""Search benchmark: brute force (numpy) against faiss's exact and approximate indexes.

    .venv/bin/python experiments/benchmarks/search.py --rows=1000000 --dim=512 \\
        --queries=1000 --kinds=exact,ivf --output=/tmp/search.json

The rows are SYNTHETIC, unit length, float32: `--data=clustered` (default) draws each row
around one of `--centers` random unit centres (Gaussian noise of norm about `--spread`,
then L2-normalised), which gives near neighbours structure as real embeddings have;
`--data=random` draws uniformly on the sphere, where no neighbour stands out and approximate
indexes recall worst. Queries are fresh draws from the same distribution.

Per method it reports build seconds, queries per second (all queries, top `--k`):
  * brute_force: molbind_jax.inference.index.top_k_batch (one matrix product per block of
    queries, np.argpartition, a sort of the k, ties by row);
  * exact: faiss IndexFlatIP; hnsw: IndexHNSWFlat (one line per --ef_searches value);
    ivf: IndexIVFFlat (one line per --nprobes value), searched with faiss's own search;
recall@k of each against brute force (the exact one should be 1 up to float rounding), the
index size, and the process's resident memory after the step and its peak (ru_maxrss).
The machine's load (os.getloadavg) and core count are printed with the table and stored in
the JSON: on a shared machine the numbers are indicative only.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a program (importing this module defines no flags)."""
    flags.DEFINE_integer("rows", 1_000_000, "rows of the synthetic matrix")
    flags.DEFINE_integer("dim", 512, "embedding dimension")
    flags.DEFINE_integer("queries", 1000, "queries")
    flags.DEFINE_integer("k", 10, "top k (recall@k)")
    flags.DEFINE_enum("data", "clustered", ["clustered", "random"], "synthetic distribution")
    flags.DEFINE_integer("centers", 10_000, "clustered: number of centres")
    flags.DEFINE_float("spread", 1.0, "clustered: norm of the noise around a centre (before "
                       "normalising)")
    flags.DEFINE_list("kinds", ["exact", "ivf", "hnsw"], "faiss indexes to build")
    flags.DEFINE_list("nprobes", ["8", "32"], "ivf: cells searched")
    flags.DEFINE_list("ef_searches", ["64", "256"], "hnsw: candidate lists")
    flags.DEFINE_integer("nlist", 0, "ivf: cells (0: about sqrt(rows))")
    flags.DEFINE_integer("hnsw_m", 32, "hnsw: neighbours per node")
    flags.DEFINE_integer("ef_construction", 80, "hnsw: candidate list while building")
    flags.DEFINE_integer("seed", 0, "seed")
    flags.DEFINE_string("output", None, "write the results as JSON here")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic(n: int, d: int, rng, *, data: str, centers: np.ndarray | None, spread: float,
              desc: str) -> np.ndarray:
    from tqdm import tqdm
    x = np.empty((n, d), np.float32)
    chunk = 65536
    for s in tqdm(range(0, n, chunk), desc=desc, unit="chunk", disable=n <= chunk):
        m = min(chunk, n - s)
        blk = rng.standard_normal((m, d), dtype=np.float32)
        if data == "clustered":
            blk *= spread / np.sqrt(d)
            blk += centers[rng.integers(0, len(centers), m)]
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
        x[s:s + m] = blk
    return x


def in_blocks(fn, q: np.ndarray, desc: str, block: int = 100) -> np.ndarray:
    """fn(queries) -> [Q, k] row numbers, called on blocks of queries with a progress bar."""
    from tqdm import tqdm
    return np.concatenate([fn(q[s:s + block]) for s in
                           tqdm(range(0, len(q), block), desc=desc, unit="block",
                                disable=len(q) <= block, file=sys.stderr)])


def index_bytes(faiss, index) -> int:
    """Size of the index as written (counted through a callback: no copy of it in memory)."""
    n = [0]

    def count(chunk):
        n[0] += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return n[0]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, truth)]))


def run(rows: int, dim: int, n_queries: int, k: int, *, data: str = "clustered",
        centers: int = 10_000, spread: float = 1.0, kinds=("exact", "ivf", "hnsw"),
        nprobes=(8, 32), ef_searches=(64, 256), nlist: int = 0, hnsw_m: int = 32,
        ef_construction: int = 80, seed: int = 0) -> dict:
    import faiss

    from molbind_jax.inference.index import build_faiss, top_k_batch

    rng = np.random.default_rng(seed)
    c = None
    if data == "clustered":
        c = rng.standard_normal((centers, dim), dtype=np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = synthetic(rows, dim, rng, data=data, centers=c, spread=spread, desc="rows")
    q = synthetic(n_queries, dim, rng, data=data, centers=c, spread=spread, desc="queries")
    res = {"rows": rows, "dim": dim, "queries": n_queries, "k": k, "data": data,
           "centers": centers if data == "clustered" else None, "spread": spread,
           "cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
           "faiss_version": faiss.__version__, "load_start": os.getloadavg(),
           "matrix_mib": x.nbytes / 2**20, "methods": []}
    print(f"{rows} x {dim} float32 unit rows ({data}), {n_queries} queries, top {k}; "
          f"load {res['load_start']}", file=sys.stderr)

    t = time.perf_counter()
    truth = in_blocks(lambda b: top_k_batch(x, b, k)[0], q, "brute force")
    dt = time.perf_counter() - t
    res["methods"].append(dict(method="brute_force (numpy)", build_s=0.0, qps=n_queries / dt,
                               recall=1.0, index_mib=x.nbytes / 2**20, rss_mib=rss_mib(),
                               peak_mib=peak_mib()))
    keep = np.ones(rows, bool)
    for kind in kinds:
        print(f"building {kind} ...", file=sys.stderr)
        t = time.perf_counter()
        index, params = build_faiss(x, keep, kind, hnsw_m=hnsw_m, ef_construction=ef_construction,
                                    nlist=nlist, seed=seed)
        build_s = time.perf_counter() - t
        size = index_bytes(faiss, index) / 2**20
        settings = ([("", None)] if kind == "exact" else
                    [(f"nprobe={p}", p) for p in nprobes] if kind == "ivf" else
                    [(f"ef_search={e}", e) for e in ef_searches])
        for label, value in settings:
            if kind == "ivf":
                index.nprobe = int(value)
            elif kind == "hnsw":
                index.hnsw.efSearch = int(value)
            name = f"faiss {kind}" + (f" {label}" if label else "")
            t = time.perf_counter()
            found = in_blocks(lambda b: index.search(b, k)[1], q, name)
            dt = time.perf_counter() - t
            res["methods"].append(dict(method=name, build_s=build_s, qps=n_queries / dt,
                                       recall=recall(found, truth), index_mib=size,
                                       rss_mib=rss_mib(), peak_mib=peak_mib(),
                                       **dict(params, **({"nprobe": value} if kind == "ivf" else
                                                         {"ef_search": value} if kind == "hnsw"
                                                         else {}))))
            print(f"  {name}: {n_queries / dt:.0f} queries/s, recall@{k} "
                  f"{res['methods'][-1]['recall']:.3f}", file=sys.stderr)
        del index
    res["load_end"] = os.getloadavg()
    return res


def table(res: dict) -> str:
    k = res["k"]
    lines = [f"| method | build s | queries/s | recall@{k} vs brute force | index MiB | "
             f"RSS MiB after | peak RSS MiB |", "|---|---|---|---|---|---|---|"]
    for m in res["methods"]:
        lines.append(f"| {m['method']} | {m['build_s']:.1f} | {m['qps']:.0f} | {m['recall']:.3f} | "
                     f"{m['index_mib']:.0f} | {m['rss_mib']:.0f} | {m['peak_mib']:.0f} |")
    lines.append(f"\n{res['rows']} x {res['dim']} float32 synthetic unit rows ({res['data']}), "
                 f"{res['queries']} queries; {res['cpus']} CPUs, faiss {res['faiss_version']} "
                 f"with {res['faiss_threads']} threads; load average "
                 f"{', '.join(f'{v:.2f}' for v in res['load_start'])} at the start, "
                 f"{', '.join(f'{v:.2f}' for v in res['load_end'])} at the end")
    return "\n".join(lines)


def main(argv):
    del argv
    res = run(FLAGS.rows, FLAGS.dim, FLAGS.queries, FLAGS.k, data=FLAGS.data,
              centers=FLAGS.centers, spread=FLAGS.spread, kinds=FLAGS.kinds,
              nprobes=[int(v) for v in FLAGS.nprobes],
              ef_searches=[int(v) for v in FLAGS.ef_searches], nlist=FLAGS.nlist,
              hnsw_m=FLAGS.hnsw_m, ef_construction=FLAGS.ef_construction, seed=FLAGS.seed)
    print(table(res))
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
