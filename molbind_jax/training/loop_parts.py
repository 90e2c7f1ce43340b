"""Pieces of the training loop built from the config, and what the loop reports about them.

`train.py` runs the loop; this module holds what it calls: the step options and the
validation R@1 from the config, the batch checks against the towers, the per-pair
temperatures, and the one-line descriptions of the shapes a step compiles for.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ml_collections import ConfigDict


def step_options(config: ConfigDict):
    from molbind_jax.training.train_step import StepOptions

    return StepOptions(
        pairs=tuple(config.pairs),
        weights={p: float(config.loss_weights[p]) for p in config.pairs},
        temperature=float(config.temperature),
        learn_temperature=bool(config.learn_temperature),
        gather_gradient=bool(config.gather_gradient),
        loss_chunk_size=int(config.loss_chunk_size) or None,
        duplicate_aware=bool(config.get("duplicate_aware", True)),
        seed=int(config.seed),
        fused=bool(config.fused_step),
        frozen=tuple(config.frozen),
    )


def evaluate(train_step, state, eval_sets: Mapping[str, list], mesh) -> dict[str, float]:
    """Validation in-batch R@1 (x->y and y->x averaged) per pair type, eval-mode model."""
    import numpy as np

    from molbind_jax.evaluation import metrics
    from molbind_jax.training.train_inputs import to_global

    out = {}
    for pair, batches in eval_sets.items():
        r_xy, r_yx = [], []
        for b in batches:
            x, y, mask = train_step.eval_embeddings(state, pair, to_global(b, mesh))
            x, y, mask = np.asarray(x), np.asarray(y), np.asarray(mask).astype(bool)
            x, y = x[mask], y[mask]
            if len(x) < 2:
                continue
            sim = x @ y.T
            targets = np.arange(len(x))
            r_xy.append(metrics.retrieval_ranks(sim, targets))
            r_yx.append(metrics.retrieval_ranks(sim.T, targets))
        if r_xy:
            a = metrics.recall_at_k(np.concatenate(r_xy), (1,))[1]
            b = metrics.recall_at_k(np.concatenate(r_yx), (1,))[1]
            out[f"r1/{pair}"] = 0.5 * (a + b)
            out[f"n/{pair}"] = int(sum(len(r) for r in r_xy))
    return out


def check_batches(batches: Mapping, model_config) -> None:
    """Each side of each host batch against its tower (`ModalitySpec.check_batch`): e.g. token
    ids beyond the text tower's table would be clamped silently by the gather on device; a
    tokenizer/model mismatch must fail loudly instead."""
    from molbind_data import schema
    from molbind_jax.modalities import spec

    for pair, b in batches.items():
        for side, m in zip((b.x, b.y), schema.pair_type(pair).modalities):
            try:
                spec(m).check_batch(side, model_config.tower(m))
            except ValueError as e:
                raise ValueError(f"{pair}: {e} (set config.init.{m} or the tower's size overrides)") from e


def pair_every_log_warning(config: ConfigDict) -> str | None:
    """A message when some logged steps will lack a pair trained on every k-th step only."""
    from molbind_jax.training import train_inputs

    sparse = {p: k for p, k in train_inputs.pair_every(config).items() if k > 1}
    if not sparse or (int(config.log_every) * int(config.accumulate_steps)) % math.lcm(*sparse.values()) == 0:
        return None
    return (f"pair_every {sparse} with log_every x accumulate_steps = {config.log_every} x "
            f"{config.accumulate_steps}: some logged steps hold no batch of those pairs, so their "
            "loss/<pair> is missing there and the logged total `loss` covers the other pairs only. "
            "Make log_every x accumulate_steps a multiple of every k for comparable totals.")


def train_step_temperatures(train_step, state) -> dict[str, float]:
    from molbind_jax.training.train_step import temperatures

    return {p: float(t) for p, t in temperatures(state["trainable"], train_step.opts).items()}


def shapes_signature(micro: Sequence[Mapping[str, Any]]) -> tuple:
    """The array shapes of one optimizer step's host batches (a list of {pair: PairBatch}):
    a step whose signature was not seen before compiles a new program."""
    return tuple(tuple((pair, tuple((f, tuple(a.shape)) for side in (b.x, b.y) for f, a in side._asdict().items()))
                       for pair, b in sorted(m.items())) for m in micro)


def describe_shapes(micro: Sequence[Mapping[str, Any]]) -> str:
    """`pair: Batch field AxB, ... | Batch field AxB` per pair of the first micro-batch (the
    fields that add a new leading shape; the others repeat it), e.g. `graph_text: GraphBatch
    nodes 2x49x2, edges 2x97x2, n_node 2x5 | TextBatch ids 8x32`; accumulated micro-batches of
    other shapes are counted."""
    def side(batch) -> str:
        seen, parts = set(), []
        for f, a in batch._asdict().items():
            if tuple(a.shape[:2]) not in seen:
                seen.add(tuple(a.shape[:2]))
                parts.append(f"{f} {'x'.join(str(d) for d in a.shape)}")
        return f"{type(batch).__name__} {', '.join(parts)}"

    text = "; ".join(f"{pair}: {side(b.x)} | {side(b.y)}" for pair, b in sorted(micro[0].items()))
    others = len({shapes_signature([m]) for m in micro}) - 1
    return text + (f" (+{others} other micro-batch shapes)" if others > 0 else "")
