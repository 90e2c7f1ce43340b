"""Records -> host-local batches of one pair type or of all (layer 3 of the input pipeline).

Reads the rows a host needs (random access into a built TFDS dataset, or any sequence of
records), follows the global schedule (schedule.py) so that every host agrees on shapes and
rows, picks one stored variant per example where a modality has several (a conformer), collates
(batching.py) and prefetches on a background thread. `MixedPairBatches` zips the pair types of a
training run into one {pair: PairBatch} dict per step. numpy only; JAX is imported only for
default device counts.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import threading
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from molbind_data import schema
from molbind_jax.data.batching import (ATOM_MULTIPLE, PairBatch, buckets_for, collate_pair, optimal_bucket_sets,
                                       packed_keys, record_sizes, suggest_buckets)
from molbind_jax.data.schedule import Schedule
from molbind_jax.modalities import ModalitySpec, pair_specs
from molbind_jax.modalities.base import round_up

Record = Mapping[str, Any]


# ----------------------------------------------------------------------------- records

def load_records(pair: str, split: str, *, dataset: str = "molbind_mini", data_dir: str | None = None):
    """Random-access records of a built `molbind_pairs` dataset: the config of the pair type
    that stores `pair`'s records (itself, or the pair a view reads, schema.PairType.records_of).

    array_record datasets are read lazily through `tfds.data_source` (a host reads only its
    rows); other formats are read once into memory in file order.
    """
    import tensorflow_datasets as tfds
    try:  # registers the builder class; a built dataset also loads from its files without it
        import molbind_data.molbind_pairs  # noqa: F401
    except ImportError:
        pass
    builder = tfds.builder(f"{dataset}/{schema.pair_type(pair).stored_as}", data_dir=data_dir)
    fmt = getattr(builder.info, "file_format", None)
    if str(getattr(fmt, "value", fmt)) == "array_record":
        return builder.as_data_source(split=split)
    return records_from_tf_dataset(builder.as_dataset(split=split, shuffle_files=False))


def records_from_tf_dataset(ds) -> list[dict[str, Any]]:
    """Materialises a tf.data.Dataset of records (in order) as numpy dicts."""
    from tqdm import tqdm
    return [dict(r) for r in tqdm(ds.as_numpy_iterator(), desc="reading records", leave=False)]


def _fetch(records, idx: np.ndarray) -> list[Record]:
    if hasattr(records, "__getitems__"):
        uniq, inv = np.unique(idx, return_inverse=True)
        got = records.__getitems__([int(i) for i in uniq])
        return [got[j] for j in inv]
    return [records[int(i)] for i in idx]


# ----------------------------------------------------------------------------- iterators

_END = object()


def _prefetch(make_iter, size: int) -> Iterator[Any]:
    """Runs `make_iter()` on a daemon thread, `size` items ahead; re-raises its errors."""
    if size <= 0:
        yield from make_iter()
        return
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def worker():
        try:
            for item in make_iter():
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            q.put((_END, None))
        except BaseException as e:  # handed to the consumer
            q.put((_END, e))

    threading.Thread(target=worker, daemon=True).start()
    try:
        while True:
            item = q.get()
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _END:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        stop.set()


class PairBatches:
    """Host-local batches of one pair type (an iterable; see `make_pair_dataset`).

    records: random-access sequence of stored records (list, `tfds.data_source`, ...).
    global_batch_size: examples per step over all hosts; each host yields G / process_count.
    num_local_shards: graph shards per host (its local devices).
    train: infinite, reshuffled every epoch, drop_last; else one pass in stored order with a
      padded last batch (`mask` False on the dummies).
    buckets: fixed bucket sizes per key (flat or per pair, see `buckets_for`); else derived.
    group_by_size: size grouping (default: when training).
    window_batches: group inside windows of this many batches (default: the whole epoch).
    max_shapes: at most this many padded sizes per key.
    pad_multiple: derived buckets are multiples of this (8: the original collater's rule,
      DESIGN.md; 1 lets tiny molecules such as QM9's pad far less).
    sizes_cache: .npz path that keeps the sizing pass across restarts.
    """

    def __init__(self, pair: str, records, *, global_batch_size: int, num_local_shards: int = 1,
                 process_index: int = 0, process_count: int = 1, seed: int = 0, start_step: int = 0,
                 train: bool = True, buckets: Mapping[str, Sequence[int]] | None = None,
                 conformer_choice: str = "random", group_by_size: bool | None = None,
                 window_batches: int | None = None, max_shapes: int = 8, prefetch: int = 2,
                 sizes_cache: str | None = None, pad_multiple: int = ATOM_MULTIPLE):
        schema.pair_type(pair)  # unknown pair types list the known ones
        if conformer_choice not in ("random", "first"):
            raise ValueError("conformer_choice is 'random' (seeded per epoch and record) or 'first'")
        if global_batch_size % process_count:
            raise ValueError(f"global batch {global_batch_size} not divisible by {process_count} processes")
        self.batch_size = global_batch_size // process_count
        if self.batch_size % num_local_shards:
            raise ValueError(f"host batch {self.batch_size} not divisible by {num_local_shards} local shards")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
        self.pair, self.records, self.seed, self.train = pair, records, seed, train
        self.global_batch_size, self.num_local_shards = global_batch_size, num_local_shards
        self.process_index, self.process_count = process_index, process_count
        self.start_step, self.conformer_choice, self.prefetch = start_step, conformer_choice, prefetch
        buckets = buckets_for(pair, buckets)
        self._scan(buckets, sizes_cache)
        user = {k: tuple(sorted(v)) for k, v in (buckets or {}).items()}
        if pad_multiple < 1:
            raise ValueError("pad_multiple must be >= 1")
        self.schedule = self._choose_grouping(train if group_by_size is None else group_by_size,
                                              window_batches, max_shapes, pad_multiple)
        # Buckets from the sizes the batches of the first epochs actually need (a batch pads to
        # its largest member), plus the largest possible need, so no later epoch can overflow.
        need, _ = self.schedule.simulate(num_epochs=3)
        per = global_batch_size // (num_local_shards * process_count)
        self.buckets = dict(user)
        for k, v in need.items():
            if k in user:
                continue
            srt = np.sort(self.sizes[k][self.valid])
            if k in self.schedule.packed:  # all the largest rows in one shard: never seen, so
                worst = int(srt[-per:].sum()) + self.schedule.packed[k]  # it costs one spare shape
                b = suggest_buckets(v, max(1, max_shapes - 1), pad_multiple)
                self.buckets[k] = b if worst <= b[-1] else b + (int(round_up(worst, pad_multiple)),)
            else:  # the longest record is the worst case
                self.buckets[k] = suggest_buckets(np.append(v, srt[-1]), max_shapes, pad_multiple)
        self.schedule.buckets = self.buckets
        self.steps_per_epoch = self.schedule.steps_per_epoch
        for k in user:  # fail now, not hours into a run, when the given buckets are too small
            if k in need and need[k].max() > max(user[k]):
                raise ValueError(f"{pair}: a batch of the first epochs needs {k} = {need[k].max()}, over "
                                 f"the largest given bucket {max(user[k])}")

    def _choose_grouping(self, group: bool, window_batches: int | None, max_shapes: int,
                         pad_multiple: int) -> Schedule:
        """Size grouping that maximises the worse modality's padding efficiency.

        Candidates: either modality as the primary key, cut into 1..64 bins (equal-count or
        padding-optimal; one bin = sort on the secondary only). Many bins suit independent
        sizes (a molecule and its text), few suit correlated ones (a graph and its conformer).
        Each candidate is scored on the first steps of epoch 0 by the lower of the two
        modalities' efficiencies; the plans differ only in order, so any of them is a valid,
        deterministic schedule.
        """
        kw = dict(global_batch_size=self.global_batch_size, seed=self.seed, train=self.train,
                  num_global_shards=self.num_local_shards * self.process_count,
                  window_batches=window_batches, multiple=pad_multiple)
        if not group:
            return Schedule(self.pair, self.sizes, self.valid, grouping=None, **kw)
        a, b = (s.size_keys[0] for s in pair_specs(self.pair))
        steps = len(self.valid) // self.global_batch_size
        bin_counts = [k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k == 1 or 2 * k <= steps]
        best = None
        for primary, secondary in ((a, b), (b, a)):
            edge_sets = optimal_bucket_sets(self.sizes[primary][self.valid], max(bin_counts), multiple=1)
            for bins, cut in itertools.product(bin_counts, ("quantile", "padding")):
                sched = Schedule(self.pair, self.sizes, self.valid, grouping=(primary, secondary, bins, cut),
                                  bin_edges=edge_sets[bins - 1], **kw)
                score = min(sched.simulate(1, max_steps=512, max_shapes=max_shapes)[1].values())
                if best is None or score > best[0] + 1e-9:
                    best = (score, sched)
        logging.info("%s: size grouping %s (worst efficiency %.3f on epoch 0)",
                     self.pair, best[1].grouping, best[0])
        return best[1]

    def _scan(self, buckets, sizes_cache: str | None):
        """Sizes per bucket key of every record; malformed records, and records longer than a
        given bucket, are skipped and counted. `sizes_cache` (an .npz path) keeps the sizes of
        a large dataset across restarts (reused only for the same pair and record count)."""
        n = len(self.records)
        keys = list(schema.size_keys(self.pair))
        cached = None
        if sizes_cache and os.path.exists(sizes_cache):
            with np.load(sizes_cache, allow_pickle=False) as z:
                if str(z["pair"]) == self.pair and int(z["n"]) == n:
                    cached = {k: z[k] for k in z.files}
        if cached is not None:
            self.sizes = {k: cached[k] for k in keys}
            self.num_choices = {k[len("choices/"):]: cached[k] for k in cached if k.startswith("choices/")}
            ok = cached["ok"].copy()
            self.skipped = collections.Counter(dict(zip(cached["skip_reasons"].tolist(),
                                                        cached["skip_counts"].tolist())))
        else:
            self.sizes, self.num_choices, ok, self.skipped = self._measure(keys)
            if sizes_cache:
                tmp = f"{sizes_cache}.tmp.{os.getpid()}.npz"
                reasons = list(self.skipped)
                np.savez(tmp, pair=self.pair, n=n, ok=ok, **{f"choices/{m}": v for m, v in self.num_choices.items()},
                         skip_reasons=np.array(reasons, dtype=str),
                         skip_counts=np.array([self.skipped[r] for r in reasons], np.int64), **self.sizes)
                os.replace(tmp, sizes_cache)  # atomic: a killed job never leaves half a cache
        packed = packed_keys(self.pair)
        for k in keys:
            if buckets and k in buckets and k not in packed:
                too_long = ok & (self.sizes[k] > max(buckets[k]))
                if too_long.any():
                    self.skipped[f"{k} longer than the largest bucket {max(buckets[k])}"] += int(too_long.sum())
                    ok &= ~too_long
        self.valid = np.flatnonzero(ok)
        if self.skipped:
            logging.warning("%s: skipped %d of %d records: %s", self.pair, sum(self.skipped.values()),
                            n, dict(self.skipped))
        if len(self.valid) == 0:
            raise ValueError(f"{self.pair}: no usable records ({dict(self.skipped)})")

    def _measure(self, keys):
        from tqdm import tqdm
        n = len(self.records)
        sizes = {k: np.zeros(n, np.int64) for k in keys}
        choosers = [s for s in pair_specs(self.pair) if type(s).num_choices is not ModalitySpec.num_choices]
        num_choices = {s.name: np.ones(n, np.int64) for s in choosers}
        skipped: collections.Counter = collections.Counter()
        ok = np.zeros(n, bool)
        for i in tqdm(range(n), desc=f"sizing {self.pair}", leave=False, disable=n < 10000):
            r = self.records[i]
            try:
                for k, v in record_sizes(self.pair, r).items():
                    sizes[k][i] = v
                for s in choosers:
                    num_choices[s.name][i] = s.num_choices(r)
            except (KeyError, ValueError, TypeError, IndexError) as e:
                skipped[f"malformed: {e}"] += 1
                continue
            ok[i] = True
        return sizes, num_choices, ok, skipped

    def global_batch(self, step: int) -> tuple[np.ndarray, np.ndarray, dict[str, int], int]:
        """(record indices [G], pair mask [G], padded shapes, epoch) of a global step."""
        idx, mask, epoch = self.schedule.batch(step)
        return idx, mask, self.schedule.shapes(idx), epoch

    def _choice_draw(self, epoch: int) -> dict[str, np.ndarray]:
        """{modality: stored variant (conformer) of every record} in an epoch: one seeded uniform
        draw per (epoch, record, modality), so the choice does not depend on the host, the
        batch or the order of reading."""
        cached = getattr(self, "_choice_cache", None)
        if cached is None or cached[0] != epoch:
            out = {}
            for i, (m, counts) in enumerate(self.num_choices.items()):
                u = np.random.default_rng([self.seed, epoch, 0xC0F] + ([i] if i else [])).random(len(counts))
                out[m] = np.minimum((u * counts).astype(np.int64), counts - 1)
            cached = (epoch, out)
            self._choice_cache = cached
        return cached[1]

    def host_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(record indices [B], pair mask [B]) of this host's rows of a step: which stored
        record (position in `records`, e.g. to look up its `id`) each batch row holds."""
        idx, mask, _ = self.schedule.batch(step)
        rows = slice(self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size)
        return idx[rows], mask[rows]

    def host_batch(self, step: int) -> PairBatch:
        """This host's rows of global step `step`, collated."""
        idx, mask, shapes, epoch = self.global_batch(step)
        rows = slice(self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size)
        idx, mask = idx[rows], mask[rows]
        choices = None
        if self.conformer_choice == "random":
            choices = {m: d[idx] for m, d in self._choice_draw(epoch).items()}
        return collate_pair(self.pair, _fetch(self.records, idx), num_shards=self.num_local_shards,
                            shapes=shapes, choices=choices, pair_mask=mask)

    def _steps(self) -> Iterable[int]:
        if self.train:
            step = self.start_step
            while True:
                yield step
                step += 1
        yield from range(self.start_step, self.steps_per_epoch)

    def __iter__(self) -> Iterator[PairBatch]:
        return _prefetch(lambda: (self.host_batch(s) for s in self._steps()), self.prefetch)

    def padding_stats(self, num_steps: int | None = None) -> dict[str, dict[str, float]]:
        """Padding efficiency (real / padded elements, dummy rows count as padding) and distinct
        shapes per bucket key, over global steps 0..num_steps-1, from the sizes alone."""
        num_steps = num_steps or self.steps_per_epoch
        epochs = -(-num_steps // self.steps_per_epoch)
        need, _ = self.schedule.simulate(epochs, max_steps=num_steps)
        idx, mask = self.schedule.plan(epochs, max_steps=num_steps)
        out = {}
        for k, v in need.items():
            buckets = np.asarray(sorted(self.buckets[k]))
            if v.max() > buckets[-1]:
                raise ValueError(f"{k}: a batch needs {v.max()}, over the largest bucket {buckets[-1]}")
            padded = buckets[np.searchsorted(buckets, v)]
            width = self.num_local_shards * self.process_count if k in self.schedule.packed else self.global_batch_size
            real = self.sizes[k][idx][mask].sum()
            out[k] = {"efficiency": float(real / (padded.sum() * width)),
                      "num_shapes": len(set(padded.tolist())), "shapes": sorted(set(padded.tolist()))}
        return out


def make_pair_dataset(pair: str, split: str = "train", *, dataset: str = "molbind_mini",
                      data_dir: str | None = None, records=None, global_batch_size: int,
                      num_local_shards: int | None = None, process_index: int | None = None,
                      process_count: int | None = None, seed: int = 0, start_step: int = 0,
                      train: bool = True, buckets: Mapping[str, Sequence[int]] | None = None,
                      conformer_choice: str = "random", **kwargs) -> PairBatches:
    """Builds the host-local batch iterable of one pair type.

    records: a random-access sequence of record dicts or a tf.data.Dataset of records; by
      default the TFDS dataset `{dataset}/{pair}` split `split` under `data_dir`.
    num_local_shards / process_index / process_count default to JAX's values (JAX is imported
      only then). Remaining kwargs go to `PairBatches` (group_by_size, window_batches,
      max_shapes, prefetch, sizes_cache, pad_multiple).
    """
    if num_local_shards is None or process_index is None or process_count is None:
        import jax
        num_local_shards = jax.local_device_count() if num_local_shards is None else num_local_shards
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if records is None:
        records = load_records(pair, split, dataset=dataset, data_dir=data_dir)
    elif hasattr(records, "as_numpy_iterator"):
        records = records_from_tf_dataset(records)
    return PairBatches(pair, records, global_batch_size=global_batch_size,
                       num_local_shards=num_local_shards, process_index=process_index,
                       process_count=process_count, seed=seed, start_step=start_step, train=train,
                       buckets=buckets, conformer_choice=conformer_choice, **kwargs)


def pair_batches(pair: str, split: str = "train", **kwargs) -> Iterator[PairBatch]:
    """Iterator of host-local numpy batches (DESIGN.md section 2); see `make_pair_dataset`."""
    return iter(make_pair_dataset(pair, split, **kwargs))


class MixedPairBatches:
    """One dict {pair: batch} per step. Each pair wraps around on its own; an epoch is the
    longest pair's epoch, as the original's `max(|2D-Text|, |3D-Protein|, |3D-2D|)`.

    pair_batch_size: {pair: global batch} for pairs whose batch differs from
      `global_batch_size` (a cheap pair such as graph_conformer can see more pairs per step).
    pair_every: {pair: k}: the pair is in every k-th step only (0-based steps k-1, 2k-1, ...;
      an expensive, small pair such as conformer_pocket trained less often). Its own iterator
      advances only on those steps, so `start_step` resumes exactly. Default: every step, as
      the original.
    """

    def __init__(self, pairs: Sequence[str] | Mapping[str, PairBatches], split: str = "train", *,
                 records: Mapping[str, Any] | None = None, buckets=None,
                 pair_batch_size: Mapping[str, int] | None = None,
                 pair_every: Mapping[str, int] | None = None, **kwargs):
        if kwargs.get("train", True) is False:  # eval passes would end at different steps
            raise ValueError("mixed_pair_batches is for training (every pair repeats); evaluate "
                             "each pair with pair_batches(..., train=False)")
        names = list(pairs)
        for opt, table in (("pair_batch_size", pair_batch_size), ("pair_every", pair_every)):
            unknown = sorted(set(table or {}) - set(names))
            if unknown:
                raise ValueError(f"{opt} names pairs that are not trained: {unknown} (pairs: {names})")
            bad = {p: v for p, v in (table or {}).items() if int(v) < 1}
            if bad:
                raise ValueError(f"{opt} values must be >= 1, got {bad}")
        self.every = {p: int((pair_every or {}).get(p, 1)) for p in names}
        self.start_step = int(kwargs.pop("start_step", 0))
        if isinstance(pairs, Mapping):
            self.pairs = dict(pairs)
        else:
            self.pairs = {}
            for p in names:
                kw = dict(kwargs)
                if pair_batch_size and p in pair_batch_size:
                    kw["global_batch_size"] = int(pair_batch_size[p])
                # Steps 0..start-1 held floor(start / k) batches of a pair trained every k steps.
                kw["start_step"] = self.start_step // self.every[p]
                self.pairs[p] = make_pair_dataset(p, split, records=(records or {}).get(p),
                                                  buckets=buckets_for(p, buckets), **kw)
        self.steps_per_epoch = max(b.steps_per_epoch * self.every[p] for p, b in self.pairs.items())

    def __iter__(self) -> Iterator[dict[str, PairBatch]]:
        iters = {p: iter(b) for p, b in self.pairs.items()}
        step = self.start_step
        while True:
            yield {p: next(it) for p, it in iters.items() if (step + 1) % self.every[p] == 0}
            step += 1


def mixed_pair_batches(pairs: Sequence[str], split: str = "train", **kwargs
                       ) -> Iterator[dict[str, PairBatch]]:
    """Zips the pair iterators into {pair: batch} per step; kwargs as `make_pair_dataset`."""
    return iter(MixedPairBatches(pairs, split, **kwargs))
