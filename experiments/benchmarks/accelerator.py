"""The whole MolBind train step on an accelerator (GPU, TPU; CPU for the tests): float32 and
bf16, split and fused, with step time, examples/s, achieved TFLOP/s, MFU and peak memory.

    experiments/benchmarks/accelerator.sh            # all variants, original size
    python experiments/benchmarks/accelerator.py --size=tiny --steps=2 --output=/tmp/acc.json

The step is the training one: `TrainStep` of molbind_jax/training/train_step.py built as
training/train.py builds it (AdamW with the LAVIS schedule, weight decay 0.05, all four pair
types weighted 0.25, duplicate-aware InfoNCE), on random-weight towers of
`MolBindConfig.original()` (or `.tiny()`), fed synthetic batches of the original's shapes (no
data, no network): text `--text_len` tokens, graphs of up to `--graph_atoms` atoms (chain plus
a ring bond), conformers and pockets padded to `--conformer_len` / `--pocket_len` tokens
([CLS] atoms [SEP]; later rows of a batch are shorter, as bucketed data is).

Variants (`--variants`): f32_split, f32_fused, bf16_split, bf16_fused. "bf16" is the model
config's `dtype="bfloat16"` (bf16 matmuls; parameters, LayerNorms, softmax, pooling and loss
stay float32); "fused" is `StepOptions.fused` (all pairs and the update in one program).
`--remat` sets `UniMolConfig.remat` of both Uni-Mol towers.

Per variant:
  * `first_call_s`: wall time of the first step (tracing, compiling, running); `compile_s` is
    that minus the median step;
  * `step_ms`: median of `--steps` steps after `--warmup` steps, each ended by
    `block_until_ready`; `examples_per_s`: pairs per second (the four pair batches summed);
  * `tflop_per_step`: XLA `cost_analysis()` FLOPs of the step's programs (split: the four
    per-pair gradient programs, the gradient adds and the update; fused: the one program),
    lowered on a twin whose Uni-Mol layer scans are fully unrolled (XLA counts a loop body
    once); `tflops`: that over the median step; `mfu`: `tflops` over the chip's dense peak
    (PEAK_TFLOPS; null on CPU or an unknown chip) times the device count;
  * `peak_memory_gib`: `peak_bytes_in_use` of `device.memory_stats()` where the backend has it
    (each variant runs in its own process, so the peak is its own), else the largest compiled
    program's arguments + outputs + scratch (`memory_analysis()`), `memory_source` says which.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

PAIRS = ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")
VARIANTS = ("f32_split", "f32_fused", "bf16_split", "bf16_fused")
# Per size: batch per pair type and padded lengths (text tokens, graph atoms, conformer / pocket tokens).
SIZES = {
    "original": dict(batch=dict(graph_text=64, conformer_text=64, graph_conformer=128, conformer_pocket=16),
                     text_len=128, graph_atoms=24, conformer_len=32, pocket_len=256),
    "tiny": dict(batch=dict(graph_text=8, conformer_text=8, graph_conformer=8, conformer_pocket=8),
                 text_len=32, graph_atoms=12, conformer_len=16, pocket_len=32),
}

# Dense peak TFLOP/s per chip (vendor specs, no sparsity): (bf16, float32 as XLA runs it by
# default: TF32 on NVIDIA Ampere/Hopper, bf16 passes on TPU). First match of device_kind wins.
PEAK_TFLOPS = (
    (r"H100.*PCIe", 756.0, 378.0),
    (r"H100|H200|GH200", 989.4, 494.7),
    (r"A100", 312.0, 156.0),
    (r"\bL4\b", 121.0, 60.0),
    (r"TPU v4", 275.0, 275.0),
    (r"TPU v5 ?lite|TPU v5e", 197.0, 197.0),
    (r"TPU v5p|TPU v5$", 459.0, 459.0),
    (r"TPU v6 ?lite|TPU v6e|Trillium", 918.0, 918.0),
)

FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Defined only when run as a program, so that importing this module (the tests) leaves
    # the process-wide absl flags alone.
    flags.DEFINE_enum("size", "original", list(SIZES), "model and batch size: original (MolBindConfig.original()) or tiny")
    flags.DEFINE_list("variants", list(VARIANTS), f"variants to run, of {VARIANTS}")
    flags.DEFINE_integer("steps", 10, "timed steps per variant (the median is reported)")
    flags.DEFINE_integer("warmup", 2, "untimed steps after the first call")
    for p in PAIRS:
        flags.DEFINE_integer(f"batch_{p}", 0, f"global batch of {p} (0: the size's default)")
    flags.DEFINE_integer("text_len", 0, "text tokens per row (0: the size's default)")
    flags.DEFINE_integer("graph_atoms", 0, "atoms of the largest graph (0: the size's default)")
    flags.DEFINE_integer("conformer_len", 0, "padded conformer tokens, [CLS] and [SEP] included (0: default)")
    flags.DEFINE_integer("pocket_len", 0, "padded pocket tokens, [CLS] and [SEP] included (0: default)")
    flags.DEFINE_string("remat", "none", "Uni-Mol layer rematerialisation: none, full or dots (UniMolConfig.remat)")
    flags.DEFINE_string("bert_attention_impl", "", "BertConfig.attention_impl: '' (None), xla, cudnn (bf16 variants "
                        "only; float32 ones keep None) or custom; training uses it only without attention dropout")
    flags.DEFINE_float("bert_attention_dropout", -1.0, "text tower attention dropout (-1: the size's own; 0 lets "
                       "training use jax.nn.dot_product_attention)")
    flags.DEFINE_integer("num_devices", 0, "devices of the data mesh (0: all)")
    flags.DEFINE_bool("flops", True, "count FLOPs on the unrolled twin (lowering only; costs host time)")
    flags.DEFINE_bool("isolate", True, "run each variant in its own process (clean peak memory and compile)")
    flags.DEFINE_string("output", None, "write the results as JSON here")


def log(msg: str) -> None:
    print(f"[accelerator {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def settings(size: str, **overrides) -> dict:
    """Batches and lengths of `size`, with the non-zero `overrides` (batch_<pair>=, text_len=, ...)."""
    s = dict(SIZES[size], batch=dict(SIZES[size]["batch"]))
    for k, v in overrides.items():
        if not v:
            continue
        if k.startswith("batch_"):
            s["batch"][k[len("batch_"):]] = int(v)
        else:
            s[k] = int(v)
    return s


def flag_settings() -> dict:
    names = [f"batch_{p}" for p in PAIRS] + ["text_len", "graph_atoms", "conformer_len", "pocket_len"]
    return settings(FLAGS.size, **{k: getattr(FLAGS, k) for k in names})


def peak_tflops(device_kind: str, platform_name: str, dtype: str):
    """(peak TFLOP/s per chip, note) for the variant's dtype; (None, why) where unknown."""
    if platform_name == "cpu":
        return None, "CPU: no MFU"
    for pattern, bf16, f32 in PEAK_TFLOPS:
        if re.search(pattern, device_kind):
            return (bf16 if dtype == "bfloat16" else f32), f"dense peak of {device_kind!r} ({pattern})"
    return None, f"unknown device_kind {device_kind!r}: add its peak to PEAK_TFLOPS"


