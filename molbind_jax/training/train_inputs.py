"""Where the launcher gets its batches: the TFDS input pipeline, or tiny synthetic pairs.

`config.data.source == "tfds"` reads the built `molbind_pairs` dataset through
`data.pipeline.mixed_pair_batches` (one {pair: PairBatch} dict per micro-step, deterministic
and resumable from a micro-step index). `"synthetic"` collates records of a fixed pool of
pseudo-molecules (data/synthetic.py) through the same collation, in-process and in
milliseconds; both sides of a synthetic pair come from the same molecule, so the pairs are
learnable (loss falls, R@1 rises) and smoke runs and tests need no built data.

Either way the host-local numpy batch becomes a global array sharded on the mesh axis
"data" (`to_global`).
"""
from __future__ import annotations

import itertools
from typing import Iterator

import jax
import numpy as np

from molbind_jax.data import synthetic
from molbind_jax.training import sharding


def to_global(tree, mesh):
    """Host-local numpy batch (a PairBatch, or a dict of them) -> global arrays sharded on
    "data" along the leading axis."""
    return sharding.global_batch(tree, mesh)


def _synthetic_stream(pairs, split, *, local_batch, num_local_shards, process_index, seed, start,
                      train, text_vocab, pool_size, every=None):
    # local_batch: {pair: host batch}. every: {pair: k} (the pair only on every k-th micro-step).
    # Disjoint pools per split: train draws from [0, pool), validation from [pool, pool + pool/4).
    every = every or {}
    for micro in itertools.count(start):
        out = {}
        for k, pair in enumerate(pairs):
            if (micro + 1) % every.get(pair, 1):
                continue
            n = local_batch[pair]
            base, size = (0, pool_size) if split == "train" else (pool_size, max(pool_size // 4, n))
            r = np.random.default_rng([seed, micro, k, process_index])
            if train:
                idx = base + r.choice(size, size=n, replace=False)
            else:
                idx = base + (np.arange(n) + micro * n) % size
            out[pair] = synthetic.pair_batch(pair, idx, num_local_shards=num_local_shards, text_vocab=text_vocab)
        yield out


# ----------------------------------------------------------------------------------------------
# Entry points used by train.py.


def local_shards(mesh) -> int:
    """Devices of `mesh` on this process = graph shards per host-local batch."""
    return sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())


def pair_batch_sizes(config, pairs=None) -> dict[str, int]:
    """Global batch of each trained pair: `config.pair_batch_size[pair]`, or `config.batch_size`
    where that is 0 or absent."""
    table = dict(config.get("pair_batch_size") or {})
    return {p: int(table.get(p) or config.batch_size) for p in (pairs or config.pairs)}


def pair_every(config, pairs=None) -> dict[str, int]:
    """{pair: k}: the pair is in every k-th micro-step only, 0-based k-1, 2k-1, ...
    (`config.pair_every`; 0 or absent = 1, every micro-step)."""
    table = dict(config.get("pair_every") or {})
    out = {p: int(table.get(p) or 1) for p in (pairs or config.pairs)}
    bad = {p: k for p, k in out.items() if k < 1}
    if bad:
        raise ValueError(f"pair_every values must be >= 1, got {bad}")
    return out


def micro_batches(config, *, split: str, start: int, train: bool, text_vocab: int, mesh,
                  pairs=None, records=None) -> Iterator[dict]:
    """Host-local {pair: numpy batch} dicts, one per micro-step, from micro-step `start` on.

    The micro-step index is `optimizer_step * accumulate_steps + micro`, so a run resumed at
    optimizer step s continues with exactly the batches the uninterrupted run would have seen.
    `records`: {pair: record sequence} replacing the built dataset's (the text cache's
    records, text_cache.records_for); tfds only.
    """
    pairs = tuple(pairs or config.pairs)
    process_count, process_index = jax.process_count(), jax.process_index()
    pair_batch_size = pair_batch_sizes(config, pairs)
    for pair, size in pair_batch_size.items():
        name = "batch_size" if size == config.batch_size else f"pair_batch_size[{pair}]"
        if size % (8 if config.data.get("require_multiple_of_8", True) else 1):
            raise ValueError(f"{name} {size} must be divisible by 8 (fixed for any device count)")
        if size % mesh.devices.size:
            raise ValueError(f"{name} {size} is not divisible by the {mesh.devices.size} devices")
    num_local_shards = local_shards(mesh)
    source = config.data.source
    if source == "synthetic":
        return _synthetic_stream(pairs, split, local_batch={p: n // process_count for p, n in pair_batch_size.items()},
                                 num_local_shards=num_local_shards, process_index=process_index,
                                 seed=config.seed, start=start, train=train, text_vocab=text_vocab,
                                 pool_size=config.data.get("synthetic_pool", 256),
                                 every=pair_every(config, pairs) if train else None)
    if source == "tfds":
        from molbind_jax.data import pipeline

        return pipeline.mixed_pair_batches(
            pairs, split, dataset=config.data.dataset, data_dir=config.data.data_dir or None,
            global_batch_size=config.batch_size, num_local_shards=num_local_shards,
            process_index=process_index, process_count=process_count, seed=config.seed,
            start_step=start, train=train, buckets=config.data.get("buckets") or None,
            max_shapes=int(config.data.get("max_shapes", 8)),
            pair_batch_size=pair_batch_size, records=records,
            pair_every=pair_every(config, pairs))
    raise ValueError(f"unknown data.source {source!r} (expected 'tfds' or 'synthetic')")


def eval_batches(config, pair: str, *, text_vocab: int, num_batches: int, mesh, records=None) -> list[dict]:
    """The first `num_batches` validation batches of `pair` (host-local numpy), fixed order;
    `records`: the pair's validation records in place of the built dataset's (text cache)."""
    if config.data.source == "tfds":
        from molbind_jax.data import pipeline

        it = pipeline.pair_batches(
            pair, "validation", dataset=config.data.dataset, data_dir=config.data.data_dir or None, records=records,
            global_batch_size=int(config.get("eval_batch_size") or config.batch_size),
            num_local_shards=local_shards(mesh), process_index=jax.process_index(),
            process_count=jax.process_count(), seed=config.seed, start_step=0, train=False,
            buckets=config.data.get("buckets") or None, max_shapes=int(config.data.get("max_shapes", 8)))
        return list(itertools.islice(it, num_batches))
    it = micro_batches(config, split="validation", start=0, train=False, text_vocab=text_vocab, mesh=mesh,
                       pairs=(pair,))
    return [batches[pair] for batches in itertools.islice(it, num_batches)]
