"""The train step's programs lowered (traced, not compiled) at a batch's shapes, for XLA's cost
and memory analysis: what the benchmarks (experiments/benchmarks/step.py, accelerator.py) and
anyone profiling a step count FLOPs and scratch memory on.

`lower_step(ts, state, micro_batches, fused)` gives the list of `jax.stages.Lowered` programs
one optimizer update runs: fused, the one program of all pairs and the update; split, one
gradient program per (micro-batch, pair), the gradient adds between them and the update.
`.cost_analysis()` of each gives its FLOPs (a `scan` body counted once: lower a twin whose
Uni-Mol stacks are unrolled, `UniMolConfig.scan_unroll = num_layers`, for the full count) and
`.compile().memory_analysis()` its memory.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp


def lower_step(ts, state: Mapping, micro_batches: Sequence[Mapping], fused: bool) -> list:
    """The programs of one update of `ts` (a `TrainStep`) on `micro_batches`, lowered."""
    frozen = state.get("frozen")
    part = {k: v for k, v in state.items() if k != "frozen"}  # the fused program and the update take no frozen part
    if fused:
        fn = ts._fused or jax.jit(ts._fused_impl, donate_argnums=(0,), out_shardings=ts.replicated)
        return [fn.lower(part, frozen, list(micro_batches))]
    out = []
    for micro, batches in enumerate(micro_batches):
        for pair, batch in batches.items():
            out.append(ts.grad_fn(pair).lower(state["trainable"], state["batch_stats"], batch, state["step"], micro,
                                              frozen))
    out += [ts._add.lower(state["trainable"], state["trainable"])] * (len(out) - 1)
    out.append(ts._update.lower(part, state["trainable"], state["batch_stats"], jnp.float32(len(micro_batches)),
                                jnp.float32(0)))
    return out


def flops(lowered: Sequence) -> float:
    """XLA's FLOP count summed over lowered programs."""
    total = 0.0
    for low in lowered:
        cost = low.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        total += float((cost or {}).get("flops", 0.0))
    return total
