"""Where a tower's step time goes: matrix products against everything else, ours and PyTorch's.

    taskset -c 0 .venv/bin/python experiments/benchmarks/breakdown.py --towers=bert,conformer \\
        --sizes=original --output=/tmp/profile.json

Ours: the forward + backward program is traced to a jaxpr and every `dot_general` in it is
listed with its shapes and how often it runs (a `scan` body counts once per layer). Each
distinct product is then jitted alone and timed on random inputs; the sum, weighted by the
counts, is the time the step would spend in products if each ran as fast as it does alone.
The step time minus that sum is the time outside products (elementwise work, softmax, layout
copies, the scan's slicing, gathers and scatters). Each product's GFLOP/s against the measured
2048^3 GEMM peak (towers.gemm_row) tells whether the dense layers run near the machine's limit.

PyTorch: `torch.profiler` over one step, self CPU time of the BLAS-backed aten ops (mm, addmm,
bmm, baddbmm, the SDPA kernels) against the step's total.

A tower whose products already run near the GEMM peak and take most of the step cannot be made
much faster without doing fewer FLOPs; one that spends much of its step outside products can.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

BLAS_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::_mkldnn_mm", "aten::mkldnn_matmul")


# ------------------------------------------------------------------------------ ours
def _subjaxprs(params):
    """(jaxpr, multiplicity) of every sub-program an equation's params hold."""
    from jax.extend import core as jcore

    for v in params.values():
        items = v if isinstance(v, (list, tuple)) else [v]
        for item in items:
            jaxpr = getattr(item, "jaxpr", item)
            if isinstance(jaxpr, jcore.Jaxpr):
                yield jaxpr


def dot_inventory(fn, *args) -> Counter:
    """Counter of (lhs shape, rhs shape, dimension numbers, dtype) -> runs per call of `fn`."""
    import jax

    out: Counter = Counter()

    def walk(jaxpr, mult):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                lhs, rhs = (v.aval for v in eqn.invars)
                key = (tuple(lhs.shape), tuple(rhs.shape), _dims_key(eqn.params["dimension_numbers"]), str(lhs.dtype))
                out[key] += mult
            inner = mult * (eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1)
            for sub in _subjaxprs(eqn.params):
                walk(sub, inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
    return out


def _dims_key(dn):
    (lc, rc), (lb, rb) = dn
    return (tuple(lc), tuple(rc)), (tuple(lb), tuple(rb))


def dot_flops(lhs, rhs, dims) -> float:
    """2 * output elements * contracted size of one dot_general."""
    (lc, rc), (lb, rb) = dims
    batch = math.prod(lhs[i] for i in lb)
    contracted = math.prod(lhs[i] for i in lc)
    free_l = math.prod(d for i, d in enumerate(lhs) if i not in lc and i not in lb)
    free_r = math.prod(d for i, d in enumerate(rhs) if i not in rc and i not in rb)
    return 2.0 * batch * free_l * free_r * contracted


_OVERHEAD: list[float] = []


def call_overhead(repeats: int = 20) -> float:
    """Median seconds of dispatching a jitted no-op: subtracted from each product's time, which
    at small shapes would otherwise be mostly the call."""
    import jax
    import jax.numpy as jnp

    if not _OVERHEAD:
        fn = jax.jit(lambda a: a + 1)
        x = jnp.ones((8,), jnp.float32)
        jax.block_until_ready(fn(x))
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(x))
            ts.append(time.perf_counter() - t)
        _OVERHEAD.append(float(np.median(ts)))
    return _OVERHEAD[0]


def time_dot(lhs, rhs, dims, dtype, repeats: int = 5) -> float:
    """Median seconds of one jitted dot_general of these shapes on random inputs, less the call
    overhead (`call_overhead`), at least 1 microsecond."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, lhs, jnp.dtype(dtype))
    b = jax.random.normal(k2, rhs, jnp.dtype(dtype))
    fn = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32))
    jax.block_until_ready(fn(a, b))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(a, b))
        ts.append(time.perf_counter() - t)
    return max(1e-6, float(np.median(ts)) - call_overhead())


def product_breakdown(fn, args, step_s: float, peak_gflops: float, repeats: int = 3, top: int = 6) -> dict:
    """Our step's products: their standalone time, share of the step, GFLOP/s, the largest ones."""
    inv = dot_inventory(fn, *args)
    rows = []
    for (lhs, rhs, dims, dtype), count in inv.items():
        t = time_dot(lhs, rhs, dims, dtype, repeats)
        f = dot_flops(lhs, rhs, dims)
        rows.append(dict(lhs=list(lhs), rhs=list(rhs), count=count, ms_each=1e3 * t, ms_total=1e3 * t * count,
                         gflops=f / t / 1e9, pct_peak=100 * f / t / 1e9 / peak_gflops))
    rows.sort(key=lambda r: -r["ms_total"])
    dots_s = sum(r["ms_total"] for r in rows) / 1e3
    flops = sum(dot_flops(lhs, rhs, dims) * c for (lhs, rhs, dims, _), c in inv.items())
    return dict(step_ms=1e3 * step_s, dots_ms=1e3 * dots_s, outside_dots_ms=1e3 * (step_s - dots_s),
                dots_share=dots_s / step_s, dot_gflop=flops / 1e9, dots_gflops=flops / dots_s / 1e9,
                dots_pct_peak=100 * flops / dots_s / 1e9 / peak_gflops, distinct_dots=len(rows),
                dot_calls=int(sum(inv.values())), largest=rows[:top])


