"""Cached text features for a locked text tower (LiT style): the tower runs once per text.

With "text_encoder" in `config.frozen` the tower's output never changes, yet every step would
run it. With `text_cache` on ("on", or "auto": when the tower is frozen and the data is a built
TFDS dataset) the tower runs once over every text of every split of the trained text pairs'
stored configs, and the [CLS] row of its eval-mode forward (the vector `text_proj` consumes,
float32 [H]) is stored per unique text. Training batches of those pairs then hold
`TextFeatures` and the model applies only the head.

Where: `<text_cache_dir or <data_dir>/text_cache>/<dataset>/<fingerprint[:16]>/`, shared by
every run and seed on the same data and weights. The fingerprint (sha256) covers the cache
format, the dataset (name, version and split sizes per stored config), the tokenizer files,
every parameter of the tower, its config minus dropout, the model dtype and the token limit.
Files: `fingerprint.json`, `index.npz` (sha1 of each unique text's ids, sorted by length; per
"<stored config>/<split>" the unique text of each record, -1 for malformed ones),
`chunks/NNNNN.npy` (float32 [<= CHUNK, H], each written atomically, so a killed build resumes)
and `manifest.json` (sha256 per chunk, written last). `load` raises `TextCacheError` naming a
missing, stale, unfinished or damaged file; `ensure` reports it and rebuilds what is missing.

Alignment: `CachedTextRecords` adds each record's vector (by its index in the split) under
`TEXT_FEATURE_KEY` as the pipeline reads it, after checking the record's ids against the cached
text's sha1, so shuffling, padding rows and skipped rows carry their own text's vector.

The uncached locked tower ran in train mode (its dropout applied); the cache is the
deterministic eval-mode output, which evaluation and the export compute too. docs/training.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from molbind_jax.modalities.text import MAX_TEXT_LEN, TEXT_FEATURE_KEY, TOKENIZER_FILES

log = logging.getLogger("molbind_jax.training.text_cache")

CACHE_FORMAT = 1
CHUNK = 1024  # unique texts per chunk file
FORWARD_BATCH = 64  # texts per encoder forward
# Padded lengths of the cache's forwards: the texts are sorted by length, so a batch's texts
# are alike and fine steps waste little (powers of two padded mini's 130-256-token texts to 256).
LENGTH_BUCKETS = (32, 64, 96, 128, 160, 192, 224, 256)


class TextCacheError(ValueError):
    """The text cache is missing, stale, incomplete or damaged; the message names the file."""


# ----------------------------------------------------------------------------- fingerprint

def text_digest(ids) -> bytes:
    """sha1 of a record's token ids (as int32): what identifies its text in the cache."""
    return hashlib.sha1(np.asarray(ids).astype(np.int32).ravel().tobytes()).digest()


def weights_digest(encoder) -> str:
    """sha256 over every parameter (path, dtype, shape, bytes) of an nnx module."""
    import jax
    from flax import nnx

    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(encoder, nnx.Param))[0]
    for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def tokenizer_digest(text_dir: str) -> str:
    """sha256 over the tokenizer files of `text_dir` ("none" without one: a tower from scratch)."""
    if not text_dir:
        return "none"
    h = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = os.path.join(text_dir, name)
        if os.path.exists(path):
            found = True
            h.update(name.encode() + b"|")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest() if found else "none"


def tower_description(tower_config) -> dict:
    """The text tower config as it affects the eval-mode forward (dropout left out)."""
    from molbind_jax.modalities.base import tower_config_to_dict

    d = tower_config_to_dict(tower_config)
    for k in ("dropout", "attention_dropout", "dropout_rng"):
        d.pop(k, None)
    return d


def fingerprint(*, dataset: Mapping, tokenizer: str, weights: str, tower: Mapping,
                max_tokens: int = MAX_TEXT_LEN) -> tuple[str, dict]:
    """(hex sha256, parts) of everything the cached vectors depend on."""
    parts = {"format": CACHE_FORMAT, "dataset": dataset, "tokenizer": tokenizer, "weights": weights,
             "tower": dict(tower), "max_tokens": int(max_tokens)}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), parts


# ----------------------------------------------------------------------------- the cache

