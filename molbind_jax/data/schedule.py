"""The global batch schedule (layer 2 of the input pipeline; numpy only).

Which record goes into which row of which step, computed from the per-record sizes alone: a
pure function of (sizes, seed, epoch), identical on every host. That is what makes a run
resumable from any step and keeps the padded shapes equal across hosts: a host cannot pick
its bucket from its own rows, because `jax.make_array_from_process_local_data` needs every
host to send the same shape. So the bucket of a step is chosen from the *global* batch, and
host `p` takes rows `p*G/P .. (p+1)*G/P-1` of it (every example goes to exactly one host).

Size grouping (train): each epoch is a seeded permutation; inside it (or inside windows of
`window_batches` global batches) the records are sorted by the bin of one size key, then by
the other modality's, cut into batches, and the batch order and the rows inside each batch
are shuffled again (shuffled rows spread graph sizes evenly over the graph shards). Size keys
that a modality packs per shard (a graph's node and edge budgets) count per shard.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from molbind_data import schema
from molbind_jax.data.batching import ATOM_MULTIPLE, choose_bucket, packed_keys, suggest_buckets
from molbind_jax.modalities.base import round_up


class Schedule:
    """Global batch plan: step -> (record indices [G], real-row mask [G]).

    A pure function of the record sizes, the seed and the epoch, so every host computes the
    same plan and `start_step=k` reproduces an uninterrupted run exactly.

    grouping: None (no size grouping) or (primary key, secondary key, bins, cut): records are
    sorted by the bin of their primary size (cut "quantile": equal-count bins; "padding": the
    bins that pad the primary least, `bin_edges`), then by secondary size, ascending in even
    bins and descending in odd ones (a snake, so that the batch straddling two bins joins
    records of similar secondary size).
    """

    def __init__(self, pair: str, sizes: Mapping[str, np.ndarray], valid: np.ndarray, *,
                 global_batch_size: int, num_global_shards: int, seed: int, train: bool,
                 grouping: tuple[str, str, int, str] | None, window_batches: int | None,
                 bin_edges: Sequence[int] | None = None, multiple: int = ATOM_MULTIPLE):
        self.pair, self.sizes, self.valid, self.multiple = pair, sizes, valid, multiple
        self.keys = schema.size_keys(pair)
        self.packed = packed_keys(pair)  # per-shard budgets: {key: extra}
        self.g, self.shards, self.seed, self.train = global_batch_size, num_global_shards, seed, train
        self.grouping, self.window = grouping, window_batches
        self.buckets: Mapping[str, Sequence[int]] = {}
        n = len(valid)
        if train and n < self.g:
            raise ValueError(f"{pair}: {n} usable records, fewer than one global batch of {self.g}")
        self.steps_per_epoch = n // self.g if train else -(-n // self.g)
        if grouping is not None:
            primary, secondary, bins, cut = grouping
            if cut == "quantile":  # equal-count bins
                edges = np.quantile(sizes[primary][valid], np.linspace(0, 1, bins + 1)[1:-1])
                bin_of = np.searchsorted(edges, sizes[primary], side="right")
            else:  # "padding": the bins that pad the primary least (narrow bins in the tail)
                if bin_edges is None:
                    bin_edges = suggest_buckets(sizes[primary][valid], bins, multiple=1)
                edges = np.asarray(bin_edges)
                bin_of = np.searchsorted(edges, sizes[primary], side="left")
            snake = np.where(bin_of % 2 == 0, sizes[secondary], -sizes[secondary])
            self._key = (sizes[primary], snake, bin_of)
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def _sorted(self, idx: np.ndarray) -> np.ndarray:
        if self.grouping is None:
            return idx
        prim, snake, bin_of = self._key
        return idx[np.lexsort((prim[idx], snake[idx], bin_of[idx]))]

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n, g = len(self.valid), self.g
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, 0x5EED])
            order = self.valid[rng.permutation(n)[: n // g * g]]  # drop_last, as the original
            out = []
            step = self.window * g if self.window else len(order)
            for w in range(0, len(order), step):
                win = self._sorted(order[w:w + step]).reshape(-1, g)
                if self.grouping is not None:  # sorted batches: shuffle their order and rows
                    win = win[rng.permutation(len(win))]
                    win = rng.permuted(win, axis=1)
                out.extend(win)
        else:
            order = self._sorted(self.valid)
            out = [order[i:i + g] for i in range(0, n, g)]
        self._cache = (epoch, out)
        return out

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(record indices [G] with padding rows repeating row 0, mask [G], epoch)."""
        if not self.train and step >= self.steps_per_epoch:
            raise IndexError(f"eval step {step} beyond the {self.steps_per_epoch} batches")
        epoch, pos = divmod(step, self.steps_per_epoch)
        idx = self._epoch(epoch)[pos]
        mask = np.ones(self.g, bool)
        if len(idx) < self.g:
            mask[len(idx):] = False
            idx = np.concatenate([idx, np.full(self.g - len(idx), idx[0])])
        return idx, mask, epoch

    def needed(self, idx: np.ndarray) -> dict[str, int]:
        """Smallest padded size per bucket key that fits this global batch."""
        out = {}
        for k in self.keys:
            if k in self.packed:  # the fullest shard, plus the fixed extra (a padding node)
                out[k] = int(self.sizes[k][idx].reshape(self.shards, -1).sum(1).max()) + self.packed[k]
            else:
                out[k] = int(self.sizes[k][idx].max())
        return out

    def shapes(self, idx: np.ndarray) -> dict[str, int]:
        """Padded sizes of one global batch, chosen from the buckets (equal on every host)."""
        return {k: choose_bucket(v, self.buckets[k]) for k, v in self.needed(idx).items()}

    def plan(self, num_epochs: int, max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(record indices [T, G], mask [T, G]) of the first steps, as `batch` gives them."""
        idx = []
        for e in range(num_epochs if self.train else 1):
            idx.extend(self._epoch(e))
            if max_steps and len(idx) >= max_steps:
                break
        idx = idx[:max_steps] if max_steps else idx
        mask = np.ones((len(idx), self.g), bool)
        if len(idx[-1]) < self.g:  # eval's short last batch, padded with copies of its row 0
            mask[-1, len(idx[-1]):] = False
            idx[-1] = np.concatenate([idx[-1], np.full(self.g - len(idx[-1]), idx[-1][0])])
        return np.stack(idx), mask

    def simulate(self, num_epochs: int, max_steps: int | None = None, max_shapes: int | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Per-batch needed sizes over the first epochs (or steps), and the padding efficiency
        they give with the best `max_shapes` buckets for them (one fewer for graph budgets,
        which keep a spare worst-case budget), or with unlimited buckets (multiples of 8)."""
        idx, mask = self.plan(num_epochs, max_steps)
        need, real = {}, {}
        for k in self.keys:
            size = self.sizes[k][idx]
            real[k] = int(size[mask].sum())
            if k in self.packed:  # vectorised `needed`: the fullest shard of each batch
                need[k] = size.reshape(len(idx), self.shards, -1).sum(2).max(1) + self.packed[k]
            else:
                need[k] = size.max(1)
        eff = {}
        for k, v in need.items():
            packed = k in self.packed
            padded = round_up(v, self.multiple)
            if max_shapes:
                b = np.asarray(suggest_buckets(v, max(1, max_shapes - packed), self.multiple))
                padded = b[np.searchsorted(b, v)]
            eff[k] = real[k] / max(1, int(padded.sum()) * (self.shards if packed else self.g))
        return need, eff
