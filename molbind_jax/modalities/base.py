"""What one modality must provide at run time: the `ModalitySpec` contract.

A spec has two halves. The host half is numpy only (the input pipeline imports no JAX): the
padded sizes of a stored record (`sizes`, one per size key of the table), how many stored
variants it has (`num_choices`, e.g. conformers), and `collate`, the ONE producer of the
modality's typed batch, used by training, synthetic data, evaluation and the API alike. The
model half imports JAX lazily: the tower's config (`tower_config`), building the tower and its
projection head (`build`), the forward pass to projected rows (`embed`), pretrained
initialisation from the original's files (`init_from`) and the files an export carries
(`export_files`).

Batches are NamedTuples (JAX treats them as pytrees without registration, and their fields
are the documented contract). A pair type's batch is `PairBatch(x, y, mask, x_key, y_key)`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from molbind_data import schema

Record = Mapping[str, Any]


class PairBatch(NamedTuple):
    """One pair type's batch. `x`, `y`: the two modalities' typed batches in the pair's
    orientation, each holding the same B examples in the same order (a graph batch holds them
    in shards of B/S); `mask` [B] bool: False on rows that only pad the batch.

    `x_key`, `y_key` [B] int32: what each row's x and y side IS (`identity_key`: a 31-bit hash
    of the modality's identity, e.g. the canonical SMILES, the normalised text, the protein
    target), so that the duplicate-aware loss does not treat another row holding the same
    molecule, text or protein as a negative. A negative key (padding rows, records with no
    identity) matches nothing. `collate_pair` always fills them; None (a batch built by hand)
    means no identities: the loss masks no duplicates."""

    x: Any
    y: Any
    mask: np.ndarray
    x_key: Any = None
    y_key: Any = None


NO_KEY = -1  # identity key of a row that matches no other row (padding, unknown identity)


def identity_key(identity: str) -> int:
    """An identity string -> a stable non-negative 31-bit int (blake2b: the same on every host
    and run); "" gives NO_KEY. Two different identities share a key with probability 2^-31 per
    pair of rows: at worst one extra negative is left out of a softmax."""
    if not identity:
        return NO_KEY
    digest = hashlib.blake2b(identity.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def round_up(x, multiple: int):
    return -(-np.asarray(x) // multiple) * multiple


def choose_bucket(size: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= size. Raises ValueError when size exceeds every bucket."""
    for b in sorted(buckets):
        if b >= size:
            return int(b)
    raise ValueError(f"size {size} exceeds the largest bucket {max(buckets) if len(buckets) else None}; "
                     f"pass larger buckets (suggest_buckets derives them from the data)")