@dataclasses.dataclass
class TextFeatureCache:
    """The loaded cache: `features` [U, H] float32 of the unique texts, their `digests`, and
    `rows[source]` (source = "<stored config>/<split>"): the unique text of each record."""

    directory: str
    fingerprint: str
    features: np.ndarray
    digests: np.ndarray
    rows: dict[str, np.ndarray]
    sources: dict = dataclasses.field(default_factory=dict)  # the records it was checked against

    def records(self, source: str, records) -> "CachedTextRecords":
        if source not in self.rows:
            raise TextCacheError(f"{self.directory} holds no texts of {source} (it has {sorted(self.rows)})")
        return CachedTextRecords(records, self, source)


class CachedTextRecords:
    """A random-access record sequence whose records carry their cached text vector under
    `TEXT_FEATURE_KEY` (looked up by the record's index, checked against its token ids)."""

    def __init__(self, records, cache: TextFeatureCache, source: str):
        self.base, self.cache, self.source = records, cache, source
        self.rows = cache.rows[source]
        if len(self.rows) != len(records):
            raise TextCacheError(f"{cache.directory}: {source} has {len(records)} records but the cache indexed "
                                 f"{len(self.rows)}: stale cache (delete it or set text_cache_rebuild=True)")

    def __len__(self):
        return len(self.base)

    def _attach(self, i: int, record):
        u = int(self.rows[i])
        if u < 0:  # no usable text_ids: the pipeline skips the record as malformed
            return record
        if text_digest(record["text_ids"]) != self.cache.digests[u].tobytes():
            raise TextCacheError(
                f"record {i} of {self.source} (id {record.get('id', '?')!r}) holds another text than the cache "
                f"{self.cache.directory} recorded for it: the dataset changed without a new version; "
                "rebuild the cache (text_cache_rebuild=True)")
        out = dict(record)
        out[TEXT_FEATURE_KEY] = self.cache.features[u]
        return out

    def __getitem__(self, i):
        return self._attach(int(i), self.base[int(i)])

    def __getitems__(self, idx):
        idx = [int(i) for i in idx]
        got = self.base.__getitems__(idx) if hasattr(self.base, "__getitems__") else [self.base[i] for i in idx]
        return [self._attach(i, r) for i, r in zip(idx, got)]


