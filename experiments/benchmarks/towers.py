"""Tower benchmark: forward + backward of each tower, ours (JAX) against the PyTorch models
users run (`anchors.py`: transformers' BertModel with SDPA, a torch_geometric GIN, unimol_tools'
Uni-Core encoder, each eager and under `torch.compile`) and against our own parity references
(`molbind_jax/torch_reference`), at the mini and the original sizes, in one process.

    taskset -c 0 .venv/bin/python experiments/benchmarks/towers.py --repeats=3 --gemm \\
        --output=/tmp/towers.json

One train-mode step per call on every side (dropout as configured, float32): the loss is the
sum of squares of the tower's pooled features, the [B, D] rows the MolBind head projects (text:
the [CLS] row; graph: the mean per graph; conformer and pocket: the mean over real positions),
and the backward pass gives every parameter's gradient. `--threads=1` (default) runs both
frameworks single-threaded (XLA_FLAGS `--xla_cpu_multi_thread_eigen=false`,
`torch.set_num_threads(1)`); pin the process to one core with
`taskset -c 0` so the frameworks share it. `--threads=2`: torch 2 threads, XLA its default pool.

Per (tower, size) row, every timed side runs once per round in the order ours, reference,
eager anchor, compiled anchor and then back (A B C D D C B A), `--repeats` rounds, so that load
changes hit every side; each time is the median of its 2 x repeats calls:
  * `jax_ms`; `torch_ms` and `ratio` (our torch_reference, `--reference`);
    `anchor_eager_ms`, `anchor_compiled_ms` (`--compile`) and their `*_ratio`;
    every ratio is that side's time / ours (above 1: ours is faster);
    `best_anchor_ratio` = min over the anchors of (anchor ms) / ours;
  * `compile_s`: the first-call compile of our jitted step; `anchor_compile_s`: the first call of
    the compiled anchor (torch.compile's compile of forward and backward, plus one step), cold
    (Inductor's on-disk cache off unless `--compile_cache`);
  * `temp_mib`: the scratch memory of our compiled step (`memory_analysis()`);
    `*_rss_mib`: growth of the process's peak RSS (`ru_maxrss`) over a torch side's first call:
    a lower bound of its memory, since the peak may have been set earlier (0: under it);
  * `gflop`, `gflops`: XLA's `cost_analysis()` FLOP count of our step (the scanned Uni-Mol stack
    counted on a fully unrolled twin, lowered but never compiled) and our GFLOP/s;
    `gemm_pct`: that as % of the JAX GEMM peak measured in the same run (`--gemm`);
  * the `gemm` row (`--gemm`): a float32 `--gemm_size`^3 matmul in JAX and torch, GFLOP/s each.
The machine load (`os.getloadavg()`) is printed with the table and stored in every row and the
JSON: on a shared machine the numbers are indicative only. `rows(...)` runs the same from Python.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import sys
import time
import warnings

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from experiments.benchmarks.tower_inputs import (SHAPES, SIZES, TOWERS, graph_inputs, shape_of,  # noqa: E402,F401
                                                 text_inputs, tower_configs, unimol_inputs)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags (defined only when run as a program, so that the suite can import
    this module beside the other benchmarks)."""
    flags.DEFINE_list("towers", list(TOWERS), f"towers to run, of {TOWERS}")
    flags.DEFINE_list("sizes", ["mini", "original"], f"sizes to run, of {SIZES} (tower_inputs.tower_configs)")
    flags.DEFINE_integer("repeats", 3, "interleaved rounds (A B C D D C B A); each side's median of 2*repeats calls")
    flags.DEFINE_integer("threads", 1, "CPU threads for both frameworks (1: single-threaded)")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "our matmul dtype (the torch sides stay float32)")
    flags.DEFINE_string("remat", "none", "Uni-Mol layer-body rematerialisation (models/layers.REMAT_POLICIES)")
    flags.DEFINE_integer("scan_unroll", 0, "Uni-Mol layers per scan iteration (its num_layers: fully unrolled; 0: the model default, unrolled up to 4 layers)")
    flags.DEFINE_enum("dropout_rng", "hash", ["hash", "threefry"], "our dropout mask generator")
    flags.DEFINE_integer("num_layers", 0, "override every tower's depth (0: the size's own)")
    flags.DEFINE_bool("torch", True, "also time our PyTorch parity reference (molbind_jax/torch_reference)")
    flags.DEFINE_bool("anchors", True, "also time the anchors users run (anchors.py), eager")
    flags.DEFINE_bool("compile", True, "also time the anchors under torch.compile (default mode)")
    flags.DEFINE_bool("compile_cache", False, "let torch.compile reuse Inductor's on-disk cache (off: cold compiles)")
    flags.DEFINE_bool("gemm", False, "also measure the GEMM peak (JAX and torch) and each row's % of it")
    flags.DEFINE_integer("gemm_size", 2048, "n of the n^3 float32 GEMM")
    flags.DEFINE_bool("masks", False, "also time one dropout mask + scale (hash, threefry, torch bernoulli_)")
    flags.DEFINE_list("mask_shape", ["4", "64", "256", "256"], "shape of the timed dropout mask (pocket attention)")
    flags.DEFINE_string("output", None, "write the results as JSON here")


