"""Whole-step benchmark: one MolBind training step (all four pairs, the InfoNCE loss, the AdamW
update), ours (`TrainStep`, split and fused) against a PyTorch step over the anchor towers.

    taskset -c 0 .venv/bin/python experiments/benchmarks/step.py --sizes=mini --repeats=3 \\
        --output=/tmp/step.json

Ours: `molbind_jax.training.train_step.TrainStep` built as training/train.py builds it (mesh
of this process's devices, `StepOptions` with the fixed temperature 0.1 and weights 0.25,
`make_optimizer` AdamW with a constant learning rate, `frozen=("text_encoder",)` when the text
tower is locked), fed synthetic pair batches of fixed shapes (step_inputs.py). "split" is the
default per-pair programs + one update; "fused" (`StepOptions.fused`) is one program.

Theirs (`torch_step`): the anchor towers (experiments/benchmarks/anchors.py when importable:
transformers' BertModel, torch_geometric's GIN, unimol_tools' Uni-Mol; otherwise our own
`molbind_jax/torch_reference` modules, `step_inputs.reference_anchor`; the row's
`anchor_source` says which), projection heads to the shared embedding dim (Linear for text,
LayerNorm + Linear for the others, as ours), L2 normalisation, the symmetric InfoNCE per pair
at the fixed temperature, summed with weights 0.25, `torch.optim.AdamW` with the same lr and
weight decay; eager and, with `--torch_compile`, the loss under `torch.compile`.
A locked text tower: its parameters take no gradient and no update on either side (both
still run its train-mode forward).

Per (size, text mode) row: the median ms per step of `--repeats` interleaved rounds (the
variants in order, then reversed: A B B A), examples/s (the step's examples summed over the
pairs), `ratio_*` = the best torch time / ours (above 1: ours faster), the first call (compile
+ one step) and the compile estimate (first call minus the median), XLA cost-analysis GFLOP of
our step (split: the sum of the per-pair gradient programs; Uni-Mol's scanned layers counted on
a fully unrolled twin that is lowered, never compiled) and GFLOP/s, the peak RSS and the machine
load (`os.getloadavg()`) at the start and the end of the row: on a shared machine the numbers
are indicative only.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))
sys.path.insert(0, HERE)

import step_inputs  # noqa: E402
from step_inputs import LENGTHS, MODALITY_TOWER, SIZES, Anchor, model_config, reference_anchor  # noqa: E402,F401

PAIRS = ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")
DEFAULT_BATCH = dict(graph_text=8, conformer_text=8, graph_conformer=16, conformer_pocket=4)
TEXT_MODES = ("trainable", "locked")
TEMPERATURE, WEIGHT = 0.1, 0.25


def say(msg: str, progress: bool = True) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def anchor_builder():
    """(build_anchor, source): anchors.build_anchor when importable, else the fallback."""
    try:
        import anchors  # experiments/benchmarks/anchors.py

        return anchors.build_anchor, "anchors"
    except ImportError:
        return None, "torch_reference"


# ------------------------------------------------------------------------------ ours
def our_step(cfg, batches: dict, *, fused: bool, frozen: tuple[str, ...] = (), lr: float = 1e-4,
             weight_decay: float = 0.05, seed: int = 0, mesh=None):
    """(TrainStep, state, global batches) for `batches` ({pair: host-local PairBatch})."""
    from flax import nnx

    from molbind_jax.models.molbind import MolBind
    from molbind_jax.training import sharding
    from molbind_jax.training.train_step import (StepOptions, TrainStep, init_trainable, lr_schedule,
                                                 make_optimizer, param_labels)

    mesh = mesh or sharding.make_mesh()
    model = MolBind(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    opts = StepOptions(pairs=tuple(batches), weights={p: WEIGHT for p in batches}, temperature=TEMPERATURE,
                       fused=fused, frozen=tuple(frozen), seed=seed)
    schedule = lr_schedule(peak_lr=lr, warmup_lr=lr, min_lr=lr, warmup_steps=0, total_steps=1)  # constant
    tx = make_optimizer(schedule, weight_decay=weight_decay, labels=param_labels(init_trainable(model, opts), opts.frozen))
    ts = TrainStep(model, tx, mesh, opts)
    state = ts.init_state(model)
    return ts, state, {p: sharding.global_batch(b, mesh) for p, b in batches.items()}


def our_gflop(cfg, batches: dict, *, frozen=(), mesh=None) -> dict[str, float]:
    """XLA cost-analysis GFLOP of one step, {"split": its programs summed (the per-pair
    gradients, the adds, the update), "fused": the one program}, lowered (not compiled,
    `training.step_programs`) on a twin whose Uni-Mol stacks are fully unrolled (XLA counts a
    scan body once)."""
    import dataclasses

    from molbind_jax.training import step_programs

    twin = cfg.replace(**{m: dataclasses.replace(getattr(cfg, m), scan_unroll=getattr(cfg, m).num_layers)
                          for m in ("conformer", "pocket") if m in cfg.modalities})
    ts, state, glob = our_step(twin, batches, fused=False, frozen=frozen, mesh=mesh)

    return {kind: step_programs.flops(step_programs.lower_step(ts, state, [glob], fused=kind == "fused")) / 1e9
            for kind in ("split", "fused")}


# ------------------------------------------------------------------------------ theirs
def torch_step(towers: dict[str, Anchor], embed_dim: int, *, temperature: float = TEMPERATURE,
               weights: dict[str, float] | None = None, lr: float = 1e-4, weight_decay: float = 0.05,
               frozen: tuple[str, ...] = (), compile: bool = False, seed: int = 0):
    """A closure running one PyTorch MolBind step; returns the step's loss (float).

    towers: {"<pair>/<modality>": Anchor}, e.g. "graph_text/graph"; the anchors of one modality
    share the first one's module (one conformer tower serves three pairs), each brings its
    pair's inputs. embed_dim: the shared embedding width. frozen: modalities whose tower takes
    no gradient (a locked text tower)."""
    import torch
    import torch.nn.functional as F

    from molbind_data import schema

    torch.manual_seed(seed)
    modules, dims = {}, {}
    for key, a in towers.items():
        pair, modality = key.split("/")
        modules.setdefault(modality, a.module)
        dims.setdefault(modality, a.out_dim)
    pairs = list(dict.fromkeys(k.split("/")[0] for k in towers))
    weights = weights or {p: WEIGHT for p in pairs}
    heads = torch.nn.ModuleDict({
        m: (torch.nn.Linear(d, embed_dim) if m == "text" else
            torch.nn.Sequential(torch.nn.LayerNorm(d), torch.nn.Linear(d, embed_dim))) for m, d in dims.items()})
    for m, mod in modules.items():
        mod.train()
        mod.requires_grad_(m not in frozen)
    params = [p for mod in (*modules.values(), heads) for p in mod.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def loss_fn():
        total = 0.0
        for pair in pairs:
            pt = schema.pair_type(pair)
            x, y = (F.normalize(heads[m](towers[f"{pair}/{m}"].forward(modules[m], *towers[f"{pair}/{m}"].inputs)),
                                dim=-1) for m in (pt.x, pt.y))
            logits = (x @ y.T) / temperature
            labels = torch.arange(len(x))
            total = total + weights[pair] * 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        return total

    fn = torch.compile(loss_fn) if compile else loss_fn

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def torch_towers(size: str, records: dict, batch: dict, *, seed: int = 0):
    """({"<pair>/<modality>": Anchor}, source) for the pairs of `records`: anchors.build_anchor
    per tower where importable (mini and original sizes), else `reference_anchor` on `records`;
    source is "anchors", "torch_reference" or, mixed, the source of each modality."""
    from molbind_data import schema

    build, _ = anchor_builder()
    if size not in ("mini", "original"):  # the anchors exist at the mini and original sizes only
        build = None
    out, modules, sources = {}, {}, {}
    for pair, recs in records.items():
        for m in schema.pair_type(pair).modalities:
            tower, length = MODALITY_TOWER[m], LENGTHS[size][m]
            a = None
            if build is not None and sources.get(m) != "torch_reference":
                try:
                    a, sources[m] = build(tower, size, batch[pair], length, seed=seed), "anchors"
                except ImportError as e:  # the anchor's library is not installed: our reference instead
                    say(f"anchor {tower}: {e}; using molbind_jax/torch_reference")
            if a is None:
                a = reference_anchor(tower, size, batch[pair], length, seed=seed, records=recs)
                sources[m] = "torch_reference"
            if m in modules:  # the tower's module is shared across pairs; drop the copy
                a = Anchor(a.name, modules[m], a.inputs, a.forward, a.out_dim)
            modules.setdefault(m, a.module)
            out[f"{pair}/{m}"] = a
    kinds = set(sources.values())
    source = kinds.pop() if len(kinds) == 1 else ", ".join(f"{m}: {v}" for m, v in sources.items())
    return out, source


# ------------------------------------------------------------------------------ timing
def interleaved(fns: dict, repeats: int, progress: bool = True) -> dict:
    """Median seconds per callable over `repeats` rounds: the callables in order, then reversed."""
    times = {k: [] for k in fns}
    order = list(fns)
    for r in range(repeats):
        for k in order + order[::-1]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
        say(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {1e3 * times[k][-1]:.0f} ms" for k in order), progress)
    return {k: float(np.median(v)) for k, v in times.items()}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows(sizes=("mini",), repeats: int = 3, *, text=TEXT_MODES, batch: dict | None = None, pairs=PAIRS,
         split: bool = True,
         fused: bool = True, torch: bool = True, torch_compile: bool = False, flops: bool = True,
         lr: float = 1e-4, weight_decay: float = 0.05, dtype: str = "float32", seed: int = 0,
         devices: int | None = None, progress: bool = True) -> list[dict]:
    """One row per (size, text mode); see the module docstring for the fields. `pairs`: a subset
    of the four pair types (tests; a whole step has all four). `devices`: the mesh size (default:
    all of this process's devices)."""
    import jax

    from molbind_jax.training import sharding

    batch = {**DEFAULT_BATCH, **(batch or {})}
    unknown = (sorted(set(sizes) - set(SIZES)) + sorted(set(text) - set(TEXT_MODES))
               + sorted((set(batch) | set(pairs)) - set(PAIRS)))
    if unknown:
        raise ValueError(f"unknown sizes / text modes / pairs {unknown}: expected sizes {SIZES}, text {TEXT_MODES}, "
                         f"pairs {PAIRS}")
    if not (split or fused or torch):
        raise ValueError("nothing to time: enable split, fused or torch")
    mesh = sharding.make_mesh(devices)
    n_dev = mesh.size
    batch = {p: int(batch[p]) for p in PAIRS if p in pairs}
    bad = {p: b for p, b in batch.items() if b < 2 or b % n_dev}
    if bad:
        raise ValueError(f"batches {bad}: each needs at least 2 rows and a multiple of the {n_dev} devices")
    out = []
    for size in sizes:
        cfg = model_config(size, dtype=dtype)
        records = {p: step_inputs.pair_records(p, batch[p], LENGTHS[size], cfg, seed) for p in batch}
        host = {p: step_inputs.pair_batch(p, r, LENGTHS[size], num_shards=n_dev) for p, r in records.items()}
        for mode in text:
            load = os.getloadavg()
            frozen_ours = ("text_encoder",) if mode == "locked" else ()
            row = dict(size=size, text=mode, batch=dict(batch), lengths=dict(LENGTHS[size]), dtype=dtype,
                       examples=sum(batch.values()), devices=n_dev, load=load)
            fns, first = {}, {}
            for name, on in (("split", split), ("fused", fused)):
                if not on:
                    continue
                ts, state, glob = our_step(cfg, host, fused=name == "fused", frozen=frozen_ours, lr=lr,
                                           weight_decay=weight_decay, seed=seed, mesh=mesh)
                holder = {"state": state}

                def call(ts=ts, holder=holder, glob=glob):
                    holder["state"], m = ts(holder["state"], [glob])
                    jax.block_until_ready(holder["state"])  # the update too, not only the loss
                    return float(m["loss"])

                say(f"{size} text {mode}: compiling our {name} step ({', '.join(f'{p} {b}' for p, b in batch.items())}; "
                    f"lengths {LENGTHS[size]}) ...", progress)
                t = time.perf_counter()
                row[f"loss_{name}"] = call()
                first[name] = time.perf_counter() - t
                call()  # one more before timing (buffers, caches)
                fns[name] = call
            if torch:
                import torch as _torch  # noqa: F401

                towers, row["anchor_source"] = torch_towers(size, records, batch, seed=seed)
                embed = cfg.embed_dim
                frozen_torch = ("text",) if mode == "locked" else ()
                for name, comp in (("torch", False), ("torch_compiled", True)):
                    if comp and not torch_compile:
                        continue
                    say(f"{size} text {mode}: first {name} step ({row['anchor_source']} towers) ...", progress)
                    fn = torch_step(towers, embed, lr=lr, weight_decay=weight_decay, frozen=frozen_torch,
                                    compile=comp, seed=seed)
                    t = time.perf_counter()
                    row[f"loss_{name}"] = fn()
                    first[name] = time.perf_counter() - t
                    fn()
                    fns[name] = fn
            med = interleaved(fns, repeats, progress)
            for name, s in med.items():
                row[f"{name}_ms"] = 1e3 * s
                row[f"{name}_examples_per_s"] = row["examples"] / s
                row[f"{name}_first_call_s"] = first[name]
                row[f"{name}_compile_s"] = max(first[name] - s, 0.0)
            torch_best = min((med[k] for k in ("torch", "torch_compiled") if k in med), default=None)
            ours = [name for name in ("split", "fused") if name in med]
            if flops and ours:
                say(f"{size} text {mode}: counting our step's FLOPs (lowering an unrolled twin) ...", progress)
                gflop = our_gflop(cfg, host, frozen=frozen_ours, mesh=mesh)
            for name in ours:
                row[f"ratio_{name}"] = None if torch_best is None else torch_best / med[name]
                if flops:
                    row[f"{name}_gflop"], row[f"{name}_gflops"] = gflop[name], gflop[name] / med[name]
            row["peak_rss_mib"] = peak_rss_mib()
            row["load_end"] = os.getloadavg()
            out.append(row)
            say(row_line(row), progress)
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def row_line(r: dict) -> str:
    parts = [f"{r['size']} text {r['text']}:"]
    for name in ("split", "fused", "torch", "torch_compiled"):
        if f"{name}_ms" in r:
            parts.append(f"{name} {r[f'{name}_ms']:.0f} ms")
    parts.append(f"ratio split {_fmt(r.get('ratio_split'), '.2f')} fused {_fmt(r.get('ratio_fused'), '.2f')}")
    return " ".join(parts) + f" (load {r['load'][0]:.2f})"


def table(rows_: list[dict]) -> str:
    head = ("| size | text | examples | ours split ms | ours fused ms | torch ms | torch compiled ms | torch/ours split "
            "| torch/ours fused | examples/s (best ours) | compile s split / fused | GFLOP | GFLOP/s split | anchors "
            "| load |")
    lines = [head, "|" + "---|" * 15]
    for r in rows_:
        best = max((r.get(f"{k}_examples_per_s") or 0) for k in ("split", "fused"))
        lines.append(
            f"| {r['size']} | {r['text']} | {r['examples']} | {_fmt(r.get('split_ms'), '.0f')} | "
            f"{_fmt(r.get('fused_ms'), '.0f')} | {_fmt(r.get('torch_ms'), '.0f')} | {_fmt(r.get('torch_compiled_ms'), '.0f')} | "
            f"{_fmt(r.get('ratio_split'), '.2f')} | {_fmt(r.get('ratio_fused'), '.2f')} | {best:.1f} | "
            f"{_fmt(r.get('split_compile_s'), '.1f')} / {_fmt(r.get('fused_compile_s'), '.1f')} | "
            f"{_fmt(r.get('split_gflop', r.get('fused_gflop')), '.1f')} | {_fmt(r.get('split_gflops'), '.1f')} | "
            f"{r.get('anchor_source', '-')} | {r['load'][0]:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def define_flags():
    from absl import flags

    flags.DEFINE_list("sizes", ["mini"], f"sizes, of {SIZES}")
    flags.DEFINE_list("text", list(TEXT_MODES), "text tower modes: trainable, locked (frozen, as mini.py)")
    flags.DEFINE_integer("repeats", 3, "interleaved rounds (each variant runs twice per round)")
    for p in PAIRS:
        flags.DEFINE_integer(f"batch_{p}", DEFAULT_BATCH[p], f"batch of {p}")
    flags.DEFINE_bool("split", True, "time our split step")
    flags.DEFINE_bool("fused", True, "time our fused step (StepOptions.fused)")
    flags.DEFINE_bool("torch", True, "time the PyTorch step")
    flags.DEFINE_bool("torch_compile", False, "also time the PyTorch step under torch.compile")
    flags.DEFINE_bool("flops", True, "count our step's FLOPs (XLA cost analysis of an unrolled twin)")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "our matmul dtype (torch stays float32)")
    flags.DEFINE_integer("threads", 1, "CPU threads for both frameworks (1: single-threaded; pin with taskset)")
    flags.DEFINE_float("lr", 1e-4, "AdamW learning rate (constant)")
    flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay")
    flags.DEFINE_string("output", None, "write the rows as JSON here")


def main(argv):
    del argv
    from absl import flags

    F = flags.FLAGS
    if F.threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if F.torch:
        import torch

        torch.set_num_threads(F.threads)
    result = rows(F.sizes, F.repeats, text=F.text, batch={p: getattr(F, f"batch_{p}") for p in PAIRS}, split=F.split,
                  fused=F.fused, torch=F.torch, torch_compile=F.torch_compile, flops=F.flops, lr=F.lr,
                  weight_decay=F.weight_decay, dtype=F.dtype)
    load = os.getloadavg()
    print("\n" + table(result))
    print(f"\nload average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; "
          f"threads={F.threads}, dtype={F.dtype}")
    if F.output:
        meta = dict(load=load, cpus=os.cpu_count(), machine=platform.processor() or platform.machine(),
                    jax=jax.__version__, threads=F.threads, repeats=F.repeats,
                    affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)
        with open(F.output, "w") as f:
            json.dump(dict(meta=meta, rows=result), f, indent=1)
        print(f"wrote {F.output}")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