def _chunk_path(directory: str, k: int) -> str:
    return os.path.join(directory, "chunks", f"{k:05d}.npy")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """`write(file)` into a temporary file, then renamed over `path`: a killed build never
    leaves half a file under the final name."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, mode) as f:
        write(f)
    os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=str)), "w")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise TextCacheError(f"{path} is damaged ({type(e).__name__}: {e})") from e


def _load_index(directory: str):
    path = os.path.join(directory, "index.npz")
    if not os.path.exists(path):
        raise TextCacheError(f"{directory} has no index.npz: the cache was never built here")
    try:
        with np.load(path, allow_pickle=False) as z:
            digests, lengths = z["digests"], z["lengths"]
            rows = {k[len("rows/"):]: z[k] for k in z.files if k.startswith("rows/")}
    except Exception as e:  # noqa: BLE001 - zipfile/ValueError/EOFError for a damaged file
        raise TextCacheError(f"{path} is damaged ({type(e).__name__}: {e})") from e
    return digests, lengths, rows


def _load_chunk(path: str, n: int, dim: int | None) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise TextCacheError(f"{path} is missing") from e
    except Exception as e:  # noqa: BLE001 - a truncated .npy raises ValueError / EOFError
        raise TextCacheError(f"{path} is damaged ({type(e).__name__}: {e})") from e
    if a.dtype != np.float32 or a.ndim != 2 or a.shape[0] != n or (dim is not None and a.shape[1] != dim):
        raise TextCacheError(f"{path} holds {a.dtype} {a.shape}, expected float32 [{n}, {dim or 'H'}]")
    if not np.isfinite(a).all():
        raise TextCacheError(f"{path} holds NaN/inf")
    return a


def load(directory: str, expected_fingerprint: str) -> TextFeatureCache:
    """The complete cache in `directory`; TextCacheError when it is missing, was made for
    other data/weights (another fingerprint), is incomplete, or a file is damaged."""
    fp_path = os.path.join(directory, "fingerprint.json")
    try:
        fp = _read_json(fp_path)
    except FileNotFoundError as e:
        raise TextCacheError(f"no text cache in {directory}") from e
    if fp.get("fingerprint") != expected_fingerprint:
        raise TextCacheError(f"{directory} is a stale text cache: made for fingerprint {fp.get('fingerprint')}, "
                             f"this run needs {expected_fingerprint} (dataset, tokenizer, tower weights or "
                             "token limit changed)")
    try:
        manifest = _read_json(os.path.join(directory, "manifest.json"))
    except FileNotFoundError as e:
        raise TextCacheError(f"{directory}: the cache build did not finish (no manifest.json)") from e
    digests, _, rows = _load_index(directory)
    u, dim = int(manifest["num_texts"]), int(manifest["dim"])
    if len(digests) != u:
        raise TextCacheError(f"{directory}: index.npz lists {len(digests)} texts, manifest.json {u}")
    parts = []
    for k, sha in enumerate(manifest["chunks"]):
        path = _chunk_path(directory, k)
        if not os.path.exists(path) or _sha256_file(path) != sha:
            raise TextCacheError(f"{path} is {'missing' if not os.path.exists(path) else 'damaged (checksum)'}")
        parts.append(_load_chunk(path, min(CHUNK, u - k * CHUNK), dim))
    features = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return TextFeatureCache(directory, expected_fingerprint, features, digests, rows)


def _scan(sources: Mapping[str, Any]):
    """Unique texts (sorted by length) of every source; rows[source][i] = unique id or -1."""
    from tqdm import tqdm

    uid: dict[bytes, int] = {}
    ids_of: list[np.ndarray] = []
    rows = {}
    total = sum(len(r) for r in sources.values())
    with tqdm(total=total, desc="text cache: reading texts", unit="rec", leave=False, disable=total < 2000) as bar:
        for name, records in sources.items():
            n = len(records)
            r_rows = np.full(n, -1, np.int64)
            for start in range(0, n, 1024):
                idx = list(range(start, min(n, start + 1024)))
                got = records.__getitems__(idx) if hasattr(records, "__getitems__") else [records[i] for i in idx]
                for i, rec in zip(idx, got):
                    ids = np.asarray(rec.get("text_ids", ()) if hasattr(rec, "get") else rec["text_ids"]).ravel()
                    if ids.size < 1:
                        continue
                    d = text_digest(ids)
                    if d not in uid:
                        uid[d] = len(ids_of)
                        ids_of.append(ids.astype(np.int32))
                    r_rows[i] = uid[d]
                bar.update(len(idx))
            rows[name] = r_rows
    lengths = np.array([len(x) for x in ids_of], np.int64)
    order = np.argsort(lengths, kind="stable")  # chunks of similar lengths pad little
    new_of_old = np.empty(len(order), np.int64)
    new_of_old[order] = np.arange(len(order))
    digests = np.frombuffer(b"".join(text_digest(ids_of[i]) for i in order), np.uint8).reshape(len(order), 20)
    rows = {k: np.where(v >= 0, new_of_old[np.maximum(v, 0)], -1) for k, v in rows.items()}
    return [ids_of[i] for i in order], lengths[order], digests, rows


def encoder_forward(model) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(ids [B, L], mask [B, L]) -> float32 [B, H]: the eval-mode [CLS] row of `model`'s text
    tower, the vector its projection head consumes (what `TextSpec.embed` computes before
    `text_proj`)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from molbind_jax.models.heads import text_cls_pool

    graphdef, state = nnx.split(model.text_encoder)

    @jax.jit
    def f(state, ids, mask):
        encoder = nnx.merge(graphdef, state)
        return text_cls_pool(encoder(ids, mask, train=False)).astype(jnp.float32)

    return lambda ids, mask: np.asarray(f(state, jnp.asarray(ids), jnp.asarray(mask)))


def _bucket(n: int) -> int:
    for b in LENGTH_BUCKETS:
        if n <= b:
            return b
    return int(-(-n // 8) * 8)


def _compute_chunk(forward, texts: Sequence[np.ndarray], bar=None) -> np.ndarray:
    from molbind_jax.modalities.text import pad_text

    out = []
    for s in range(0, len(texts), FORWARD_BATCH):
        part = list(texts[s:s + FORWARD_BATCH])
        n = len(part)
        part += [part[0]] * (FORWARD_BATCH - n)  # one row count: one program per length bucket
        batch = pad_text(part, _bucket(max(len(x) for x in part)))
        out.append(np.asarray(forward(batch.ids, batch.mask), np.float32)[:n])
        if bar is not None:
            bar.update(n)
    return np.concatenate(out)


def build(directory: str, fp: str, parts: Mapping, sources: Mapping[str, Any], forward, *,
          rebuild: bool = False) -> None:
    """Builds (or finishes) the cache in `directory`: reads the texts of `sources`
    ({"<stored config>/<split>": records}), runs `forward` over each unique text once (chunk by
    chunk, each written atomically; chunks already there and intact are kept) and writes the
    manifest last."""
    from tqdm import tqdm

    if rebuild:
        shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(os.path.join(directory, "chunks"), exist_ok=True)
    fp_path = os.path.join(directory, "fingerprint.json")
    try:
        old = _read_json(fp_path).get("fingerprint")
    except (FileNotFoundError, TextCacheError):
        old = None
    if old not in (None, fp):  # a prefix collision or a hand-copied directory: start over
        log.warning("%s holds a cache for another fingerprint; rebuilding it", directory)
        shutil.rmtree(directory)
        os.makedirs(os.path.join(directory, "chunks"))
    _write_json(fp_path, {"fingerprint": fp, "parts": parts})
    texts, lengths, digests, rows = _scan(sources)
    index_ok = False
    try:
        old_digests, _, old_rows = _load_index(directory)
        index_ok = np.array_equal(old_digests, digests) and set(old_rows) == set(rows) and all(
            np.array_equal(old_rows[k], rows[k]) for k in rows)
    except TextCacheError:
        pass
    if not index_ok:
        if os.path.exists(os.path.join(directory, "index.npz")):
            log.warning("%s: index.npz does not match the dataset's texts; recomputing every chunk", directory)
        for name in os.listdir(os.path.join(directory, "chunks")):
            os.remove(os.path.join(directory, "chunks", name))
        _write_atomic(os.path.join(directory, "index.npz"),
                      lambda f: np.savez(f, digests=digests, lengths=lengths,
                                         **{f"rows/{k}": v for k, v in rows.items()}))
    u = len(texts)
    n_chunks = -(-u // CHUNK)
    shas, dim = [], None
    with tqdm(total=u, desc="text cache: encoding", unit="text", dynamic_ncols=True) as bar:
        for k in range(n_chunks):
            path = _chunk_path(directory, k)
            part = texts[k * CHUNK:(k + 1) * CHUNK]
            a = None
            if os.path.exists(path):
                try:
                    a = _load_chunk(path, len(part), dim)
                except TextCacheError as e:
                    log.warning("%s; recomputing it", e)
            if a is None:
                a = _compute_chunk(forward, part, bar)
                if not np.isfinite(a).all():
                    raise TextCacheError(f"the text tower gave NaN/inf for texts of chunk {k} of {directory}")
                _write_atomic(path, lambda f, a=a: np.save(f, a))
            else:
                bar.update(len(part))  # kept from an earlier (interrupted) build
            dim = a.shape[1]
            shas.append(_sha256_file(path))
    manifest = {"num_texts": u, "dim": int(dim or 0), "chunk_size": CHUNK, "chunks": shas,
                "sources": {k: int(len(v)) for k, v in rows.items()}}
    _write_json(os.path.join(directory, "manifest.json"), manifest)


def ensure(directory: str, fp: str, parts: Mapping, sources: Mapping[str, Any], forward, *,
           rebuild: bool = False) -> TextFeatureCache:
    """The cache of `fp` in `directory`, built or repaired first when needed (a damaged or
    unfinished one is reported and rebuilt, reusing its intact chunks)."""
    if not rebuild:
        try:
            return load(directory, fp)
        except TextCacheError as e:
            if os.path.exists(directory):
                log.warning("text cache: %s; rebuilding", e)
    build(directory, fp, parts, sources, forward, rebuild=rebuild)
    return load(directory, fp)