# ------------------------------------------------------------------------------ model and step
def model_config(size: str, dtype: str, *, remat: str = "none", attention_impl: str | None = None,
                 attention_dropout: float = -1.0, unroll: bool = False):
    """MolBindConfig of `size` (tiny or original) in `dtype` with the Uni-Mol towers' `remat`
    and the text tower's `attention_impl` ("cudnn" only in bf16: float32 keeps None) and
    `attention_dropout` (negative: unchanged); `unroll`: Uni-Mol scans fully unrolled (FLOP twin)."""
    from molbind_jax.models.molbind import MolBindConfig

    base = MolBindConfig.tiny() if size == "tiny" else MolBindConfig.original()
    changes = {}
    for key in ("conformer", "pocket"):
        c = getattr(base, key)
        changes[key] = dataclasses.replace(c, remat=remat, scan_unroll=c.num_layers if unroll else c.scan_unroll)
    bert = dict(attention_impl=None if (attention_impl == "cudnn" and dtype == "float32") else attention_impl or None)
    if attention_dropout >= 0:
        bert["attention_dropout"] = attention_dropout
    changes["bert"] = dataclasses.replace(base.bert, **bert)
    return base.replace(dtype=dtype, **changes)


def build_step(cfg, mesh, *, fused: bool, seed: int = 0, tx=None):
    """(model, TrainStep) as training/train.py builds them: AdamW + LAVIS schedule by default."""
    from flax import nnx

    from molbind_jax.models.molbind import MolBind
    from molbind_jax.training.train_step import (StepOptions, TrainStep, init_trainable, lr_schedule,
                                                 make_optimizer, param_labels)

    model = MolBind(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    opts = StepOptions(pairs=PAIRS, weights={p: 0.25 for p in PAIRS}, seed=seed, fused=fused)
    if tx is None:
        schedule = lr_schedule(peak_lr=1e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=1000, total_steps=100_000)
        tx = make_optimizer(schedule, weight_decay=0.05, labels=param_labels(init_trainable(model, opts), ()))
    return model, TrainStep(model, tx, mesh, opts)


# ------------------------------------------------------------------------------ batches
def _atoms(vocab: int, batch: int, length: int, rng, scale: float):
    from molbind_jax.modalities.atoms import AtomsBatch

    tokens = np.zeros((batch, length), np.int32)
    coords = np.zeros((batch, length, 3), np.float32)
    for i in range(batch):
        n = max(3, length - (i * length) // (2 * batch))  # later rows shorter, down to half
        tokens[i, :n] = [1] + list(rng.integers(4, vocab - 1, n - 2)) + [2]
        coords[i, 1:n - 1] = rng.normal(scale=scale, size=(n - 2, 3))
    return AtomsBatch(tokens, coords)


def _text(vocab: int, batch: int, length: int, rng):
    from molbind_jax.modalities.text import TextBatch

    lens = np.linspace(length, max(4, length // 4), batch).astype(int)
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)
    ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
    ids[:, 0] = 1
    return TextBatch(ids * mask, mask)


def _graphs(batch: int, atoms: int, shards: int, rng):
    from molbind_jax.modalities.graph import pack_graphs

    graphs = []
    for _ in range(batch):
        n = int(rng.integers(max(3, atoms // 2), atoms + 1))
        bonds = [(i, i + 1) for i in range(n - 1)] + [(0, n - 1)]
        src = [a for a, b in bonds] + [b for a, b in bonds]
        dst = [b for a, b in bonds] + [a for a, b in bonds]
        graphs.append(dict(graph_node_feat=np.stack([rng.integers(0, 118, n), rng.integers(0, 3, n)], 1),
                           graph_edge_index=np.array([src, dst]),
                           graph_edge_feat=np.stack([rng.integers(0, 4, len(src)), rng.integers(0, 3, len(src))], 1)))
    per = batch // shards
    # Budgets: every shard's graphs at their largest, plus the padding graph, rounded up to 8.
    nodes = -(-(per * atoms + 1) // 8) * 8
    edges = -(-(per * 2 * atoms) // 8) * 8
    return pack_graphs(graphs, shards, nodes, edges)


def make_batches(cfg, mesh, s: dict, seed: int = 0) -> dict:
    """{pair: global PairBatch} of synthetic rows at the shapes of `s` (see `settings`)."""
    from molbind_data import schema
    from molbind_jax.modalities import PairBatch
    from molbind_jax.training import train_inputs

    rng = np.random.default_rng(seed)
    shards = mesh.devices.size
    out = {}
    for pair in PAIRS:
        b = s["batch"][pair]
        if b % shards:
            raise ValueError(f"batch of {pair} ({b}) is not divisible by the {shards} devices")
        sides = []
        for m in (schema.pair_type(pair).x, schema.pair_type(pair).y):
            if m == "text":
                sides.append(_text(cfg.bert.vocab_size, b, s["text_len"], rng))
            elif m == "graph":
                sides.append(_graphs(b, s["graph_atoms"], shards, rng))
            elif m == "conformer":
                sides.append(_atoms(cfg.conformer.vocab_size, b, s["conformer_len"], rng, 1.5))
            else:
                sides.append(_atoms(cfg.pocket.vocab_size, b, s["pocket_len"], rng, 4.0))
        keys = np.arange(b, dtype=np.int32)
        out[pair] = train_inputs.to_global(PairBatch(sides[0], sides[1], np.ones(b, bool), keys, keys), mesh)
    return out


# ------------------------------------------------------------------------------ measurements
def _lowered_pieces(ts, state, micro: dict, fused: bool):
    """The step's programs lowered at the shapes of `micro` (tracing only; training.step_programs)."""
    from molbind_jax.training import step_programs

    return step_programs.lower_step(ts, state, [micro], fused)


def _flops(lowered) -> float:
    from molbind_jax.training import step_programs

    return step_programs.flops(lowered)


def _peak_memory(ts, state, micro, fused: bool):
    """(bytes, source): the device's peak where it reports one, else the largest compiled program."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return max(int((d.memory_stats() or {}).get("peak_bytes_in_use", 0)) for d in jax.devices()), "memory_stats"
    best = 0
    for low in _lowered_pieces(ts, state, micro, fused):
        m = low.compile().memory_analysis()  # the compile cache makes this a lookup after the step ran
        if m is not None:
            best = max(best, m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                       - m.alias_size_in_bytes)
    return best, "compiled memory_analysis"


def run_variant(variant: str) -> dict:
    import jax

    from molbind_jax.training import sharding

    dtype = "bfloat16" if variant.startswith("bf16") else "float32"
    fused = variant.endswith("fused")
    s = flag_settings()
    mesh = sharding.make_mesh(FLAGS.num_devices or None)
    cfg = model_config(FLAGS.size, dtype, remat=FLAGS.remat, attention_impl=FLAGS.bert_attention_impl,
                       attention_dropout=FLAGS.bert_attention_dropout)
    log(f"{variant}: building the {FLAGS.size} model ({dtype}, remat={FLAGS.remat}, text attention "
        f"{cfg.bert.attention_impl} with dropout {cfg.bert.attention_dropout}) on {mesh.devices.size} device(s)")
    model, ts = build_step(cfg, mesh, fused=fused)
    state = ts.init_state(model)
    del model
    micro = make_batches(cfg, mesh, s)
    shapes = {p: {k: list(v.shape) for k, v in zip(("x", "y"), (b.x[0], b.y[0]))} for p, b in micro.items()}
    log(f"{variant}: compiling the {'fused' if fused else 'split'} step (first call), batches "
        + ", ".join(f"{p} x{s['batch'][p]} {shapes[p]['x']}/{shapes[p]['y']}" for p in PAIRS))
    t = time.perf_counter()
    state, metrics = ts(state, [micro])
    jax.block_until_ready((state, metrics))
    first = time.perf_counter() - t
    log(f"{variant}: first call {first:.1f} s, loss {float(metrics['loss']):.4f}")
    for _ in range(FLAGS.warmup):
        state, metrics = ts(state, [micro])
    jax.block_until_ready((state, metrics))
    times = []
    for i in range(FLAGS.steps):
        t = time.perf_counter()
        state, metrics = ts(state, [micro])
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
        log(f"{variant}: step {i + 1}/{FLAGS.steps} {1e3 * times[-1]:.1f} ms")
    step_s = float(np.median(times))
    # Memory and FLOPs lower TrainStep's jitted pieces by their (private) names: should those
    # change, the timing above still stands and the row says what could not be counted.
    notes = []
    try:
        mem, mem_source = _peak_memory(ts, state, micro, fused)
    except (AttributeError, TypeError, ValueError) as e:
        mem, mem_source = None, None
        notes.append(f"peak memory not measured: {type(e).__name__}: {e}")
    flops = None
    if FLAGS.flops:
        log(f"{variant}: counting FLOPs on the unrolled twin (lowering only)")
        twin_cfg = model_config(FLAGS.size, dtype, remat=FLAGS.remat, attention_impl=FLAGS.bert_attention_impl,
                                attention_dropout=FLAGS.bert_attention_dropout, unroll=True)
        twin_model, twin = build_step(twin_cfg, mesh, fused=fused)
        del twin_model
        try:
            flops = _flops(_lowered_pieces(twin, state, micro, fused))
        except (AttributeError, TypeError, ValueError) as e:
            notes.append(f"FLOPs not counted: {type(e).__name__}: {e}")
    for line in notes:
        log(f"{variant}: {line}")
    dev = jax.devices()[0]
    peak, note = peak_tflops(dev.device_kind, dev.platform, dtype)
    tflops = None if flops is None else flops / step_s / 1e12
    examples = sum(s["batch"].values())
    return dict(variant=variant, dtype=dtype, fused=fused, remat=FLAGS.remat, first_call_s=first,
                compile_s=max(first - step_s, 0.0), step_ms=1e3 * step_s, step_ms_all=[1e3 * x for x in times],
                examples_per_step=examples, examples_per_s=examples / step_s,
                tflop_per_step=None if flops is None else flops / 1e12, tflops=tflops,
                peak_tflops_per_chip=peak, num_devices=mesh.devices.size,
                mfu=None if (tflops is None or peak is None) else tflops / (peak * mesh.devices.size),
                mfu_note=note, peak_memory_gib=None if mem is None else mem / 2 ** 30, memory_source=mem_source,
                loss=float(metrics["loss"]), finite=bool(metrics["finite"]), shapes=shapes, batch=s["batch"],
                notes=notes)


# ------------------------------------------------------------------------------ main
def _child_argv(variant: str, path: str) -> list[str]:
    keep, args = [], iter(sys.argv[1:])
    for a in args:
        if a in ("--variants", "--output"):
            next(args, None)  # "--flag value": drop the value too
        elif not re.match(r"--(no)?(variants|output|isolate)\b", a):
            keep.append(a)
    return [sys.executable, os.path.abspath(__file__), *keep, f"--variants={variant}", f"--output={path}",
            "--noisolate"]


def _run_isolated(variant: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "row.json")
        log(f"{variant}: starting its own process")
        res = subprocess.run(_child_argv(variant, path))
        if res.returncode or not os.path.exists(path):
            return dict(variant=variant, error=f"exit status {res.returncode}")
        with open(path) as f:
            return json.load(f)["rows"][0]


def meta() -> dict:
    import jax

    dev = jax.devices()[0]
    return dict(size=FLAGS.size, backend=jax.default_backend(), device_kind=dev.device_kind,
                devices=[str(d) for d in jax.devices()], num_devices=FLAGS.num_devices or jax.device_count(),
                jax=jax.__version__, matmul_precision=str(jax.config.jax_default_matmul_precision),
                remat=FLAGS.remat, steps=FLAGS.steps, warmup=FLAGS.warmup, settings=flag_settings(),
                load=os.getloadavg(), cpus=os.cpu_count(), machine=platform.machine())


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(rows) -> str:
    lines = ["| variant | step ms | examples/s | first call s | compile s | GFLOP/step | TFLOP/s | MFU "
             "| peak GiB | loss |", "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} |" + " |" * 8)
            continue
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        lines.append(f"| {r['variant']} | {r['step_ms']:.1f} | {r['examples_per_s']:.1f} | {r['first_call_s']:.1f} | "
                     f"{r['compile_s']:.1f} | {_fmt(None if r['tflop_per_step'] is None else 1e3 * r['tflop_per_step'], '.4g')} | {_fmt(r['tflops'], '.3f')} | "
                     f"{_fmt(mfu, '.1f')}{'' if mfu is None else ' %'} | {_fmt(r['peak_memory_gib'], '.2f')} | {r['loss']:.4f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
    if unknown or not FLAGS.variants:
        raise app.UsageError(f"unknown variants {unknown}; expected some of {VARIANTS}")
    import jax  # noqa: F401 - the backend starts here

    info = meta()
    log(f"{info['backend']} {info['device_kind']} x{info['num_devices']}, size {FLAGS.size}, "
        f"variants {','.join(FLAGS.variants)}")
    if FLAGS.isolate and len(FLAGS.variants) > 1:
        rows = [_run_isolated(v) for v in FLAGS.variants]
    else:
        rows = [run_variant(v) for v in FLAGS.variants]
    info["load_end"] = os.getloadavg()
    mfu_notes = sorted({r["mfu_note"] for r in rows if "mfu_note" in r})
    print("\n" + table(rows))
    print(f"\n{info['backend']} {info['device_kind']} x{info['num_devices']}, jax {info['jax']}, size {FLAGS.size}, "
          f"batches {info['settings']['batch']}, remat={FLAGS.remat}; MFU: {'; '.join(mfu_notes)}; "
          f"load average {info['load'][0]:.2f} -> {info['load_end'][0]:.2f} on {info['cpus']} CPUs")
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w") as f:
            json.dump(dict(meta=info, rows=rows), f, indent=1)
        log(f"wrote {FLAGS.output}")
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
