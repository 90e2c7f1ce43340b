"""Memory at scale: the contrastive loss at a large global batch over 8 simulated devices, and
brute-force retrieval over a million candidates, each with its peak memory and time.

    .venv/bin/python experiments/benchmarks/scale.py --output=/tmp/scale.json
    .venv/bin/python experiments/benchmarks/scale.py --global_batch=512 --candidates=10000   # seconds

Each part runs in its own subprocess (`--part=loss`, `--part=retrieval`), so that the loss
part can simulate 8 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8 is set
before jax is imported; the calling process may hold one device) and so that each part's peak
RSS is its own. The subprocess prints one line `SCALE_ROW {json}`; `rows()` parses it.

loss: `losses.pair_infonce` (symmetric InfoNCE, gradient through the gather) at global batch
`--global_batch` (65,536 per pair) and embedding width `--dim` (256), sharded over the 8
devices of mesh axis "data". The chunked form (`chunk_size=--chunk_size`) computes the loss
and the gradient w.r.t. both embedding matrices; reported: its compiled `memory_analysis()`
(temp, argument and output bytes of the SPMD program, i.e. per device), the process's peak RSS
(all 8 simulated devices share it), compile and run seconds. The dense form (`chunk_size=None`,
[B/8, B] logits per device and direction) is compiled at the same size for its
`memory_analysis()`, and run only when its temp memory over the 8 devices fits under
`--dense_run_max_mib` (`dense_ran` says whether; otherwise its numbers are compile-only).
When both ran, `loss_dense` and the gradients' difference check the chunked form.

retrieval: `molbind_jax.inference.index.top_k_batch` (the project's brute-force search: one
matrix product per block of queries, argpartition, the k sorted) of `--queries` unit queries
against `--candidates` x `--dim_retrieval` float32 unit candidates, once resident (the whole
matrix in memory) and once streamed over candidate blocks of `--block` rows (each block's top k
merged; memory O(block); the blocks are generated on the fly as if read from disk, and
`streamed_s` leaves their generation out, `streamed_generate_s`). The streamed pass runs first so that the peak RSS after it is its own.
Both must return the same rows (`streamed_equal`).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, REPO)
PREFIX = "SCALE_ROW "
DEVICES = 8


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def unit_rows(rng, n: int, d: int, block: int = 65536) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    for s in range(0, n, block):
        b = rng.standard_normal((min(block, n - s), d), dtype=np.float32)
        out[s:s + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    return out


def embeddings(global_batch: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic unit rows x, y with y correlated to x (the loss is far from log B)."""
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, global_batch, dim)
    y = x + unit_rows(rng, global_batch, dim)
    return x, y / np.linalg.norm(y, axis=1, keepdims=True)


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    return {k: getattr(m, f"{k}_size_in_bytes") / 2 ** 20 for k in ("temp", "argument", "output")}