class ModalitySpec:
    """Base class; subclasses set the class attributes and implement the methods."""

    name: str = ""
    # Padded size of a dimension when no bucket is given: the need rounded up to this (the
    # original's Uni-Mol collater pads to a multiple of 8).
    pad_multiple: int = 8
    # Bucket sizes the API pads to per size key (None: powers of two), so that embedding any
    # number of inputs compiles a handful of shapes.
    inference_buckets: Mapping[str, tuple[int, ...] | None] = {}
    # Size keys whose padded size is a per-shard budget, the sum over the shard's rows plus a
    # fixed extra (a graph's nodes: + the padding graph's node), instead of the longest row.
    packed: Mapping[str, int] = {}
    # The tower: MolBindConfig key of its config, and the MolBind attributes holding the
    # encoder and the projection head (named as the original's modules where it has them).
    config_key: str = ""
    encoder_attr: str = ""
    head_attr: str = ""
    # The NamedTuple type of the modality's batch (what `collate` returns and `embed` takes);
    # MolBind.embed refuses anything else with a clear error. None: not checked.
    batch_type: type | None = None
    # A second batch type `embed` takes: the tower's cached output, to which only the head
    # applies (text: TextFeatures, from training/text_cache.py). None: none.
    feature_type: type | None = None

    # ------------------------------------------------------------------ table entries
    @property
    def schema(self) -> schema.Modality:
        return schema.modality(self.name)

    @property
    def size_keys(self) -> tuple[str, ...]:
        return self.schema.size_keys

    def identity(self, record: Record) -> str:
        """What the row is (rows with equal identities are the same molecule / text / protein);
        the record id when the identity field is empty."""
        value = record.get(self.schema.identity, "")
        value = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if self.schema.identity == "text":
            value = " ".join(value.split())
        if value:
            return value
        rid = record.get("id", "")
        return "id:" + (rid.decode("utf-8") if isinstance(rid, bytes) else str(rid))

    def identity_key(self, record: Record) -> int:
        """The row's key for the duplicate-aware loss (`PairBatch.x_key`): `identity_key` of
        the identity field, text lowercased as well as whitespace-collapsed (the same words in
        another case are the same description); without it, of the record id (unique: the row
        matches only itself); with neither, NO_KEY (matches nothing)."""
        value = record.get(self.schema.identity, "")
        value = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if self.schema.identity == "text":
            value = " ".join(value.lower().split())
        if value:
            return identity_key(value)
        rid = record.get("id", "")
        rid = rid.decode("utf-8") if isinstance(rid, bytes) else str(rid)
        return identity_key("id:" + rid) if rid else NO_KEY

    # ------------------------------------------------------------------ host side (numpy)
    def sizes(self, record: Record) -> dict[str, int]:
        """{size key: size} of one stored record; ValueError when the record is malformed."""
        raise NotImplementedError

    def num_choices(self, record: Record) -> int:
        """Stored variants to choose from (conformers); 1 for most modalities."""
        return 1

    def default_shape(self, key: str, needed: int, buckets: Mapping[str, Sequence[int]] | None = None) -> int:
        if buckets is not None and key in buckets:
            return choose_bucket(needed, buckets[key])
        return max(int(round_up(needed, self.pad_multiple)), self.pad_multiple)

    def needed(self, records: Sequence[Record], num_shards: int = 1) -> dict[str, int]:
        """The padded size each key needs for these records (graph budgets per shard)."""
        out: dict[str, int] = {}
        for r in records:
            for k, v in self.sizes(r).items():
                out[k] = max(out.get(k, 0), v)
        return out

    def collate(self, records: Sequence[Record], shapes: Mapping[str, int], *, num_shards: int = 1,
                choices: Sequence[int] | None = None):
        """Records -> this modality's typed batch, padded to `shapes` (every size key given)."""
        raise NotImplementedError

    def check_batch(self, batch, tower_config) -> None:
        """Raises ValueError when a host batch cannot be right for this tower (e.g. token ids
        beyond its table, which a gather on device would clamp silently). Default: no check."""

    def synthetic(self, mol: Mapping[str, Any], *, text_vocab: int) -> dict[str, Any]:
        """Stored-record fields of a pseudo-molecule (data/synthetic.py) for smoke runs."""
        raise NotImplementedError

    def synthetic_shapes(self, rows_per_shard: int) -> dict[str, int]:
        """Fixed padded sizes of synthetic batches (one program for the whole smoke run)."""
        raise NotImplementedError

    def baseline_features(self, record: Record) -> dict[str, Any]:
        """What non-learned baselines may read from this side of a record (evaluation/
        baselines.py): "smiles", "text" (strings), "composition" (element counts),
        "heavy_atoms" (an atom count). Default: nothing."""
        return {}

    # ------------------------------------------------------------------ model side (JAX)
    def tower_config(self, preset: str):
        """The tower config dataclass of a MolBindConfig preset ("tiny" or "original")."""
        raise NotImplementedError

    def build(self, tower_config, *, dtype, rngs):
        """The encoder nnx module."""
        raise NotImplementedError

    def build_head(self, tower_config, *, embed_dim: int, dtype, rngs):
        """The projection head nnx module (encoder width -> embed_dim)."""
        raise NotImplementedError

    def embed(self, model, batch, *, train: bool):
        """Projected rows [B, embed_dim] (before L2 normalisation) of a typed batch."""
        raise NotImplementedError

    # Pretrained initialisation (training/pretrained.py): the importer module in
    # molbind_jax/convert whose strict `assign` copies a state dict into the encoder, and the
    # key a torch file wraps its state dict in (None: a plain state dict).
    init_importer: str | None = None
    init_subkey: str | None = None

    def resolve_init(self, value: str) -> str:
        """The checked path of `init.<modality>` (a file by default); raises with the reason."""
        import os

        if not self.init_importer:
            raise ValueError(f"modality {self.name!r} has no pretrained importer; list it in init.scratch")
        if not os.path.isfile(value):
            raise FileNotFoundError("no such file")
        return value

    def pretrained_state(self, path: str) -> dict:
        """The state dict (numpy arrays) of a pretrained file, read without running code."""
        from molbind_jax.convert.common import load_state_dict

        return load_state_dict(path, subkey=self.init_subkey)

    def export_files(self, model_config, directory: str, *, context: Mapping[str, Any]) -> dict[str, Any]:
        """Writes the files inference needs besides the weights (tokenizer, dictionaries) into
        `directory`; returns what config.json records about them."""
        return {}


def tower_config_to_dict(cfg) -> dict:
    """A tower config dataclass -> JSON-ready dict (dtypes as names, tuples as lists)."""
    import jax.numpy as jnp

    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("dtype", "param_dtype"):
            v = jnp.dtype(v).name
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def tower_config_replace(base, d: Mapping[str, Any]):
    """`base` with the fields named in `d` replaced (unknown names are an error)."""
    import jax.numpy as jnp

    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {type(base).__name__} field(s) {unknown}; known: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        if k in ("dtype", "param_dtype"):
            v = jnp.dtype(v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[k] = v
    return dataclasses.replace(base, **kw)
