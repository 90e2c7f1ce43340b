"""Tower micro-benchmark: forward + backward of each tower, ours (JAX) against the PyTorch
references of `molbind_jax/torch_reference`, at the mini and the original sizes.

    taskset -c 0 .venv/bin/python experiments/benchmarks/towers.py --repeats=3 \\
        --output=/tmp/towers.json

One train-mode step per call on both sides (dropout as configured, float32): the loss is the
sum of squares of the tower's output over real positions, and the backward pass gives every
parameter's gradient. Both sides run single-threaded by default (`--threads=1`: XLA_FLAGS
`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`, `torch.set_num_threads(1)`);
pin the process to one core with `taskset -c 0` so the two frameworks share the same core.

Per (tower, size) it reports:
  * `jax_ms`, `torch_ms`: the median of `--repeats` rounds of interleaved calls A B B A
    (each framework runs twice per round, in alternating order, so load changes hit both);
  * `ratio`: torch_ms / jax_ms (above 1: ours is faster);
  * `compile_s`: the first-call compile of our jitted forward + backward;
  * `temp_mib`: the scratch memory of our compiled step (`memory_analysis().temp_size_in_bytes`);
  * `gflop` and `gflops`: XLA's `cost_analysis()` FLOP count of the step (the layer loop
    counted once per layer: for the scanned Uni-Mol stack the count is taken on a fully unrolled
    twin, which is lowered but never compiled) and the achieved GFLOP/s at `jax_ms`.
The machine load (`os.getloadavg()`) is printed with the table and stored in the JSON: on a
shared machine the numbers are indicative only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

FLAGS = flags.FLAGS
TOWERS = ("bert", "gin", "conformer", "pocket")
flags.DEFINE_list("towers", list(TOWERS), f"towers to run, of {TOWERS}")
flags.DEFINE_list("sizes", ["mini", "original"], "sizes to run: mini (experiments/configs/mini.py towers), original")
flags.DEFINE_integer("repeats", 3, "rounds of A B B A interleaved calls; the median of 2*repeats calls is reported")
flags.DEFINE_integer("threads", 1, "CPU threads for both frameworks (1: single-threaded)")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "our matmul dtype (the torch side stays float32)")
flags.DEFINE_string("remat", "none", "Uni-Mol layer-body rematerialisation (models/layers.REMAT_POLICIES)")
flags.DEFINE_integer("scan_unroll", 1, "Uni-Mol layers per scan iteration (its num_layers: fully unrolled)")
flags.DEFINE_enum("dropout_rng", "hash", ["hash", "threefry"], "our dropout mask generator")
flags.DEFINE_integer("num_layers", 0, "override every tower's depth (0: the size's own)")
flags.DEFINE_bool("torch", True, "also time the PyTorch reference")
flags.DEFINE_bool("masks", False, "also time one dropout mask + scale (hash, threefry, torch bernoulli_)")
flags.DEFINE_list("mask_shape", ["4", "64", "256", "256"], "shape of the timed dropout mask (pocket attention)")
flags.DEFINE_string("output", None, "write the results as JSON here")

# Batch shapes per size: (batch, length) of text, graphs x atoms, molecules x atoms, pockets x atoms.
SHAPES = {
    "mini": dict(text=(16, 128), graph=(16, 24), conformer=(16, 32), pocket=(4, 256)),
    "original": dict(text=(8, 128), graph=(16, 24), conformer=(16, 32), pocket=(4, 256)),
}


def tower_configs(size: str):
    """Our configs of the four towers at `size` (mini: the sizes of experiments/configs/mini.py)."""
    from molbind_jax.models.bert import BertConfig
    from molbind_jax.models.gin import GINConfig
    from molbind_jax.models.unimol import UniMolConfig

    if size == "original":
        uni = {}
        cfg = dict(bert=BertConfig.scibert(vocab_size=31091), gin=GINConfig(), conformer=UniMolConfig.molecule(),
                   pocket=UniMolConfig.pocket())
    elif size == "mini":
        uni = dict(num_layers=2, embed_dim=128, ffn_dim=256, num_heads=8, num_kernels=32)
        cfg = dict(bert=BertConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                                   intermediate_size=1536, use_token_type=False),  # all-MiniLM-L6-v2
                   gin=GINConfig(num_layers=3, emb_dim=128), conformer=UniMolConfig.molecule(**uni),
                   pocket=UniMolConfig.pocket(**uni))
    else:
        raise ValueError(f"unknown size {size!r}; expected mini or original")
    import jax.numpy as jnp

    dt = jnp.dtype(FLAGS.dtype)
    out = {}
    for name, c in cfg.items():
        kw = dict(dtype=dt)
        if name in ("conformer", "pocket"):
            kw.update(remat=FLAGS.remat, scan_unroll=FLAGS.scan_unroll)
        kw["dropout_rng"] = FLAGS.dropout_rng
        if FLAGS.num_layers:
            kw["num_layers"] = FLAGS.num_layers
        out[name] = dataclasses.replace(c, **kw)
    return out


# ------------------------------------------------------------------------------ inputs
def unimol_inputs(vocab: int, batch: int, atoms: int, seed: int = 0):
    """tokens [B,N] ([CLS] atoms [SEP], later rows shorter, padded with 0) and coordinates."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((batch, atoms), np.int32)
    coords = np.zeros((batch, atoms, 3), np.float32)
    for i in range(batch):
        n = max(3, atoms - (i * atoms) // (2 * batch))
        tokens[i, :n] = [1] + list(rng.integers(4, vocab - 1, n - 2)) + [2]
        coords[i, 1:n - 1] = rng.normal(scale=1.5, size=(n - 2, 3))
    return tokens, coords


def text_inputs(vocab: int, batch: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lens = np.linspace(length, max(2, length // 4), batch).astype(int)
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)
    ids = (rng.integers(5, vocab, (batch, length)) * mask).astype(np.int32)
    return ids, mask


def graph_inputs(batch: int, atoms: int, seed: int = 0):
    """PyG-style chains with a ring closure per molecule (both bond directions)."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(atoms // 2, atoms + 1)) for _ in range(batch)]
    x = np.concatenate([np.stack([rng.integers(0, 118, n), rng.integers(0, 3, n)], 1) for n in sizes])
    edges, off = [], 0
    for n in sizes:
        edges += [(off + i, off + i + 1) for i in range(n - 1)] + [(off + i + 1, off + i) for i in range(n - 1)]
        edges += [(off, off + n - 1), (off + n - 1, off)]
        off += n
    edge_index = np.array(edges).T.astype(np.int64)
    edge_attr = np.stack([rng.integers(0, 4, edge_index.shape[1]), rng.integers(0, 3, edge_index.shape[1])], 1)
    return dict(x=x, edge_index=edge_index, edge_attr=edge_attr, batch=np.repeat(np.arange(batch), sizes))


# ------------------------------------------------------------------------------ ours
def jax_step(tower: str, cfg, shape):
    """(compiled grad fn, its args, compile seconds, FLOPs, temp MiB) of our tower's train step."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from molbind_jax.models import bert, gin, unimol

    if tower == "bert":
        module = bert.BertEncoder(cfg, rngs=nnx.Rngs(0))
        ids, mask = text_inputs(cfg.vocab_size, *shape)
        real = jnp.asarray(mask, bool)[..., None]
        call = lambda m: jnp.where(real, m(ids, mask, train=True), 0.0)
    elif tower == "gin":
        module = gin.GIN(cfg, rngs=nnx.Rngs(0))
        graph = gin.graphs_from_pyg(**graph_inputs(*shape))
        call = lambda m: m(graph, train=True)[1]
    else:
        module = unimol.UniMolEncoder(cfg, rngs=nnx.Rngs(0))
        tokens, coords = unimol_inputs(cfg.vocab_size, *shape)
        dist, et = unimol.pair_inputs(tokens, coords, cfg.vocab_size)
        real = jnp.asarray(tokens != 0)[..., None]
        call = lambda m: jnp.where(real, m(tokens, dist, et, train=True), 0.0)

    def build(module):
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)

        def loss(params, rest):
            m = nnx.merge(graphdef, *jax.tree.map(lambda x: x, (params, rest)))
            return jnp.sum(jnp.square(call(m).astype(jnp.float32)))

        return jax.jit(jax.value_and_grad(loss)), (params, rest)

    fn, args = build(module)
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    flop_fn, flop_args = fn, args
    if tower in ("conformer", "pocket") and cfg.scan_unroll != cfg.num_layers:
        # XLA counts a while loop's body once: count the FLOPs on a fully unrolled twin.
        twin = unimol.UniMolEncoder(dataclasses.replace(cfg, scan_unroll=cfg.num_layers), rngs=nnx.Rngs(0))
        flop_fn, flop_args = build(twin)
    cost = flop_fn.lower(*flop_args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2 ** 20
    return compiled, args, compile_s, float(cost.get("flops", 0.0)), temp_mib


# ------------------------------------------------------------------------------ torch
def torch_step(tower: str, cfg, shape):
    """A closure running one forward + backward of the torch reference in train mode."""
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
        real = mask_t.bool()[..., None]
        forward = lambda: torch.where(real, model(ids_t, mask_t), 0.0)
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
        real = (tok_t != 0)[..., None]
        forward = lambda: torch.where(real, model(tok_t, dist_t.clone(), et_t), 0.0)
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        loss = forward().square().sum()
        loss.backward()
        return float(loss.detach())

    return step


def time_masks(shape, rate: float = 0.1, repeats: int = 5) -> dict:
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
    if FLAGS.torch:
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
def time_interleaved(a, b, repeats: int):
    """Median seconds of `a` and `b` over `repeats` rounds of A B B A."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, acc in ((a, ta), (b, tb), (b, tb), (a, ta)):
            if fn is None:
                continue
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return (float(np.median(ta)) if ta else None), (float(np.median(tb)) if tb else None)


def main(argv):
    del argv
    if FLAGS.threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    unknown = sorted(set(FLAGS.towers) - set(TOWERS))
    if unknown:
        raise app.UsageError(f"unknown towers {unknown}; expected some of {TOWERS}")
    if FLAGS.torch:
        import torch

        torch.set_num_threads(FLAGS.threads)
        torch.manual_seed(0)
    rows = []
    for size in FLAGS.sizes:
        configs = tower_configs(size)
        for tower in FLAGS.towers:
            cfg, shape = configs[tower], SHAPES[size][{"bert": "text", "gin": "graph"}.get(tower, tower)]
            compiled, args, compile_s, flops, temp_mib = jax_step(tower, cfg, shape)
            ours = lambda: jax.block_until_ready(compiled(*args))
            ours()  # first call after compile: buffers, caches
            theirs = torch_step(tower, cfg, shape) if FLAGS.torch else None
            if theirs is not None:
                theirs()
            jax_s, torch_s = time_interleaved(ours, theirs, FLAGS.repeats)
            row = dict(tower=tower, size=size, shape=list(shape), layers=cfg.num_layers, jax_ms=1e3 * jax_s,
                       torch_ms=None if torch_s is None else 1e3 * torch_s,
                       ratio=None if torch_s is None else torch_s / jax_s, compile_s=compile_s,
                       gflop=flops / 1e9, gflops=flops / 1e9 / jax_s, temp_mib=temp_mib, load=os.getloadavg())
            rows.append(row)
            print(_row_line(row), flush=True)
    masks = None
    if FLAGS.masks:
        shape = tuple(int(v) for v in FLAGS.mask_shape)
        masks = time_masks(shape)
        print(f"dropout mask + scale at {shape}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in masks.items()))
    load = os.getloadavg()
    if rows:
        print("\n" + table(rows))
    print(f"\nload average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; "
          f"threads={FLAGS.threads}, dtype={FLAGS.dtype}, remat={FLAGS.remat}, dropout_rng={FLAGS.dropout_rng}")
    if FLAGS.output:
        meta = dict(load=load, cpus=os.cpu_count(), machine=platform.processor() or platform.machine(),
                    jax=jax.__version__, threads=FLAGS.threads, dtype=FLAGS.dtype, remat=FLAGS.remat,
                    scan_unroll=FLAGS.scan_unroll, dropout_rng=FLAGS.dropout_rng, repeats=FLAGS.repeats,
                    affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)
        with open(FLAGS.output, "w") as f:
            json.dump(dict(meta=meta, rows=rows, dropout_masks_ms=masks), f, indent=1)
        print(f"wrote {FLAGS.output}")


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _row_line(r):
    return (f"{r['tower']:9s} {r['size']:8s} jax {_fmt(r['jax_ms'], '.0f')} ms, torch {_fmt(r['torch_ms'], '.0f')} ms, "
            f"ratio {_fmt(r['ratio'], '.2f')}, compile {r['compile_s']:.1f} s, {r['gflops']:.1f} GFLOP/s "
            f"(load {r['load'][0]:.2f})")


def table(rows) -> str:
    head = ("| tower | size | batch | layers | ours ms | torch ms | torch/ours | compile s | GFLOP | GFLOP/s "
            "| scratch MiB |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['tower']} | {r['size']} | {'x'.join(map(str, r['shape']))} | {r['layers']} | "
                     f"{r['jax_ms']:.0f} | {_fmt(r['torch_ms'], '.0f')} | {_fmt(r['ratio'], '.2f')} | "
                     f"{r['compile_s']:.1f} | {r['gflop']:.1f} | {r['gflops']:.1f} | {r['temp_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
