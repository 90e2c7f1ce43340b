"""Dry run of a training config on simulated CPU devices: memory and FLOPs of one train step.

  .venv/bin/python -m molbind_jax.training.dryrun --config=experiments/configs/m4.py [--devices=8] \
      [--config.batch_size=... any override] [--json=OUT.json]

Checks a pod recipe on a laptop before paying for the pod: builds the model the config
describes at its full size (abstractly: `nnx.eval_shape`, no weights are allocated, no backbone
is read), then lowers and compiles the real train step of `train_step.TrainStep` for
`--devices` simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count`), on
abstract batches of the shapes the config implies. No data is read.

Which programs: exactly those the run compiles. The split step (`fused_step=False`, the
default) is one program per pair type (`TrainStep.grad_fn`, reused by every micro-batch of the
accumulation), the donated gradient add and the donated AdamW update; the fused step is one
program for everything (`TrainStep.__call__`). Tracing the split pieces into one program instead
would let XLA's scheduler overlap every micro-batch's forward pass and report the sum of their
activations, which the run never holds.

Batch shapes: each pair type's global batch (`batch_size` / `pair_batch_size`) split over the
devices; text padded to `dryrun.text_len` tokens; conformers and pockets of `dryrun.mol_atoms` /
`dryrun.pocket_atoms` tokens ([CLS]/[SEP] included); each device's packed graphs hold
`dryrun.graph_nodes` nodes and `dryrun.graph_edges` directed edges per molecule (plus the
padding graph), budgets rounded up to multiples of 8.

Printed (and returned by `dry_run`): parameter counts per tower; per program, per-device memory
from XLA's `memory_analysis()` (arguments, outputs, temporaries, aliased = donated inputs reused
for outputs) and what is live while it runs; the step's per-device total (split: the state and
the gradient sum stay resident, plus the largest program's batch, outputs and temporaries;
fused: arguments + outputs - aliased + temporaries); FLOPs per step from `cost_analysis()`
(each program times its calls, per device and times the device count); the build and compile
time. The numbers are XLA's CPU compilation of the SPMD programs: GPU and TPU compilers fuse
and schedule differently, so the state and batch are exact and the temporaries an estimate.
"""
from __future__ import annotations

import functools
import json
import os
import re
import time
from typing import Any, Mapping

from absl import app, flags
from ml_collections import ConfigDict, config_flags

GiB = 1024 ** 3
# Placeholders for numbers a run derives from the data (steps_per_epoch / total_steps = -1):
# the schedule is traced with them; neither changes the program's memory or FLOPs.
_PLACEHOLDER_STEPS_PER_EPOCH = 1000


# LLVM's optimisation of the CPU code is most of the compile time; buffer assignment (memory)
# and the HLO cost analysis (FLOPs) are made before it and do not depend on it.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def simulate_devices(n: int) -> None:
    """Asks XLA for `n` host devices; effective only before JAX initialises its backends."""
    current = os.environ.get("XLA_FLAGS", "")
    flag = f"--xla_force_host_platform_device_count={int(n)}"
    if "xla_force_host_platform_device_count" in current:
        current = re.sub(r"--xla_force_host_platform_device_count=\d+", flag, current)
    else:
        current = f"{current} {flag}".strip()
    os.environ["XLA_FLAGS"] = current
    os.environ["JAX_PLATFORMS"] = "cpu"