# ------------------------------------------------------------------------------ torch
def torch_breakdown(step, warmup: int = 1) -> dict:
    """Self CPU ms of the BLAS-backed aten ops in one call of `step` against its total."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]):  # the profiler's own first start costs seconds
        step()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    total = time.perf_counter() - t
    by_op = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    blas = sum(v for k, v in by_op.items() if k in BLAS_OPS)
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    return dict(step_ms=1e3 * total, blas_ms=blas, blas_share=blas / (1e3 * total),
                top_ops=[dict(op=k, self_ms=v) for k, v in top])


# ------------------------------------------------------------------------------ rows
def rows(towers=("bert", "gin", "conformer", "pocket"), sizes=("original",), repeats: int = 3,
         peak: float | None = None, torch_side: bool = True) -> list[dict]:
    """One breakdown per (size, tower): ours (products timed alone) and the torch reference's."""
    import jax

    from experiments.benchmarks import towers as tw  # the tower losses, inputs and torch reference steps

    peak = peak or tw.gemm_row(progress=lambda *_: None)["jax_gflops"]
    out = []
    for size in sizes:
        configs = tw.tower_configs(size)
        for tower in towers:
            cfg, shape = configs[tower], tw.shape_of(tower, size)
            fn, args = tw.jax_loss(tower, cfg, shape)
            compiled = jax.jit(fn).lower(*args).compile()
            jax.block_until_ready(compiled(*args))
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                ts.append(time.perf_counter() - t)
            step_s = float(np.median(ts))
            print(f"profile {tower} {size}: step {1e3 * step_s:.0f} ms; timing its products ...", flush=True)
            row = dict(tower=tower, size=size, shape=list(shape), gemm_peak_gflops=peak, load=os.getloadavg(),
                       ours=product_breakdown(fn, args, step_s, peak, repeats=repeats))
            if torch_side:
                row["torch_reference"] = torch_breakdown(tw.torch_step(tower, cfg, shape))
            out.append(row)
            print(line(row), flush=True)
    return out


def line(row) -> str:
    o = row["ours"]
    s = (f"{row['tower']} {row['size']}: ours {o['step_ms']:.0f} ms, products {o['dots_ms']:.0f} ms "
         f"({100 * o['dots_share']:.0f}%, {o['dots_gflops']:.1f} GFLOP/s = {o['dots_pct_peak']:.0f}% of GEMM peak), "
         f"outside products {o['outside_dots_ms']:.0f} ms")
    if "torch_reference" in row:
        t = row["torch_reference"]
        s += f"; torch {t['step_ms']:.0f} ms, BLAS {t['blas_ms']:.0f} ms ({100 * t['blas_share']:.0f}%)"
    return s


def table(rows_) -> str:
    lines = ["| tower | size | ours ms | in products ms (share) | products GFLOP/s (% of GEMM peak) | outside ms "
             "| torch ms | torch BLAS ms (share) |", "|" + "---|" * 8]
    for r in rows_:
        o, t = r["ours"], r.get("torch_reference")
        lines.append(f"| {r['tower']} | {r['size']} | {o['step_ms']:.0f} | {o['dots_ms']:.0f} ({100 * o['dots_share']:.0f}%) | "
                     f"{o['dots_gflops']:.1f} ({o['dots_pct_peak']:.0f}%) | {o['outside_dots_ms']:.0f} | "
                     + (f"{t['step_ms']:.0f} | {t['blas_ms']:.0f} ({100 * t['blas_share']:.0f}%) |" if t else "- | - |"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from experiments.benchmarks import towers as tw

    tw.configure_threads(FLAGS.threads)
    peak = tw.gemm_row()
    result = rows(FLAGS.towers, FLAGS.sizes, FLAGS.repeats, peak["jax_gflops"], FLAGS.torch)
    print("\n" + table(result))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(dict(gemm_peak_gflops=peak, rows=result, threads=FLAGS.threads), f, indent=1)
        print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    flags.DEFINE_list("towers", ["bert", "gin", "conformer", "pocket"], "towers to profile")
    flags.DEFINE_list("sizes", ["original"], "sizes: mini, original")
    flags.DEFINE_integer("repeats", 3, "timed calls per step and per product")
    flags.DEFINE_integer("threads", 1, "CPU threads for both frameworks")
    flags.DEFINE_bool("torch", True, "also profile the torch reference step")
    flags.DEFINE_string("output", None, "write the breakdown as JSON here")
    app.run(main)