# ------------------------------------------------------------------------------ loss part
def loss_part(global_batch: int, dim: int, chunk_size: int, temperature: float, dense_run_max_mib: float,
              seed: int = 0) -> dict:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from molbind_jax.training import losses
    from molbind_jax.training.sharding import make_mesh

    if jax.device_count() < DEVICES:
        raise RuntimeError(f"the loss part needs {DEVICES} devices, got {jax.device_count()}: run it through "
                           f"rows() or with XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES}")
    mesh = make_mesh(DEVICES)
    x, y = embeddings(global_batch, dim, seed)
    spec = NamedSharding(mesh, P("data"))
    xs, ys = jax.device_put(x, spec), jax.device_put(y, spec)

    def fn(chunk):
        loss = lambda a, b: losses.pair_infonce(a, b, None, mesh=mesh, temperature=temperature, chunk_size=chunk)[0]
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    row = dict(part="loss", global_batch=global_batch, dim=dim, devices=DEVICES, chunk_size=chunk_size,
               per_device_rows=global_batch // DEVICES, load=os.getloadavg())
    t = time.perf_counter()
    compiled = fn(chunk_size).lower(xs, ys).compile()
    row["chunked_compile_s"] = time.perf_counter() - t
    row["chunked_mib"] = _memory(compiled)
    print(f"chunked: compiled in {row['chunked_compile_s']:.1f} s, temp {row['chunked_mib']['temp']:.0f} MiB "
          "per device; running ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    val, (gx, gy) = jax.block_until_ready(compiled(xs, ys))
    row["chunked_run_s"] = time.perf_counter() - t
    row["loss_chunked"] = float(val)
    row["chunked_peak_rss_mib"] = peak_rss_mib()
    t = time.perf_counter()
    dense = fn(None).lower(xs, ys).compile()
    row["dense_compile_s"] = time.perf_counter() - t
    row["dense_mib"] = _memory(dense)
    row["dense_ran"] = row["dense_mib"]["temp"] * DEVICES <= dense_run_max_mib
    print(f"dense: temp {row['dense_mib']['temp']:.0f} MiB per device "
          f"({'running' if row['dense_ran'] else 'compile only'})", file=sys.stderr, flush=True)
    if row["dense_ran"]:
        t = time.perf_counter()
        dval, (dx, dy) = jax.block_until_ready(dense(xs, ys))
        row["dense_run_s"] = time.perf_counter() - t
        row["loss_dense"] = float(dval)
        scale = max(float(np.max(np.abs(np.asarray(dx)))), float(np.max(np.abs(np.asarray(dy)))), 1e-30)
        diff = max(float(np.max(np.abs(np.asarray(gx) - np.asarray(dx)))),
                   float(np.max(np.abs(np.asarray(gy) - np.asarray(dy)))))
        row["grad_max_abs_diff"], row["grad_rel_err"] = diff, diff / scale
    row["peak_rss_mib"] = peak_rss_mib()
    row["load_end"] = os.getloadavg()
    return row


# ------------------------------------------------------------------------------ retrieval part
def streamed_top_k(blocks, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """top_k_batch over candidate blocks (an iterable of (first row, [n, d] block)), the per-block
    best k merged: rows by score descending, ties by row (as top_k_batch orders them)."""
    from molbind_jax.inference.index import top_k_batch

    best_rows = best_scores = None
    for start, block in blocks:
        rows, scores = top_k_batch(block, queries, k)
        rows = rows + start
        if best_rows is not None:
            rows, scores = np.concatenate([best_rows, rows], 1), np.concatenate([best_scores, scores], 1)
            order = np.lexsort((rows, -scores), axis=1)[:, :k]
            rows, scores = np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)
        best_rows, best_scores = rows, scores
    return best_rows, best_scores


def retrieval_part(candidates: int, dim: int, n_queries: int, k: int, block: int, seed: int = 0) -> dict:
    from molbind_jax.inference.index import top_k_batch

    rng = np.random.default_rng(seed)
    queries = unit_rows(rng, n_queries, dim)
    row = dict(part="retrieval", candidates=candidates, dim=dim, queries=n_queries, k=k, block=block,
               matrix_mib=candidates * dim * 4 / 2 ** 20, load=os.getloadavg())

    made = [0.0]

    def blocks():  # the candidates, regenerated block by block (as read from disk)
        for s in range(0, candidates, block):
            t = time.perf_counter()
            b = unit_rows(np.random.default_rng([seed, 1, s]), min(block, candidates - s), dim)
            made[0] += time.perf_counter() - t
            yield s, b

    t = time.perf_counter()
    s_rows, s_scores = streamed_top_k(blocks(), queries, k)
    row["streamed_s"] = time.perf_counter() - t - made[0]  # the search alone, not making the blocks
    row["streamed_generate_s"] = made[0]
    row["streamed_peak_rss_mib"] = peak_rss_mib()
    print(f"streamed: {row['streamed_s']:.1f} s (+ {made[0]:.1f} s generating the candidates), peak RSS "
          f"{row['streamed_peak_rss_mib']:.0f} MiB; building the resident matrix ...", file=sys.stderr, flush=True)
    matrix = np.empty((candidates, dim), np.float32)
    for s, b in blocks():
        matrix[s:s + len(b)] = b
    t = time.perf_counter()
    r_rows, r_scores = top_k_batch(matrix, queries, k)
    row["resident_s"] = time.perf_counter() - t
    row["resident_queries_per_s"] = n_queries / row["resident_s"]
    row["resident_peak_rss_mib"] = peak_rss_mib()
    row["streamed_equal"] = bool(np.array_equal(s_rows, r_rows) and np.allclose(s_scores, r_scores))
    # An independent check on a few queries: a full sort of all scores.
    full = np.argsort(-(queries[:4] @ matrix.T), axis=1, kind="stable")[:, :k]
    row["exact_check"] = bool(np.array_equal(full, r_rows[:4]))
    row["load_end"] = os.getloadavg()
    return row


# ------------------------------------------------------------------------------ driver
def run_part(part: str, args: list[str], timeout: float | None = None) -> dict:
    """Runs `scale.py --part=<part> args` in a subprocess (8 simulated devices); its JSON row."""
    env = dict(os.environ)
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    # first: XLA stops reading its flags at a token that is not a flag
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={DEVICES}"] + kept)
    env.setdefault("JAX_PLATFORMS", "cpu")
    path = [os.path.join(REPO, ".pyshim"), REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    res = subprocess.run([sys.executable, os.path.abspath(__file__), f"--part={part}", *args], env=env,
                         stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(PREFIX)]
    if res.returncode or not lines:
        raise RuntimeError(f"scale.py --part={part} failed (exit {res.returncode}): {res.stdout[-2000:]}")
    return json.loads(lines[-1][len(PREFIX):])


def rows(*, global_batch: int = 65536, dim: int = 256, chunk_size: int = 1024, temperature: float = 0.1,
         dense_run_max_mib: float = 4096, candidates: int = 1_000_000, dim_retrieval: int = 512, queries: int = 256,
         k: int = 10, block: int = 131072, parts=("loss", "retrieval"), seed: int = 0,
         timeout: float | None = None) -> list[dict]:
    """The rows of the parts (each run in its own subprocess)."""
    out = []
    for part in parts:
        if part == "loss":
            args = [f"--global_batch={global_batch}", f"--dim={dim}", f"--chunk_size={chunk_size}",
                    f"--temperature={temperature}", f"--dense_run_max_mib={dense_run_max_mib}", f"--seed={seed}"]
        elif part == "retrieval":
            args = [f"--candidates={candidates}", f"--dim_retrieval={dim_retrieval}", f"--queries={queries}",
                    f"--k={k}", f"--block={block}", f"--seed={seed}"]
        else:
            raise ValueError(f"unknown part {part!r}; expected loss or retrieval")
        print(f"scale: running the {part} part in a subprocess ...", file=sys.stderr, flush=True)
        out.append(run_part(part, args, timeout))
    return out


def table(rows_: list[dict]) -> str:
    lines = []
    for r in rows_:
        if r["part"] == "loss":
            dense = (f"dense: temp {r['dense_mib']['temp']:.0f} MiB per device, "
                     + (f"ran in {r['dense_run_s']:.1f} s, loss {r['loss_dense']:.6f}, gradient rel. diff "
                        f"{r['grad_rel_err']:.1e}" if r["dense_ran"] else "compile only (too large to run)"))
            lines.append(f"loss at global batch {r['global_batch']} x {r['dim']} over {r['devices']} devices: chunked "
                         f"({r['chunk_size']}) loss {r['loss_chunked']:.6f}, compile {r['chunked_compile_s']:.1f} s, "
                         f"loss + gradient {r['chunked_run_s']:.1f} s, temp {r['chunked_mib']['temp']:.0f} MiB per "
                         f"device, peak RSS {r['chunked_peak_rss_mib']:.0f} MiB; {dense} (load {r['load'][0]:.2f})")
        else:
            lines.append(f"retrieval of {r['queries']} queries, top {r['k']}, over {r['candidates']} x {r['dim']} "
                         f"float32 ({r['matrix_mib']:.0f} MiB): resident {r['resident_s']:.1f} s "
                         f"({r['resident_queries_per_s']:.0f} queries/s), peak RSS {r['resident_peak_rss_mib']:.0f} MiB; "
                         f"streamed in blocks of {r['block']} {r['streamed_s']:.1f} s (search only; the "
                         f"candidates generated on the fly), peak RSS {r['streamed_peak_rss_mib']:.0f} MiB; same rows: {r['streamed_equal']} "
                         f"(load {r['load'][0]:.2f})")
    return "\n".join(lines)


def define_flags():
    from absl import flags

    flags.DEFINE_enum("part", None, ["loss", "retrieval"], "run one part here (the subprocess mode); "
                      "unset: run both parts in subprocesses and print the table")
    flags.DEFINE_list("parts", ["loss", "retrieval"], "parts to run (each in a subprocess) when --part is unset")
    flags.DEFINE_integer("global_batch", 65536, "loss: global batch per pair")
    flags.DEFINE_integer("dim", 256, "loss: embedding width")
    flags.DEFINE_integer("chunk_size", 1024, "loss: columns per chunk of the chunked form")
    flags.DEFINE_float("temperature", 0.1, "loss: temperature")
    flags.DEFINE_float("dense_run_max_mib", 4096, "loss: run the dense form only when its temp memory over the "
                       "8 devices is at most this")
    flags.DEFINE_integer("candidates", 1_000_000, "retrieval: candidate rows")
    flags.DEFINE_integer("dim_retrieval", 512, "retrieval: embedding width")
    flags.DEFINE_integer("queries", 256, "retrieval: queries")
    flags.DEFINE_integer("k", 10, "retrieval: top k")
    flags.DEFINE_integer("block", 131072, "retrieval: candidate rows per streamed block")
    flags.DEFINE_integer("seed", 0, "seed")
    flags.DEFINE_string("output", None, "write the rows as JSON here")


def main(argv):
    del argv
    from absl import flags

    F = flags.FLAGS
    if F.part == "loss":
        row = loss_part(F.global_batch, F.dim, F.chunk_size, F.temperature, F.dense_run_max_mib, F.seed)
    elif F.part == "retrieval":
        row = retrieval_part(F.candidates, F.dim_retrieval, F.queries, F.k, F.block, F.seed)
    if F.part:
        print(PREFIX + json.dumps(row), flush=True)
        return
    result = rows(global_batch=F.global_batch, dim=F.dim, chunk_size=F.chunk_size, temperature=F.temperature,
                  dense_run_max_mib=F.dense_run_max_mib, candidates=F.candidates, dim_retrieval=F.dim_retrieval,
                  queries=F.queries, k=F.k, block=F.block, parts=F.parts, seed=F.seed)
    print(table(result))
    load = os.getloadavg()
    print(f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    if F.output:
        with open(F.output, "w") as f:
            json.dump(dict(load=load, cpus=os.cpu_count(), rows=result), f, indent=1)
        print(f"wrote {F.output}")


if __name__ == "__main__":
    from absl import app

    if "--part=loss" in sys.argv and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        # before jax is imported (it is imported only inside the parts)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={DEVICES}").strip()
    define_flags()
    app.run(main)
