"""Stored records -> typed, padded numpy batches (layer 1 of the input pipeline; numpy only).

The layouts are the contract of docs/DESIGN.md: section 1 (stored records, unpadded) in,
section 2 (static-shape batches) out. A pair type's batch is `PairBatch(x, y, mask)`, whose
`x` and `y` are produced by the two modalities' specs (`molbind_jax.modalities`): this module
only asks the table which modalities a pair has and which size keys they pad. Bucket sizes
(`suggest_buckets`) are chosen here from size distributions; no TF, no JAX, so evaluation and
the API call the same functions on users' own featurized records.

Non-finite input never reaches a model: a record whose float fields (conformer or pocket
coordinates) hold NaN or inf is taken out of the training batch it arrives in by
`collate_pair` (its row becomes a masked copy of a good row, as the padding rows are) and
counted per (pair, field) in `skipped_records()`, which the launcher logs and writes into its
metrics and summary; a batch with no finite record left is an error naming the field.
`collate_modality` (embedding users' records, where rows must stay aligned) raises instead.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from molbind_data import schema
from molbind_jax.modalities import PairBatch, pair_specs, spec
from molbind_jax.modalities.base import NO_KEY, choose_bucket, round_up

ATOM_MULTIPLE = 8  # the original collater pads atoms to a multiple of 8

Record = Mapping[str, Any]

__all__ = ["PairBatch", "collate_pair", "row_keys", "nonfinite_fields", "skipped_records", "NonFiniteInputError", "record_sizes", "num_choices", "packed_keys", "choose_bucket",
           "suggest_buckets", "optimal_bucket_sets", "buckets_for", "ATOM_MULTIPLE"]


# ----------------------------------------------------------------------------- buckets

def suggest_buckets(sizes: Sequence[int], max_shapes: int = 8, multiple: int = ATOM_MULTIPLE,
                    ) -> tuple[int, ...]:
    """At most `max_shapes` bucket sizes (multiples of `multiple`) covering every size.

    Exact dynamic programme: among the candidate boundaries (each size rounded up to the
    multiple) choose the set that minimises the total padded length sum_i bucket(size_i), i.e.
    maximises the per-item padding efficiency. The largest size is always covered.
    """
    if max_shapes < 1:
        raise ValueError("max_shapes must be >= 1")
    return optimal_bucket_sets(sizes, max_shapes, multiple)[-1]


def optimal_bucket_sets(sizes: Sequence[int], max_shapes: int, multiple: int = ATOM_MULTIPLE,
                        ) -> list[tuple[int, ...]]:
    """`suggest_buckets` for every shape budget 1..max_shapes from one dynamic programme."""
    sizes = np.asarray(sizes, dtype=np.int64).ravel()
    if sizes.size == 0:
        raise ValueError("suggest_buckets needs at least one size")
    values, counts = np.unique(np.maximum(round_up(sizes, multiple), multiple), return_counts=True)
    u = len(values)
    k_max = min(max_shapes, u)
    cum = np.concatenate([[0], np.cumsum(counts)])
    inf = np.iinfo(np.int64).max // 4
    # cost[k][j]: best total padded length for candidates 0..j with k+1 buckets, last at j.
    cost = np.full((k_max, u), inf, dtype=np.int64)
    back = np.zeros((k_max, u), dtype=np.int64)
    cost[0] = cum[1:] * values
    for k in range(1, k_max):
        for j in range(k, u):
            # previous bucket at i < j; items i+1..j pad to values[j]
            prev = cost[k - 1, k - 1:j] + (cum[j + 1] - cum[k:j + 1]) * values[j]
            i = int(np.argmin(prev))
            cost[k, j] = prev[i]
            back[k, j] = i + k - 1
    out = []
    for budget in range(1, max_shapes + 1):
        k = int(np.argmin(cost[:min(budget, k_max), u - 1]))
        chosen, j = [], u - 1
        while True:
            chosen.append(int(values[j]))
            if k == 0:
                break
            j, k = int(back[k, j]), k - 1
        out.append(tuple(sorted(chosen)))
    return out


def buckets_for(pair: str, buckets) -> dict[str, tuple[int, ...]] | None:
    """The buckets of one pair from either a flat {size key: sizes} mapping (shared by all
    pairs; keys of other pairs' modalities are ignored) or a {pair: {size key: sizes}} one.
    Accepts any mapping with `.items()` (an ml_collections ConfigDict too)."""
    if not buckets:
        return None
    buckets = dict(buckets.items())
    all_keys = {k for m in schema.MODALITIES.values() for k in m.size_keys}
    if set(buckets) <= set(schema.PAIR_TYPES):
        return buckets_for(pair, buckets.get(pair))
    unknown = set(buckets) - all_keys
    if unknown:
        raise ValueError(f"unknown bucket keys {sorted(unknown)}; expected size keys {sorted(all_keys)} "
                         f"or pair names {sorted(schema.PAIR_TYPES)}")
    mine = set(schema.size_keys(pair))
    return {k: tuple(int(x) for x in v) for k, v in buckets.items() if k in mine} or None


# ----------------------------------------------------------------------------- sizes

def record_sizes(pair: str, record: Record) -> dict[str, int]:
    """Padded-dimension sizes of one record of `pair`; raises ValueError when malformed."""
    out: dict[str, int] = {}
    for s in pair_specs(pair):
        out.update(s.sizes(record))
    return out


def num_choices(pair: str, record: Record) -> dict[str, int]:
    """{modality: stored variants} for the pair's modalities that have several (conformers)."""
    return {s.name: n for s in pair_specs(pair) if (n := s.num_choices(record)) > 1}


def packed_keys(pair: str) -> dict[str, int]:
    """Size keys of `pair` padded per shard (sum over the shard's rows + the extra)."""
    out: dict[str, int] = {}
    for s in pair_specs(pair):
        out.update(s.packed)
    return out


# ----------------------------------------------------------------------------- non-finite input

class NonFiniteInputError(ValueError):
    """A record's float field holds NaN or inf where it cannot be skipped."""


_SKIPPED: collections.Counter = collections.Counter()
_SKIPPED_LOCK = threading.Lock()  # the input pipeline collates on a prefetch thread


def skipped_records() -> dict[str, int]:
    """{"<pair>/<field>": records skipped} by `collate_pair` in this process so far (the
    prefetch thread runs a few batches ahead of the step that is trained)."""
    with _SKIPPED_LOCK:
        return dict(_SKIPPED)


def reset_skipped_records() -> None:
    with _SKIPPED_LOCK:
        _SKIPPED.clear()


def _float_fields(modality: str) -> tuple[str, ...]:
    return tuple(f.name for f in schema.MODALITIES[modality].stored if f.dtype == "float32")


def nonfinite_fields(modality: str, record: Record) -> list[str]:
    """The float fields of `modality` in `record` that hold NaN or inf (every stored variant
    is checked: a conformer list with one bad conformer is a bad record)."""
    bad = []
    for name in _float_fields(modality):
        value = record.get(name)
        if value is not None and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            bad.append(name)
    return bad


def _drop_nonfinite(pair: str, examples: list, mask: np.ndarray, choices: dict) -> None:
    """In place: rows with non-finite float fields become masked copies of the first good row
    (counted in `skipped_records`); no good row at all is an error naming the fields."""
    bad_rows: dict[int, list[str]] = {}
    for i, ex in enumerate(examples):
        fields = [f for m in schema.pair_type(pair).modalities for f in nonfinite_fields(m, ex)]
        if fields:
            bad_rows[i] = fields
    if not bad_rows:
        return
    good = [i for i in range(len(examples)) if i not in bad_rows]
    if not good:
        fields = sorted({f for fs in bad_rows.values() for f in fs})
        raise NonFiniteInputError(f"{pair}: every record of the batch has NaN/inf in {fields} "
                                  f"(ids {[str(ex.get('id', '?')) for ex in examples[:4]]}...)")
    with _SKIPPED_LOCK:
        for i, fields in bad_rows.items():
            for f in fields:
                _SKIPPED[f"{pair}/{f}"] += 1
            examples[i] = examples[good[0]]
            mask[i] = False
            for c in choices.values():
                c[i] = c[good[0]]


# ----------------------------------------------------------------------------- collation

def collate_pair(pair: str, examples: Sequence[Record], *, batch_size: int | None = None,
                 num_shards: int = 1, buckets: Mapping[str, Sequence[int]] | None = None,
                 shapes: Mapping[str, int] | None = None,
                 choices: Mapping[str, Sequence[int]] | None = None,
                 pair_mask: Sequence[bool] | None = None) -> PairBatch:
    """Stored records of one pair type -> its `PairBatch` (DESIGN.md section 2).

    batch_size: rows of the batch; missing rows are copies of examples[0] with mask False.
      A record with NaN/inf in a float field is skipped the same way (masked copy of a good
      row) and counted in `skipped_records()`.
    shapes: padded size per size key (e.g. "text", "graph_nodes"); missing keys come from
      `buckets`, else the need rounded up to the modality's multiple (8 for atoms).
    choices: {modality: which stored variant each example uses} (conformers; default: first).
    The batch's `x_key`/`y_key` are the rows' identity keys (`row_keys`) for the
    duplicate-aware loss.
    """
    x_spec, y_spec = pair_specs(pair)
    if not examples:
        raise ValueError("collate_pair needs at least one example")
    n_real = len(examples)
    batch_size = n_real if batch_size is None else batch_size
    if n_real > batch_size:
        raise ValueError(f"{n_real} examples for a batch of {batch_size}")
    mask = np.ones(n_real, bool) if pair_mask is None else np.asarray(pair_mask, bool).ravel()
    choices = {m: list(c) for m, c in (choices or {}).items() if c is not None}
    for m in choices:  # a misspelt or foreign modality would silently fall back to variant 0
        if m not in (x_spec.name, y_spec.name):
            raise ValueError(f"choices for {m!r}, which {pair} does not have; "
                             f"{pair} has {x_spec.name}, {y_spec.name}")
    if len(mask) != n_real or any(len(c) != n_real for c in choices.values()):
        raise ValueError(f"{n_real} examples but pair_mask / choices of another length")
    examples, mask = list(examples), mask.copy()
    _drop_nonfinite(pair, examples, mask, choices)  # never repaired, never trained on: counted
    fill = batch_size - n_real
    examples = examples + [examples[0]] * fill
    mask = np.concatenate([mask, np.zeros(fill, bool)])
    choices = {m: c + [c[0]] * fill for m, c in choices.items()}
    shapes = dict(shapes or {})
    sides = []
    for s in (x_spec, y_spec):
        missing = [k for k in s.size_keys if not shapes.get(k)]
        if missing:
            need = s.needed(examples, num_shards)
            for k in missing:
                shapes[k] = s.default_shape(k, need[k], buckets)
        sides.append(s.collate(examples, shapes, num_shards=num_shards, choices=choices.get(s.name)))
    keys = [row_keys(s, examples, mask) for s in (x_spec, y_spec)]
    return PairBatch(sides[0], sides[1], mask, keys[0], keys[1])


def row_keys(modality_spec, examples: Sequence[Record], mask) -> np.ndarray:
    """[B] int32 identity keys of one side (`ModalitySpec.identity_key`); masked rows (padding,
    skipped records) get NO_KEY, which matches nothing."""
    keys = np.full(len(examples), NO_KEY, np.int32)
    for i, (ex, m) in enumerate(zip(examples, mask)):
        if m:
            keys[i] = modality_spec.identity_key(ex)
    return keys


def collate_modality(modality: str, records: Sequence[Record], *, shapes: Mapping[str, int] | None = None,
                     num_shards: int = 1, buckets: Mapping[str, Sequence[int]] | None = None,
                     choices: Sequence[int] | None = None):
    """One modality's typed batch of `records` (the API and evaluation embed one side)."""
    s = spec(modality)
    for i, r in enumerate(records):
        bad = nonfinite_fields(modality, r)
        if bad:
            raise NonFiniteInputError(f"{modality} record {i} (id {r.get('id', '?')!r}) has NaN/inf in {bad}")
    shapes = dict(shapes or {})
    need = None
    for k in s.size_keys:
        if not shapes.get(k):
            need = need or s.needed(records, num_shards)
            shapes[k] = s.default_shape(k, need[k], buckets)
    return s.collate(records, shapes, num_shards=num_shards, choices=choices)