def _round8(n: int) -> int:
    return -(-int(n) // 8) * 8


# config.dryrun names of the size keys of the table (data_pipeline/schema.py); a size key not
# listed here is read from config.dryrun under its own name.
DIM_NAMES = {"text": "text_len", "conformer": "mol_atoms", "pocket": "pocket_atoms",
             "graph_nodes": "graph_nodes", "graph_edges": "graph_edges"}


def _placeholder_record(modality: str) -> dict:
    """The smallest valid stored record of `modality` (every variable dimension 1, zeros): the
    spec's `collate` turns copies of it into a batch of the padded shapes asked for."""
    import numpy as np

    from molbind_data import schema

    out = {"id": "dryrun", "smiles": ""}
    for f in schema.modality(modality).stored:
        out[f.name] = "" if f.dtype == "text" else np.zeros(tuple(1 if d is None else d for d in f.shape), f.dtype)
    return out


def size_shapes(pair: str, global_batch: int, num_devices: int, dims: Mapping[str, int]) -> dict[str, int]:
    """{size key: padded size} of one pair batch: a row dimension as `dims` gives it, a packed
    one (graph nodes and edges, summed per device) as rows per device x `dims` per molecule +
    the spec's extra (the padding graph's node), rounded up to a multiple of 8."""
    from molbind_jax.modalities import pair_specs

    rows = global_batch // num_devices
    out = {}
    for s in pair_specs(pair):
        for key in s.size_keys:
            name = DIM_NAMES.get(key, key)
            if name not in dims:
                raise ValueError(f"{pair}: config.dryrun has no {name!r} (the padded size of {key!r})")
            out[key] = _round8(rows * int(dims[name]) + s.packed[key]) if key in s.packed else int(dims[name])
    return out


def batch_shapes(pair: str, global_batch: int, num_devices: int, dims: Mapping[str, int]):
    """The `PairBatch` of one global pair batch (DESIGN.md section 2 layout) with
    `jax.ShapeDtypeStruct` leaves: each side is the typed batch its modality's `collate` makes
    (graph shards: one per device), padded as `size_shapes` says."""
    import jax
    import numpy as np

    from molbind_jax.modalities import PairBatch, pair_specs

    if global_batch % num_devices:
        raise ValueError(f"{pair}: global batch {global_batch} is not divisible by {num_devices} devices")
    shapes = size_shapes(pair, global_batch, num_devices, dims)
    sides = [s.collate([_placeholder_record(s.name)] * global_batch, shapes, num_shards=num_devices)
             for s in pair_specs(pair)]
    keys = np.arange(global_batch, dtype=np.int32)  # identity keys, as collate_pair fills them
    batch = PairBatch(sides[0], sides[1], np.ones(global_batch, bool), keys, keys)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), batch)


def flat_shapes(pair: str, batch) -> dict[str, list[int]]:
    """{"<modality>.<field>": shape, "mask": shape} of a `batch_shapes` result (the report's view)."""
    from molbind_data import schema

    out = {}
    for modality, side in zip(schema.pair_type(pair).modalities, (batch.x, batch.y)):
        out.update({f"{modality}.{k}": list(v.shape) for k, v in side._asdict().items()})
    out["mask"] = list(batch.mask.shape)
    if batch.x_key is not None:
        out["x_key"], out["y_key"] = list(batch.x_key.shape), list(batch.y_key.shape)
    return out


def abstract_micro_batches(config: ConfigDict, mesh) -> list[dict]:
    """The step's input: one {pair: PairBatch of ShapeDtypeStructs sharded on "data"} per
    micro-batch, pairs present as `pair_every` has them in the first update."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from molbind_jax.training import train_inputs

    sizes, every = train_inputs.pair_batch_sizes(config), train_inputs.pair_every(config)
    spec = NamedSharding(mesh, P("data"))
    dims = {k: int(v) for k, v in dict(config.dryrun).items()}
    micro = []
    for m in range(int(config.accumulate_steps)):
        batches = {}
        for pair in config.pairs:
            if (m + 1) % every[pair]:
                continue
            batches[pair] = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=spec),
                                         batch_shapes(pair, sizes[pair], mesh.devices.size, dims))
        micro.append(batches)
    return micro


def _abstract_model(mcfg, seed: int):
    """MolBind with abstract parameters (nothing allocated) and concrete RNG streams (the
    step closes over them)."""
    from flax import nnx

    from molbind_jax.inference.export_reader import _concretize_rngs  # the export's fix for eval_shape'd modules
    from molbind_jax.models.molbind import MolBind

    return _concretize_rngs(nnx.eval_shape(lambda: MolBind(mcfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))))


def _model_config(config: ConfigDict):
    """The run's MolBindConfig: the text tower sized from init.text's config.json when that
    directory is on this machine (no weights are read), else the preset's text tower."""
    from molbind_jax.modalities import spec
    from molbind_jax.training import train

    text = str((config.get("init") or {}).get("text", "") or "")
    if not text:
        return train.model_config_from(config), ""
    try:
        return train.model_config_from(config, spec("text").resolve_init(text)), ""
    except (FileNotFoundError, ValueError):
        return train.model_config_from(config), (f"init.text={text!r} is not an HF directory on this "
                                                 "machine: the text tower has the preset's size")


def _schedule_config(config: ConfigDict) -> ConfigDict:
    cfg = ConfigDict(config.to_dict())
    if int(cfg.steps_per_epoch) < 0:
        cfg.steps_per_epoch = _PLACEHOLDER_STEPS_PER_EPOCH
    if int(cfg.total_steps) < 0:
        cfg.total_steps = max(int(cfg.get("num_epochs", 0)), 1) * int(cfg.steps_per_epoch or _PLACEHOLDER_STEPS_PER_EPOCH)
    return cfg