def configure_threads(threads: int) -> None:
    """Both frameworks on `threads` CPU threads. XLA's single-thread setting only takes effect if
    JAX's backend has not started yet in this process (a warning says so otherwise)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    want = "--xla_cpu_multi_thread_eigen=false"
    if threads == 1 and want not in os.environ.get("XLA_FLAGS", ""):
        if "jax" in sys.modules:
            from jax._src import xla_bridge

            if xla_bridge.backends_are_initialized():
                warnings.warn("JAX started before threads=1 was set: XLA keeps its thread pool; call rows() "
                              f"before anything runs JAX, or export XLA_FLAGS='{want}'")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + want).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import torch

    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ ours
def jax_loss(tower: str, cfg, shape, module=None):
    """(value_and_grad of the pooled sum-of-squares loss, its (params, rest) args) of our tower's
    train step, not jitted: the benchmarks jit it, the breakdown traces it."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from molbind_jax.models import bert, gin, heads, unimol

    if tower == "bert":
        module = module or bert.BertEncoder(cfg, rngs=nnx.Rngs(0))
        ids, mask = text_inputs(cfg.vocab_size, *shape)
        call = lambda m: heads.text_cls_pool(m(ids, mask, train=True))
    elif tower == "gin":
        module = module or gin.GIN(cfg, rngs=nnx.Rngs(0))
        graph = gin.graphs_from_pyg(**graph_inputs(*shape))
        call = lambda m: m(graph, train=True)[1]
    else:
        module = module or unimol.UniMolEncoder(cfg, rngs=nnx.Rngs(0))
        tokens, coords = unimol_inputs(cfg.vocab_size, *shape)
        dist, et = unimol.pair_inputs(tokens, coords, cfg.vocab_size)
        call = lambda m: heads.unimol_mean_pool(m(tokens, dist, et, train=True), tokens, "atoms")
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, rest):
        m = nnx.merge(graphdef, *jax.tree.map(lambda x: x, (params, rest)))
        return jnp.sum(jnp.square(call(m).astype(jnp.float32)))

    return jax.value_and_grad(loss), (params, rest)


