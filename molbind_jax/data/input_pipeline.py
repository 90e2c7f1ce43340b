"""Input pipeline: stored pair records -> bucketed, padded numpy batches, per host.

Layouts are the contract of docs/DESIGN.md: section 1 (stored records, unpadded) in, section 2
(static-shape batches) out. Three layers:

1. Pure numpy padding / packing (`pad_text`, `pad_atoms`, `pack_graphs`, `collate_pair`,
   `choose_bucket`, `suggest_buckets`). No TF, no JAX: the evaluation code calls them on users'
   own featurized records.
2. A global batch *schedule* (which record goes into which row of which step), computed from
   the per-record sizes alone. It is a pure function of (sizes, seed, epoch), identical on every
   host. That is what makes a run resumable from any step and keeps the padded shapes equal
   across hosts: a host cannot pick its bucket from its own rows, because
   `jax.make_array_from_process_local_data` needs every host to send the same shape. So the
   bucket of a step is chosen from the *global* batch, and host `p` takes rows
   `p*G/P .. (p+1)*G/P-1` of it (every example goes to exactly one host, as `ds.shard` would).
3. `PairBatches` / `pair_batches` / `mixed_pair_batches`: read the rows a host needs (random
   access), pick one conformer per example, collate, prefetch on a background thread.

Size grouping (train): each epoch is a seeded permutation; inside it (or inside windows of
`window_batches` global batches) the records are sorted by the bin of one modality's size, then
by the other's, cut into batches, and the batch order and the rows inside each batch are
shuffled again (shuffled rows spread graph sizes evenly over the graph shards). Which modality
leads and how many bins is chosen at start-up by simulating epoch 0 of each candidate with the
bucket budget it will get: few bins suit correlated sizes (a graph and its conformer), many
suit independent ones (a molecule and its text). Buckets then come from the sizes the planned
batches need. Everything is decided from sizes only, before any batch is collated.
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

PAIRS: dict[str, tuple[str, str]] = {
    "graph_text": ("graph", "text"),
    "conformer_text": ("conformer", "text"),
    "graph_conformer": ("graph", "conformer"),
    "conformer_pocket": ("conformer", "pocket"),
}
# Bucket keys: one per padded dimension. A graph has two (node and edge budgets per shard).
BUCKET_KEYS = {"text": ("text",), "conformer": ("conformer",), "pocket": ("pocket",),
               "graph": ("graph_nodes", "graph_edges")}
MAX_TEXT_LEN = 256  # stored text_ids are truncated to 256 (DESIGN.md section 1)
ATOM_MULTIPLE = 8   # the original collater pads atoms to a multiple of 8

Record = Mapping[str, Any]


# ----------------------------------------------------------------------------- buckets

def choose_bucket(size: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= size. Raises ValueError when size exceeds every bucket."""
    for b in sorted(buckets):
        if b >= size:
            return int(b)
    raise ValueError(f"size {size} exceeds the largest bucket {max(buckets) if len(buckets) else None}; "
                     f"pass larger buckets (suggest_buckets derives them from the data)")