def _compile(lowered):
    """(memory dict, FLOPs) of one lowered program, compiled as the run would (bar LLVM opt)."""
    compiled = lowered.compile(compiler_options=dict(_FAST_COMPILE))
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    memory = {"arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
              "temporaries": int(mem.temp_size_in_bytes), "aliased": int(mem.alias_size_in_bytes)}
    return memory, float((cost or {}).get("flops", float("nan")))


def _nbytes(tree) -> int:
    import jax
    import numpy as np

    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _split_step(ts, state, micro):
    """The split step as the run executes it: one program per pair type (compiled once per
    shape, reused by every micro-batch), the gradient add and the donated update. Returns the
    per-program memory, the step's peak and FLOPs."""
    import jax
    import jax.numpy as jnp

    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=ts.replicated)
    programs, flops, calls = {}, {}, {}
    for m, batches in enumerate(micro):
        for pair, batch in batches.items():
            name = f"grad {pair}"
            calls[name] = calls.get(name, 0) + 1
            if name not in programs:
                programs[name], flops[name] = _compile(
                    ts.grad_fn(pair).lower(state["trainable"], state["batch_stats"], batch, state["step"], m,
                                           state.get("frozen")))
    grads = state["trainable"]  # the gradients have the trainable tree's shapes (no frozen towers)
    n_grads = sum(calls.values())
    if n_grads > 1:  # TrainStep's own pieces: the donated gradient sum and the donated update
        programs["add"], flops["add"] = _compile(ts._add.lower(grads, grads))
        calls["add"] = n_grads - 1
    programs["update"], flops["update"] = _compile(
        ts._update.lower({k: v for k, v in state.items() if k != "frozen"}, grads, state["batch_stats"],
                         scalar, scalar))
    calls["update"] = 1
    # Live at once: the state and the gradient sum stay resident between programs; a pair's
    # program adds the device's share of its batch, its outputs (gradients, statistics) and
    # temporaries (its arguments are the resident parameters, unused ones pruned, and the
    # batch); the update holds its arguments, its outputs not aliased to the donated state,
    # and its temporaries.
    n_dev = ts.mesh.devices.size
    batch_bytes = {f"grad {p}": _nbytes(b) // n_dev for batches in micro for p, b in batches.items()}
    state_bytes, grad_bytes = _nbytes(state), _nbytes(grads)
    live = {}
    for name, m in programs.items():
        if name.startswith("grad "):
            live[name] = state_bytes + grad_bytes + batch_bytes[name] + m["outputs"] + m["temporaries"]
        else:
            live[name] = m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
        m["live"] = live[name]
    peak = max(live, key=live.get)
    memory = {"programs": programs, "state": state_bytes, "gradient_sum": grad_bytes,
              "total": live[peak], "peak_program": peak}
    return memory, sum(flops[k] * calls[k] for k in flops), calls


def dry_run(config: ConfigDict, devices: int | None = None) -> dict[str, Any]:
    """Compiles one train step of `config` on `devices` (default: all) CPU devices without data
    or backbones; returns sizes, memory, FLOPs and times (see the module docstring)."""
    import jax
    import numpy as np
    from flax import nnx

    from molbind_jax.training import sharding, train, train_inputs
    from molbind_jax.training.train_step import TrainStep, make_optimizer, param_labels

    mesh = sharding.make_mesh(devices or int(config.num_devices) or None)
    n_dev = mesh.devices.size
    mcfg, note = _model_config(config)
    t0 = time.time()
    model = _abstract_model(mcfg, int(config.seed))
    opts = train.step_options(config)
    labels = functools.partial(param_labels, frozen=tuple(config.frozen))
    tx = make_optimizer(train.make_schedule(_schedule_config(config)), weight_decay=config.weight_decay,
                        labels=labels, grad_clip_norm=float(config.grad_clip_norm) or None)
    ts = TrainStep(model, tx, mesh, opts)
    state = jax.eval_shape(ts.init_state, model)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=ts.replicated), state)
    micro = abstract_micro_batches(config, mesh)

    if config.fused_step:
        # One program for the whole step (TrainStep.__call__ with fused=True); state donated.
        memory, flops = _compile(jax.jit(lambda s, m: ts(s, m), donate_argnums=(0,)).lower(state, micro))
        memory = {"programs": {"step": memory}, "state": _nbytes(state), "peak_program": "step",
                  "total": memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"]}
        memory["programs"]["step"]["live"] = memory["total"]
        calls = {"step": 1}
    else:
        memory, flops, calls = _split_step(ts, state, micro)
    t1 = time.time()

    per_tower = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
        top = str(getattr(path[0], "key", path[0]))
        per_tower[top] = per_tower.get(top, 0) + int(np.prod(leaf.shape))
    dims = {k: int(v) for k, v in dict(config.dryrun).items()}
    global_batch = train_inputs.pair_batch_sizes(config)
    return {
        "devices": n_dev,
        "platform": jax.devices()[0].platform,
        "fused_step": bool(config.fused_step),
        "accumulate_steps": int(config.accumulate_steps),
        "micro_batches": [sorted(b) for b in micro],
        "program_calls": calls,
        "per_device_batch": {p: s // n_dev for p, s in global_batch.items()},
        "dims": dims,
        "batch_shapes": {p: flat_shapes(p, batch_shapes(p, s, n_dev, dims)) for p, s in global_batch.items()},
        "parameters": sum(per_tower.values()),
        "parameters_per_tower": per_tower,
        # Without the frozen towers (config.frozen): what gradients and optimizer state cover.
        "trainable_parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state["trainable"]["model"]))),
        "model_dtype": mcfg.dtype,
        "memory_bytes_per_device": memory,
        "flops_per_device": flops,
        "flops_all_devices": flops * n_dev,
        "note": note,
        "compile_s": t1 - t0,
    }


def format_report(r: Mapping[str, Any]) -> str:
    """The human-readable lines of a `dry_run` result."""
    def gib(b):
        return f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / 2 ** 20:.1f} MiB"

    m = r["memory_bytes_per_device"]
    towers = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in sorted(r["parameters_per_tower"].items(), key=lambda kv: -kv[1]))
    d = r["dims"]
    batch = ", ".join(f"{p} {b}" for p, b in r["per_device_batch"].items())
    if r["fused_step"]:
        path = "fused step: one program"
        total = f"total {gib(m['total'])} (arguments + outputs - aliased + temporaries of the step)"
    else:
        path = "split step: a program per pair type, the gradient add, the update"
        total = (f"total {gib(m['total'])} (state {gib(m['state'])} + gradient sum {gib(m['gradient_sum'])} "
                 f"resident, plus the largest program, {m['peak_program']})")
    lines = [
        f"dry run: one train step on {r['devices']} simulated {r['platform']} devices, {path}",
        f"model: {r['parameters']:,} parameters ({towers}), {r['trainable_parameters']:,} trainable; "
        f"matmul dtype {r['model_dtype']}",
        f"batch per device and micro-step: {batch}; accumulate_steps {r['accumulate_steps']}",
        f"shapes: text {d['text_len']} tokens, conformer {d['mol_atoms']} and pocket {d['pocket_atoms']} "
        f"tokens, graphs {d['graph_nodes']} nodes / {d['graph_edges']} edges per molecule",
    ]
    for name, p in m["programs"].items():
        lines.append(f"  program {name} (x{r['program_calls'][name]}): arguments {gib(p['arguments'])}, "
                     f"outputs {gib(p['outputs'])}, temporaries {gib(p['temporaries'])}, "
                     f"aliased {gib(p['aliased'])}; live {gib(p['live'])}")
    lines += [
        f"per-device memory: {total}",
        f"FLOPs per step: {r['flops_per_device']:.4g} per device, {r['flops_all_devices']:.4g} "
        f"on {r['devices']} devices",
        f"time: build, trace and compile {r['compile_s']:.1f} s",
    ]
    if r.get("note"):
        lines.insert(2, f"note: {r['note']}")
    return "\n".join(lines)


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Training config file (experiments/configs/*.py).",
                                    lock_config=False)
    flags.DEFINE_integer("devices", 8, "Simulated CPU devices: the device count of the target pod.")
    flags.DEFINE_string("json", None, "Also write the result to this JSON file.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from molbind_jax.training.workdir import config_from_flag

    FLAGS = flags.FLAGS
    config = config_from_flag(FLAGS)  # a missing file: one error line, exit 2
    if config is None:
        raise app.UsageError("--config is required")
    simulate_devices(FLAGS.devices)  # before the first JAX import
    result = dry_run(config, FLAGS.devices)
    print(format_report(result), flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


def cli():
    """The `molbind-dryrun` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_jax.cli import run as cli_run

    _define_flags()
    cli_run(main)


if __name__ == "__main__":
    cli()