def jax_step(tower: str, cfg, shape):
    """(compiled grad fn, its args, compile seconds, FLOPs, temp MiB) of our tower's train step."""
    import jax
    from flax import nnx

    from molbind_jax.models import unimol

    fn, args = jax_loss(tower, cfg, shape)
    fn = jax.jit(fn)
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    flop_fn, flop_args = fn, args
    if tower in ("conformer", "pocket") and cfg.unroll != cfg.num_layers:
        # XLA counts a while loop's body once: count the FLOPs on a fully unrolled twin.
        twin = unimol.UniMolEncoder(dataclasses.replace(cfg, scan_unroll=cfg.num_layers), rngs=nnx.Rngs(0))
        flop_fn, flop_args = jax_loss(tower, cfg, shape, module=twin)
        flop_fn = jax.jit(flop_fn)
    cost = flop_fn.lower(*flop_args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2 ** 20
    return compiled, args, compile_s, float(cost.get("flops", 0.0)), temp_mib


# ------------------------------------------------------------------------------ torch
def _torch_train_step(module, forward):
    """One zero_grad + forward + sum-of-squares loss + backward of `module` in train mode."""
    module.train()

    def step():
        module.zero_grad(set_to_none=True)
        loss = forward().square().sum()
        loss.backward()
        return float(loss.detach())

    return step


def torch_step(tower: str, cfg, shape):
    """A closure running one forward + backward of our torch_reference (parity code) in train mode."""
    import torch

    from molbind_jax.models import unimol

    if tower == "bert":
        from molbind_jax.torch_reference.qformer import BertModel

        model = BertModel(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                          max_position_embeddings=cfg.max_position_embeddings, layer_norm_eps=cfg.layer_norm_eps,
                          dropout=cfg.dropout, num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                          encoder_width=cfg.hidden_size, cross_attention_freq=10 ** 6, hidden_act=cfg.hidden_act,
                          attention_dropout=cfg.attention_dropout)
        ids, mask = text_inputs(cfg.vocab_size, *shape)
        ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
        forward = lambda: model(ids_t, mask_t)[:, 0]
    elif tower == "gin":
        from molbind_jax.torch_reference.gin import GNN

        model = GNN(num_layer=cfg.num_layers, emb_dim=cfg.emb_dim, drop_ratio=cfg.drop_ratio,
                    self_loop_attr=cfg.self_loop_attr)
        g = {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in graph_inputs(*shape).items()}
        forward = lambda: model(g["x"], g["edge_index"], g["edge_attr"], g["batch"], int(g["batch"].max()) + 1)[1]
    else:
        from molbind_jax.torch_reference.unimol import UniMolEncoder

        model = UniMolEncoder(cfg.vocab_size, cfg.num_layers, cfg.embed_dim, cfg.ffn_dim, cfg.num_heads,
                              cfg.num_kernels, cfg.emb_dropout, cfg.dropout, cfg.attention_dropout,
                              cfg.activation_dropout)
        tokens, coords = unimol_inputs(cfg.vocab_size, *shape)
        dist, et = (np.asarray(a) for a in unimol.pair_inputs(tokens, coords, cfg.vocab_size))
        tok_t, dist_t, et_t = (torch.from_numpy(np.array(a)) for a in (tokens.astype(np.int64), dist,
                                                                        et.astype(np.int64)))
        real = (tok_t != 0)[..., None].float()

        def forward():
            rep = model(tok_t, dist_t.clone(), et_t)
            return (rep * real).sum(1) / real.sum(1)
    return _torch_train_step(model, forward)


def anchor_step(anchor):
    """A closure running one forward + backward of an `anchors.Anchor` in train mode."""
    return _torch_train_step(anchor.module, lambda: anchor.forward(anchor.module, *anchor.inputs))


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def first_call(fn):
    """(seconds, peak-RSS growth MiB) of `fn()`'s first call."""
    rss, t = _maxrss_mib(), time.perf_counter()
    fn()
    return time.perf_counter() - t, _maxrss_mib() - rss


# ------------------------------------------------------------------------------ timing
def time_interleaved(fns, repeats: int):
    """Median seconds of each callable in `fns` (None: skipped) over `repeats` rounds, each round
    running them in order and then in reverse (A B C C B A)."""
    acc = [[] for _ in fns]
    order = list(range(len(fns)))
    for _ in range(repeats):
        for i in order + order[::-1]:
            if fns[i] is None:
                continue
            t = time.perf_counter()
            fns[i]()
            acc[i].append(time.perf_counter() - t)
    return [float(np.median(a)) if a else None for a in acc]


def gemm_row(n: int = 2048, repeats: int = 3, progress=print) -> dict:
    """The float32 n^3 matmul in JAX and torch, interleaved: ms and GFLOP/s each."""
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    mm = jax.jit(jnp.dot)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fns = [lambda: jax.block_until_ready(mm(ja, jb)), lambda: torch.mm(ta, tb)]
    for f in fns:
        f()
    jax_s, torch_s = time_interleaved(fns, repeats)
    flop = 2.0 * n ** 3
    row = dict(tower="gemm", size=f"{n}^3", jax_ms=1e3 * jax_s, torch_ms=1e3 * torch_s, ratio=torch_s / jax_s,
               jax_gflops=flop / 1e9 / jax_s, torch_gflops=flop / 1e9 / torch_s, load=os.getloadavg())
    progress(f"gemm {n}^3 float32: jax {row['jax_gflops']:.1f} GFLOP/s, torch {row['torch_gflops']:.1f} GFLOP/s "
             f"(load {row['load'][0]:.2f})")
    return row


# ------------------------------------------------------------------------------ rows
ROW_KEYS = ("tower", "size", "shape", "layers", "jax_ms", "torch_ms", "ratio", "anchor_eager", "anchor_eager_ms",
            "anchor_eager_ratio", "anchor_compiled", "anchor_compiled_ms", "anchor_compiled_ratio", "anchor_compile_s",
            "best_anchor_ratio", "compile_s", "gflop", "gflops", "gemm_pct", "temp_mib", "torch_rss_mib",
            "anchor_eager_rss_mib", "anchor_compiled_rss_mib", "load")


def tower_row(tower: str, size: str, repeats: int, *, compile: bool = True, reference: bool = True,
              anchors: bool = True, gemm_gflops: float | None = None, progress=print, **config) -> dict:
    """One (tower, size) row (keys `ROW_KEYS`); `config`: `tower_inputs.tower_configs` options."""
    import jax
    import torch

    from experiments.benchmarks import anchors as anchor_lib

    cfg, shape = tower_configs(size, **config)[tower], shape_of(tower, size)
    progress(f"{tower} {size} {'x'.join(map(str, shape))}: compiling ours ...")
    compiled, args, compile_s, flops, temp_mib = jax_step(tower, cfg, shape)
    ours = lambda: jax.block_until_ready(compiled(*args))
    ours()  # first call after compile: buffers, caches
    sides, row = [ours], dict(tower=tower, size=size, shape=list(shape), layers=cfg.num_layers)
    row.update({k: None for k in ROW_KEYS if k not in row})
    if reference:
        ref = torch_step(tower, cfg, shape)
        _, row["torch_rss_mib"] = first_call(ref)
        sides.append(ref)
    else:
        sides.append(None)
    eager = comp = None
    if anchors or compile:
        anchor = anchor_lib.build_anchor(tower, size, *shape)
        if anchors:
            eager = anchor_step(anchor)
            row["anchor_eager"] = anchor.name
            _, row["anchor_eager_rss_mib"] = first_call(eager)
        if compile:
            torch._dynamo.reset()  # a fresh compile per row (and no recompile limit across rows)
            c_anchor = anchor_lib.compile_anchor(anchor_lib.build_anchor(tower, size, *shape))
            comp = anchor_step(c_anchor)
            row["anchor_compiled"] = c_anchor.name
            progress(f"{tower} {size}: torch.compile of {anchor.name} ...")
            row["anchor_compile_s"], row["anchor_compiled_rss_mib"] = first_call(comp)
            comp()
    sides += [eager, comp]
    progress(f"{tower} {size}: timing {sum(s is not None for s in sides)} sides x {2 * repeats} calls "
             f"(ours compiled in {compile_s:.1f} s)")
    jax_s, ref_s, eager_s, comp_s = time_interleaved(sides, repeats)
    row.update(jax_ms=1e3 * jax_s, compile_s=compile_s, gflop=flops / 1e9, gflops=flops / 1e9 / jax_s,
               temp_mib=temp_mib, load=os.getloadavg())
    for name, s in (("torch", ref_s), ("anchor_eager", eager_s), ("anchor_compiled", comp_s)):
        if s is not None:
            row[f"{name}_ms"] = 1e3 * s
            row["ratio" if name == "torch" else f"{name}_ratio"] = s / jax_s
    anchor_s = [s for s in (eager_s, comp_s) if s is not None]
    row["best_anchor_ratio"] = min(anchor_s) / jax_s if anchor_s else None
    if gemm_gflops:
        row["gemm_pct"] = 100 * row["gflops"] / gemm_gflops
    progress(_row_line(row))
    return row


def rows(towers=TOWERS, sizes=("mini", "original"), repeats: int = 3, threads: int = 1, compile: bool = True, *,
         reference: bool = True, anchors: bool = True, gemm: bool = False, gemm_size: int = 2048,
         compile_cache: bool = False, gemm_gflops: float | None = None, progress=print, **config) -> list[dict]:
    """The tower rows of every (size, tower), after the GEMM row when `gemm`.

    `threads`: see `configure_threads` (for 1 thread, call before anything runs JAX in the process);
    `compile`: also the `torch.compile`d anchors; `reference`: also our torch_reference;
    `anchors`: also the eager anchors; `compile_cache`: let torch.compile reuse Inductor's
    on-disk cache of earlier runs (default off: its compile time is a cold compile, as ours, which
    reuses nothing within the run); `config`: dtype, remat, scan_unroll, dropout_rng,
    num_layers (`tower_inputs.tower_configs`). Each row's keys: `ROW_KEYS`."""
    bad = sorted(set(towers) - set(TOWERS)) + sorted(set(sizes) - set(SIZES))
    if bad:
        raise ValueError(f"unknown towers/sizes {bad}; expected towers of {TOWERS}, sizes of {SIZES}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    configure_threads(threads)
    import torch
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    out, peak = [], gemm_gflops  # a GEMM peak measured earlier in the process (the suite's gemm part)
    if gemm:
        out.append(gemm_row(gemm_size, repeats, progress))
        peak = out[-1]["jax_gflops"]
    no_cache = inductor_config.force_disable_caches
    inductor_config.force_disable_caches = not compile_cache
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")  # what we asked for
            for size in sizes:
                for tower in towers:
                    out.append(tower_row(tower, size, repeats, compile=compile, reference=reference, anchors=anchors,
                                         gemm_gflops=peak, progress=progress, **config))
    finally:
        inductor_config.force_disable_caches = no_cache
    return out


def time_masks(shape, rate: float = 0.1, repeats: int = 5, with_torch: bool = True) -> dict:
    """Median ms of `dropout(x)` (mask + scale) at `shape`: ours per generator, torch's bernoulli_."""
    import jax
    import jax.numpy as jnp

    from molbind_jax.models.layers import DROPOUT_RNGS, dropout

    x = jnp.ones(shape, jnp.float32)
    out = {}
    for impl in DROPOUT_RNGS:
        fn = jax.jit(lambda k, x, impl=impl: dropout(x, rate, k, impl=impl))
        jax.block_until_ready(fn(jax.random.key(0), x))
        ts = []
        for i in range(repeats):
            key = jax.random.key(i + 1)
            t = time.perf_counter()
            jax.block_until_ready(fn(key, x))
            ts.append(time.perf_counter() - t)
        out[impl] = 1e3 * float(np.median(ts))
    if with_torch:
        import torch

        xt = torch.ones(shape)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.nn.functional.dropout(xt, rate, training=True)
            ts.append(time.perf_counter() - t)
        out["torch"] = 1e3 * float(np.median(ts))
    return out


# ------------------------------------------------------------------------------ main
def main(argv):
    del argv
    config = dict(dtype=FLAGS.dtype, remat=FLAGS.remat, scan_unroll=FLAGS.scan_unroll, dropout_rng=FLAGS.dropout_rng,
                  num_layers=FLAGS.num_layers)
    try:
        out = rows(FLAGS.towers, FLAGS.sizes, FLAGS.repeats, FLAGS.threads, FLAGS.compile, reference=FLAGS.torch,
                   anchors=FLAGS.anchors, gemm=FLAGS.gemm, gemm_size=FLAGS.gemm_size,
                   compile_cache=FLAGS.compile_cache, **config)
    except ValueError as e:
        raise app.UsageError(str(e))
    import jax

    masks = None
    if FLAGS.masks:
        shape = tuple(int(v) for v in FLAGS.mask_shape)
        masks = time_masks(shape, with_torch=FLAGS.torch)
        print(f"dropout mask + scale at {shape}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in masks.items()))
    load = os.getloadavg()
    gemm = [r for r in out if r["tower"] == "gemm"]
    towers = [r for r in out if r["tower"] != "gemm"]
    print()
    for r in gemm:
        print(f"GEMM {r['size']} float32: JAX {r['jax_gflops']:.1f} GFLOP/s, torch {r['torch_gflops']:.1f} GFLOP/s")
    if towers:
        print(table(towers))
    print(f"\nload average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; "
          f"threads={FLAGS.threads}, dtype={FLAGS.dtype}, remat={FLAGS.remat}, dropout_rng={FLAGS.dropout_rng}")
    if FLAGS.output:
        import torch

        affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        meta = dict(load=load, cpus=os.cpu_count(), machine=platform.processor() or platform.machine(),
                    jax=jax.__version__, torch=torch.__version__, threads=FLAGS.threads, repeats=FLAGS.repeats,
                    compile=FLAGS.compile, compile_cache=FLAGS.compile_cache, affinity=affinity, **config)
        with open(FLAGS.output, "w") as f:
            json.dump(dict(meta=meta, rows=out, dropout_masks_ms=masks), f, indent=1, default=str)
        print(f"wrote {FLAGS.output}")


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _row_line(r):
    return (f"{r['tower']:9s} {r['size']:8s} ours {_fmt(r['jax_ms'], '.0f')} ms, reference "
            f"{_fmt(r['torch_ms'], '.0f')} ms, anchor eager {_fmt(r['anchor_eager_ms'], '.0f')} ms, compiled "
            f"{_fmt(r['anchor_compiled_ms'], '.0f')} ms (compile {_fmt(r['anchor_compile_s'], '.0f')} s); best anchor "
            f"/ ours {_fmt(r['best_anchor_ratio'], '.2f')}; ours compiled in {r['compile_s']:.1f} s, "
            f"{r['gflops']:.1f} GFLOP/s (load {r['load'][0]:.2f})")


def table(rows) -> str:
    """The markdown table of tower rows (ms columns; ratios are the other side / ours)."""
    head = ("| tower | size | batch | layers | ours ms | reference ms | ref/ours | anchor eager ms | eager/ours "
            "| anchor compiled ms | compiled/ours | best anchor/ours | our compile s | torch.compile s | GFLOP "
            "| GFLOP/s | % GEMM | scratch MiB |")
    lines = [head, "|" + "---|" * 18]
    for r in rows:
        lines.append(
            f"| {r['tower']} | {r['size']} | {'x'.join(map(str, r['shape']))} | {r['layers']} | {r['jax_ms']:.0f} | "
            f"{_fmt(r['torch_ms'], '.0f')} | {_fmt(r['ratio'], '.2f')} | {_fmt(r['anchor_eager_ms'], '.0f')} | "
            f"{_fmt(r['anchor_eager_ratio'], '.2f')} | {_fmt(r['anchor_compiled_ms'], '.0f')} | "
            f"{_fmt(r['anchor_compiled_ratio'], '.2f')} | {_fmt(r['best_anchor_ratio'], '.2f')} | "
            f"{r['compile_s']:.1f} | {_fmt(r['anchor_compile_s'], '.0f')} | {r['gflop']:.2f} | {r['gflops']:.1f} | "
            f"{_fmt(r['gemm_pct'], '.0f')} | {r['temp_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    define_flags()
    app.run(main)