def _round_up(x, multiple: int):
    return -(-np.asarray(x) // multiple) * multiple


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
    values, counts = np.unique(np.maximum(_round_up(sizes, multiple), multiple), return_counts=True)
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


# ----------------------------------------------------------------------------- padding

def pad_text(ids_list: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """[B] variable id arrays -> (ids [B,L] int32 padded with 0, mask [B,L] int32)."""
    ids = np.zeros((len(ids_list), length), np.int32)
    mask = np.zeros((len(ids_list), length), np.int32)
    for i, x in enumerate(ids_list):
        x = np.asarray(x).ravel()
        if len(x) > length:
            raise ValueError(f"text {i} has {len(x)} tokens, more than the padded length {length}")
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1
    return ids, mask


def pad_atoms(tokens_list: Sequence[np.ndarray], coords_list: Sequence[np.ndarray], length: int,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Uni-Mol tokens [n] and coords [n,3] -> (tokens [B,N] int32 with 0 = [PAD], coords [B,N,3])."""
    if len(tokens_list) != len(coords_list):
        raise ValueError(f"{len(tokens_list)} token arrays but {len(coords_list)} coordinate arrays")
    tokens = np.zeros((len(tokens_list), length), np.int32)
    coords = np.zeros((len(tokens_list), length, 3), np.float32)
    for i, (t, c) in enumerate(zip(tokens_list, coords_list)):
        t, c = np.asarray(t).ravel(), np.asarray(c, np.float32).reshape(-1, 3)
        if len(t) != len(c):
            raise ValueError(f"example {i}: {len(t)} tokens but {len(c)} coordinates")
        if len(t) > length:
            raise ValueError(f"example {i} has {len(t)} atoms, more than the padded length {length}")
        tokens[i, :len(t)] = t
        coords[i, :len(t)] = c
    return tokens, coords


def _graph_arrays(g: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nodes = np.asarray(g["graph_node_feat"]).reshape(-1, 2)
    edge_index = np.asarray(g["graph_edge_index"]).reshape(2, -1)
    edges = np.asarray(g["graph_edge_feat"]).reshape(-1, 2)
    return nodes, edge_index, edges


def pack_graphs(graphs: Sequence[Record], num_shards: int, node_budget: int, edge_budget: int,
                ) -> dict[str, np.ndarray]:
    """Packs B graphs into `num_shards` jraph-style padded GraphsTuples (stacked on axis 0).

    Graphs s*B/S .. (s+1)*B/S-1 go to shard s. Each shard ends with one padding graph that owns
    every padding node (at least one, so jraph can count it) and every padding edge; padding
    edges point at the shard's last node, a padding node, so messages along them never reach a
    real node. `jraph.get_{graph,node,edge}_padding_mask` then work on each shard.
    """
    b = len(graphs)
    if num_shards < 1 or b % num_shards:
        raise ValueError(f"{b} graphs cannot be split evenly over {num_shards} shards")
    per = b // num_shards
    out = {
        "graph_nodes": np.zeros((num_shards, node_budget, 2), np.int32),
        "graph_edges": np.zeros((num_shards, edge_budget, 2), np.int32),
        "graph_senders": np.full((num_shards, edge_budget), node_budget - 1, np.int32),
        "graph_receivers": np.full((num_shards, edge_budget), node_budget - 1, np.int32),
        "graph_n_node": np.zeros((num_shards, per + 1), np.int32),
        "graph_n_edge": np.zeros((num_shards, per + 1), np.int32),
    }
    for s in range(num_shards):
        n_off = e_off = 0
        for j, g in enumerate(graphs[s * per:(s + 1) * per]):
            nodes, edge_index, edges = _graph_arrays(g)
            n, e = len(nodes), edges.shape[0]
            if edge_index.shape[1] != e:
                raise ValueError(f"graph {s * per + j}: {edge_index.shape[1]} edge indices but {e} edge features")
            if n_off + n + 1 > node_budget or e_off + e > edge_budget:
                raise ValueError(
                    f"shard {s} needs {n_off + n + 1} nodes (incl. one padding node) and {e_off + e} edges, "
                    f"over the budgets {node_budget}/{edge_budget}")
            out["graph_nodes"][s, n_off:n_off + n] = nodes
            out["graph_edges"][s, e_off:e_off + e] = edges
            out["graph_senders"][s, e_off:e_off + e] = edge_index[0] + n_off
            out["graph_receivers"][s, e_off:e_off + e] = edge_index[1] + n_off
            out["graph_n_node"][s, j] = n
            out["graph_n_edge"][s, j] = e
            n_off += n
            e_off += e
        out["graph_n_node"][s, per] = node_budget - n_off
        out["graph_n_edge"][s, per] = edge_budget - e_off
    return out


# ----------------------------------------------------------------------------- sizes

def _graph_sizes(record: Record) -> tuple[int, int]:
    nodes, edge_index, edges = _graph_arrays(record)
    if len(nodes) < 1:
        raise ValueError("graph without nodes")
    if edge_index.shape[1] != len(edges):
        raise ValueError("edge_index and edge_feat disagree")
    if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= len(nodes)):
        raise ValueError("edge index out of range")
    return len(nodes), len(edges)


def record_sizes(pair: str, record: Record) -> dict[str, int]:
    """Padded-dimension sizes of one record; raises ValueError for a malformed record."""
    sizes = {}
    for modality in PAIRS[pair]:
        if modality == "text":
            n = np.asarray(record["text_ids"]).size
            if n < 1:
                raise ValueError("empty text_ids")
            sizes["text"] = n
        elif modality == "graph":
            sizes["graph_nodes"], sizes["graph_edges"] = _graph_sizes(record)
        else:  # conformer / pocket
            tokens = np.asarray(record[f"{modality}_tokens"]).ravel()
            coords = np.asarray(record[f"{modality}_coords"])
            if len(tokens) < 1:
                raise ValueError(f"empty {modality}_tokens")
            if coords.ndim == 2:
                coords = coords[None]
            if coords.ndim != 3 or coords.shape[0] < 1 or coords.shape[1:] != (len(tokens), 3):
                raise ValueError(f"{modality}_coords shape {np.shape(record[f'{modality}_coords'])} "
                                 f"does not match {len(tokens)} tokens")
            sizes[modality] = len(tokens)
    return sizes


def num_conformers(record: Record, modality: str = "conformer") -> int:
    coords = np.asarray(record[f"{modality}_coords"])
    return 1 if coords.ndim == 2 else coords.shape[0]


# ----------------------------------------------------------------------------- collation

def _default_shape(key: str, needed: int, buckets: Mapping[str, Sequence[int]] | None) -> int:
    if buckets is not None and key in buckets:
        return choose_bucket(needed, buckets[key])
    return max(int(_round_up(needed, ATOM_MULTIPLE)), ATOM_MULTIPLE)


def collate_pair(pair: str, examples: Sequence[Record], *, batch_size: int | None = None,
                 num_shards: int = 1, buckets: Mapping[str, Sequence[int]] | None = None,
                 shapes: Mapping[str, int] | None = None,
                 conformer_indices: Sequence[int] | None = None,
                 pair_mask: Sequence[bool] | None = None) -> dict[str, np.ndarray]:
    """Stored records of one pair type -> one batch dict in the DESIGN.md section 2 layout.

    batch_size: rows of the batch; missing rows are copies of examples[0] with pair_mask False.
    shapes: padded size per bucket key ("text", "conformer", "pocket", "graph_nodes",
      "graph_edges"); missing keys are chosen from `buckets`, else rounded up to a multiple of 8.
    conformer_indices: which stored conformer each example uses (default: the first).
    """
    if pair not in PAIRS:
        raise ValueError(f"unknown pair {pair!r}; expected one of {sorted(PAIRS)}")
    if not examples:
        raise ValueError("collate_pair needs at least one example")
    n_real = len(examples)
    batch_size = n_real if batch_size is None else batch_size
    if n_real > batch_size:
        raise ValueError(f"{n_real} examples for a batch of {batch_size}")
    mask = np.ones(n_real, bool) if pair_mask is None else np.asarray(pair_mask, bool).ravel()
    if len(mask) != n_real or (conformer_indices is not None and len(conformer_indices) != n_real):
        raise ValueError(f"{n_real} examples but pair_mask / conformer_indices of another length")
    fill = batch_size - n_real
    examples = list(examples) + [examples[0]] * fill
    mask = np.concatenate([mask, np.zeros(fill, bool)])
    conf_idx = list(conformer_indices) if conformer_indices is not None else [0] * n_real
    conf_idx = conf_idx + [conf_idx[0]] * fill
    shapes = dict(shapes or {})
    batch: dict[str, np.ndarray] = {}
    for modality in PAIRS[pair]:
        if modality == "text":
            ids = [np.asarray(r["text_ids"]) for r in examples]
            length = shapes.get("text") or _default_shape("text", max(len(x) for x in ids), buckets)
            batch["text_ids"], batch["text_mask"] = pad_text(ids, length)
        elif modality == "graph":
            per = batch_size // num_shards if batch_size % num_shards == 0 else None
            if per is None:
                raise ValueError(f"batch of {batch_size} cannot be split over {num_shards} graph shards")
            nb, eb = shapes.get("graph_nodes"), shapes.get("graph_edges")
            if not (nb and eb):
                sz = np.array([_graph_sizes(r) for r in examples]).reshape(num_shards, per, 2).sum(1)
                nb = nb or _default_shape("graph_nodes", sz[:, 0].max() + 1, buckets)
                eb = eb or _default_shape("graph_edges", sz[:, 1].max(), buckets)
            batch.update(pack_graphs(examples, num_shards, nb, eb))
        else:
            tokens, coords = [], []
            for r, k in zip(examples, conf_idx):
                c = np.asarray(r[f"{modality}_coords"], np.float32)
                tokens.append(np.asarray(r[f"{modality}_tokens"]))
                coords.append(c if c.ndim == 2 else c[k])
            length = shapes.get(modality) or _default_shape(modality, max(len(t) for t in tokens), buckets)
            batch[f"{modality}_tokens"], batch[f"{modality}_coords"] = pad_atoms(tokens, coords, length)
    batch["pair_mask"] = mask
    return batch


# ----------------------------------------------------------------------------- schedule

class _Schedule:
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
        for modality in PAIRS[self.pair]:
            if modality == "graph":
                per_shard = lambda k: int(self.sizes[k][idx].reshape(self.shards, -1).sum(1).max())
                out["graph_nodes"] = per_shard("graph_nodes") + 1  # + the padding graph's node
                out["graph_edges"] = per_shard("graph_edges")
            else:
                out[modality] = int(self.sizes[modality][idx].max())
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
        for k in (k for m in PAIRS[self.pair] for k in BUCKET_KEYS[m]):
            size = self.sizes[k][idx]
            real[k] = int(size[mask].sum())
            if k.startswith("graph"):  # vectorised `needed`: the fullest shard of each batch
                need[k] = size.reshape(len(idx), self.shards, -1).sum(2).max(1) + (k == "graph_nodes")
            else:
                need[k] = size.max(1)
        eff = {}
        for k, v in need.items():
            graph = k.startswith("graph")
            padded = _round_up(v, self.multiple)
            if max_shapes:
                b = np.asarray(suggest_buckets(v, max(1, max_shapes - graph), self.multiple))
                padded = b[np.searchsorted(b, v)]
            eff[k] = real[k] / max(1, int(padded.sum()) * (self.shards if graph else self.g))
        return need, eff


# ----------------------------------------------------------------------------- records

def load_records(pair: str, split: str, *, dataset: str = "molbind_mini", data_dir: str | None = None):
    """Random-access records of a built `molbind_pairs` dataset.

    array_record datasets are read lazily through `tfds.data_source` (a host reads only its
    rows); other formats are read once into memory in file order.
    """
    import tensorflow_datasets as tfds
    try:  # registers the builder class; a built dataset also loads from its files without it
        import data_pipeline.molbind_pairs  # noqa: F401
    except ImportError:
        pass
    builder = tfds.builder(f"{dataset}/{pair}", data_dir=data_dir)
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


def buckets_for(pair: str, buckets) -> dict[str, tuple[int, ...]] | None:
    """The buckets of one pair from either a flat {bucket key: sizes} mapping (shared by all
    pairs; keys of other pairs' modalities are ignored) or a {pair: {bucket key: sizes}} one.
    Accepts any mapping with `.items()` (an ml_collections ConfigDict too)."""
    if not buckets:
        return None
    buckets = dict(buckets.items())
    all_keys = {k for ks in BUCKET_KEYS.values() for k in ks}
    if set(buckets) <= set(PAIRS):
        return buckets_for(pair, buckets.get(pair))
    unknown = set(buckets) - all_keys
    if unknown:
        raise ValueError(f"unknown bucket keys {sorted(unknown)}; expected bucket keys {sorted(all_keys)} "
                         f"or pair names {sorted(PAIRS)}")
    mine = {k for m in PAIRS[pair] for k in BUCKET_KEYS[m]}
    return {k: tuple(int(x) for x in v) for k, v in buckets.items() if k in mine} or None


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
      padded last batch (`pair_mask` False on the dummies).
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
        if pair not in PAIRS:
            raise ValueError(f"unknown pair {pair!r}; expected one of {sorted(PAIRS)}")
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
            if k.startswith("graph"):  # all the largest graphs in one shard: never seen, so
                worst = int(srt[-per:].sum()) + (k == "graph_nodes")  # it costs one spare shape
                b = suggest_buckets(v, max(1, max_shapes - 1), pad_multiple)
                self.buckets[k] = b if worst <= b[-1] else b + (int(_round_up(worst, pad_multiple)),)
            else:  # the longest record is the worst case
                self.buckets[k] = suggest_buckets(np.append(v, srt[-1]), max_shapes, pad_multiple)
        self.schedule.buckets = self.buckets
        self.steps_per_epoch = self.schedule.steps_per_epoch
        for k in user:  # fail now, not hours into a run, when the given buckets are too small
            if k in need and need[k].max() > max(user[k]):
                raise ValueError(f"{pair}: a batch of the first epochs needs {k} = {need[k].max()}, over "
                                 f"the largest given bucket {max(user[k])}")

    def _choose_grouping(self, group: bool, window_batches: int | None, max_shapes: int,
                         pad_multiple: int) -> _Schedule:
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
            return _Schedule(self.pair, self.sizes, self.valid, grouping=None, **kw)
        a, b = (BUCKET_KEYS[m][0] for m in PAIRS[self.pair])
        steps = len(self.valid) // self.global_batch_size
        bin_counts = [k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k == 1 or 2 * k <= steps]
        best = None
        for primary, secondary in ((a, b), (b, a)):
            edge_sets = optimal_bucket_sets(self.sizes[primary][self.valid], max(bin_counts), multiple=1)
            for bins, cut in itertools.product(bin_counts, ("quantile", "padding")):
                sched = _Schedule(self.pair, self.sizes, self.valid, grouping=(primary, secondary, bins, cut),
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
        keys = [k for m in PAIRS[self.pair] for k in BUCKET_KEYS[m]]
        cached = None
        if sizes_cache and os.path.exists(sizes_cache):
            with np.load(sizes_cache, allow_pickle=False) as z:
                if str(z["pair"]) == self.pair and int(z["n"]) == n:
                    cached = {k: z[k] for k in z.files}
        if cached is not None:
            self.sizes = {k: cached[k] for k in keys}
            self.num_conformers, ok = cached["num_conformers"], cached["ok"].copy()
            self.skipped = collections.Counter(dict(zip(cached["skip_reasons"].tolist(),
                                                        cached["skip_counts"].tolist())))
        else:
            self.sizes, self.num_conformers, ok, self.skipped = self._measure(keys)
            if sizes_cache:
                tmp = f"{sizes_cache}.tmp.{os.getpid()}.npz"
                reasons = list(self.skipped)
                np.savez(tmp, pair=self.pair, n=n, num_conformers=self.num_conformers, ok=ok,
                         skip_reasons=np.array(reasons, dtype=str),
                         skip_counts=np.array([self.skipped[r] for r in reasons], np.int64), **self.sizes)
                os.replace(tmp, sizes_cache)  # atomic: a killed job never leaves half a cache
        for k in ("text", "conformer", "pocket"):
            if buckets and k in buckets and k in self.sizes:
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
        num_conf = np.ones(n, np.int64)
        skipped: collections.Counter = collections.Counter()
        ok = np.zeros(n, bool)
        for i in tqdm(range(n), desc=f"sizing {self.pair}", leave=False, disable=n < 10000):
            r = self.records[i]
            try:
                for k, v in record_sizes(self.pair, r).items():
                    sizes[k][i] = v
                if "conformer" in PAIRS[self.pair]:
                    num_conf[i] = num_conformers(r)
            except (KeyError, ValueError, TypeError, IndexError) as e:
                skipped[f"malformed: {e}"] += 1
                continue
            ok[i] = True
        return sizes, num_conf, ok, skipped

    def global_batch(self, step: int) -> tuple[np.ndarray, np.ndarray, dict[str, int], int]:
        """(record indices [G], pair mask [G], padded shapes, epoch) of a global step."""
        idx, mask, epoch = self.schedule.batch(step)
        return idx, mask, self.schedule.shapes(idx), epoch

    def _conformer_draw(self, epoch: int) -> np.ndarray:
        """Conformer index of every record in an epoch: one seeded uniform draw per (epoch,
        record), so the choice does not depend on the host, the batch or the order of reading."""
        cached = getattr(self, "_conf_cache", None)
        if cached is None or cached[0] != epoch:
            u = np.random.default_rng([self.seed, epoch, 0xC0F]).random(len(self.num_conformers))
            cached = (epoch, np.minimum((u * self.num_conformers).astype(np.int64), self.num_conformers - 1))
            self._conf_cache = cached
        return cached[1]

    def host_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(record indices [B], pair mask [B]) of this host's rows of a step: which stored
        record (position in `records`, e.g. to look up its `id`) each batch row holds."""
        idx, mask, _ = self.schedule.batch(step)
        rows = slice(self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size)
        return idx[rows], mask[rows]

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's rows of global step `step`, collated."""
        idx, mask, shapes, epoch = self.global_batch(step)
        rows = slice(self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size)
        idx, mask = idx[rows], mask[rows]
        conf = None
        if "conformer" in PAIRS[self.pair] and self.conformer_choice == "random":
            conf = self._conformer_draw(epoch)[idx]
        return collate_pair(self.pair, _fetch(self.records, idx), num_shards=self.num_local_shards,
                            shapes=shapes, conformer_indices=conf, pair_mask=mask)

    def _steps(self) -> Iterable[int]:
        if self.train:
            step = self.start_step
            while True:
                yield step
                step += 1
        yield from range(self.start_step, self.steps_per_epoch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
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
            width = self.num_local_shards * self.process_count if k.startswith("graph") else self.global_batch_size
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


def pair_batches(pair: str, split: str = "train", **kwargs) -> Iterator[dict[str, np.ndarray]]:
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

    def __iter__(self) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        iters = {p: iter(b) for p, b in self.pairs.items()}
        step = self.start_step
        while True:
            yield {p: next(it) for p, it in iters.items() if (step + 1) % self.every[p] == 0}
            step += 1


def mixed_pair_batches(pairs: Sequence[str], split: str = "train", **kwargs
                       ) -> Iterator[dict[str, dict[str, np.ndarray]]]:
    """Zips the pair iterators into {pair: batch} per step; kwargs as `make_pair_dataset`."""
    return iter(MixedPairBatches(pairs, split, **kwargs))
