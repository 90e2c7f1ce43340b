"""MolBind: four encoders and their projection heads in one NNX module (spec sections 0 and 2).

    text      ids, mask     -> BertEncoder   -> [CLS] row        -> text_proj (Linear)      -> L2
    graph     graph_* batch -> GIN           -> mean per graph   -> graph_proj (LN, Linear) -> L2
    conformer tokens,coords -> UniMolEncoder -> mean over atoms  -> conf_proj (LN, Linear)  -> L2
    pocket    tokens,coords -> UniMolEncoder -> mean over atoms  -> pro_proj (LN, Linear)   -> L2

One conformer encoder (with its head) serves every conformer input: the 3D side of
conformer_text, graph_conformer and the ligand of conformer_pocket (spec section 2). All
embeddings are float32 [B, embed_dim] rows in example order, L2-normalised as in the
original's training path (its evaluation skips the normalisation, spec bug 2; we do not).

Uni-Mol pooling: "atoms" (default) averages the real positions ([CLS], atoms, [SEP]) and does
not depend on padding; "original" reproduces the original's mean over its collater's padded
length (spec 1b), computed from our bucket padding by `heads.unimol_mean_pool`. Under jit
on a sharded batch the "original" length is the max over the GLOBAL batch, whereas the
original used each GPU's own batch: the two agree on one device.

Parameter names follow the original's top-level layout (`graph_encoder`, `text_encoder` for
`Qformer.bert`, `conformer_encoder` for `conf_encoder`, `pocket_encoder` for `pro_encoder`,
heads whose `norm` is `ln_graph`/`ln_conf`/`ln_pro` and whose `proj` is `*_proj`), so that
`convert/molbind.py` maps keys one to one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import jraph
from flax import nnx

from molbind_jax.models.bert import BertConfig, BertEncoder
from molbind_jax.models.gin import GIN, GINConfig
from molbind_jax.models.heads import POOLING_MODES, ProjectionHead, l2_normalize, text_cls_pool, unimol_mean_pool
from molbind_jax.models.unimol import UniMolConfig, UniMolEncoder, pair_inputs

# Pair type -> (x modality, y modality), in the loss's orientation.
PAIR_MODALITIES = {
    "graph_text": ("graph", "text"),
    "conformer_text": ("conformer", "text"),
    "graph_conformer": ("graph", "conformer"),
    "conformer_pocket": ("conformer", "pocket"),
}
PAIRS = tuple(PAIR_MODALITIES)
GRAPH_KEYS = ("graph_nodes", "graph_edges", "graph_senders", "graph_receivers", "graph_n_node", "graph_n_edge")
_SUB_CONFIGS = {"bert": BertConfig, "gin": GINConfig, "conformer": UniMolConfig, "pocket": UniMolConfig}
_DTYPE_FIELDS = ("dtype", "param_dtype")


def _sub_to_dict(cfg) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in _DTYPE_FIELDS:
            v = jnp.dtype(v).name
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _sub_from_dict(base, d: Mapping[str, Any]):
    """`base` (a sub-config instance) with the fields given in `d` replaced."""
    cls = type(base)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        if k in _DTYPE_FIELDS:
            v = jnp.dtype(v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[k] = v
    return dataclasses.replace(base, **kw)


@dataclasses.dataclass(frozen=True)
class MolBindConfig:
    """Sizes of the four towers and the shared embedding.

    `dtype` is the matmul dtype of every tower ("float32" or "bfloat16"); it overrides the
    sub-configs' own dtype when the model is built. Parameters, LayerNorms, softmaxes, pooling
    and the returned embeddings are float32 whatever it is.
    """

    bert: BertConfig = dataclasses.field(default_factory=lambda: BertConfig.scibert(vocab_size=31091))
    gin: GINConfig = dataclasses.field(default_factory=GINConfig)
    conformer: UniMolConfig = dataclasses.field(default_factory=UniMolConfig.molecule)
    pocket: UniMolConfig = dataclasses.field(default_factory=UniMolConfig.pocket)
    embed_dim: int = 512
    unimol_pooling: str = "atoms"
    dtype: str = "float32"

    def __post_init__(self):
        if self.unimol_pooling not in POOLING_MODES:
            raise ValueError(f"unimol_pooling must be one of {POOLING_MODES}, got {self.unimol_pooling!r}")
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype}")

    @classmethod
    def tiny(cls, **overrides) -> "MolBindConfig":
        """Test-sized towers (seconds on a CPU); vocabularies as the real dictionaries."""
        kw = dict(
            bert=BertConfig.tiny(use_token_type=False, dropout=0.0, attention_dropout=0.0),
            gin=GINConfig.tiny(),
            conformer=UniMolConfig.tiny(vocab_size=31),
            pocket=UniMolConfig.tiny(vocab_size=10),
            embed_dim=16,
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def original(cls, **overrides) -> "MolBindConfig":
        """The original's sizes (spec): SciBERT text tower without token types and with the
        Q-Former's extra [DEC] row (31091), 5x300 GIN with (0,0) self-loops, 15x512 Uni-Mol
        towers (mol V=31, pocket V=10), 512-d embeddings, the original padded-mean pooling."""
        kw = dict(
            bert=BertConfig.scibert(vocab_size=31091),
            gin=GINConfig(),
            conformer=UniMolConfig.molecule(),
            pocket=UniMolConfig.pocket(),
            embed_dim=512,
            unimol_pooling="original",
        )
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict:
        """JSON-ready dict (dtypes as names, tuples as lists); inverse of `from_dict`."""
        out = {name: _sub_to_dict(getattr(self, name)) for name in _SUB_CONFIGS}
        out.update(embed_dim=self.embed_dim, unimol_pooling=self.unimol_pooling, dtype=self.dtype)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: "MolBindConfig | None" = None) -> "MolBindConfig":
        """From `to_dict` output, or a partial dict (e.g. `ConfigDict.to_dict()`) applied on top
        of `base` (default: `MolBindConfig()`, the original sizes): top-level fields replace
        base's, a sub-config given as a dict replaces only the fields it names, e.g.
        `MolBindConfig.from_dict({"gin": {"num_layers": 3}}, base=MolBindConfig.tiny())`."""
        base = cls() if base is None else base
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown MolBindConfig field(s) {unknown}")
        for name in _SUB_CONFIGS:
            if name in d and isinstance(d[name], Mapping):
                d[name] = _sub_from_dict(getattr(base, name), d[name])
        return dataclasses.replace(base, **d)


def _finish(projected, normalize: bool):
    """float32 rows, L2-normalised as in the original's training path; `normalize=False` gives
    the raw projections that the original's evaluation ranks (spec section 4, bug 2)."""
    return l2_normalize(projected) if normalize else projected.astype(jnp.float32)


class MolBind(nnx.Module):
    """The four towers and heads; every `embed_*` returns float32 [B, embed_dim] rows,
    L2-normalised unless `normalize=False` (the original's evaluation features)."""

    def __init__(self, config: MolBindConfig, *, rngs: nnx.Rngs):
        self.config = config
        dt = jnp.dtype(config.dtype)
        bert = dataclasses.replace(config.bert, dtype=dt)
        gin = dataclasses.replace(config.gin, dtype=dt)
        conf = dataclasses.replace(config.conformer, dtype=dt)
        pocket = dataclasses.replace(config.pocket, dtype=dt)
        e = config.embed_dim
        self.text_encoder = BertEncoder(bert, rngs=rngs)
        self.graph_encoder = GIN(gin, rngs=rngs)
        self.conformer_encoder = UniMolEncoder(conf, rngs=rngs)
        self.pocket_encoder = UniMolEncoder(pocket, rngs=rngs)
        self.text_proj = ProjectionHead(bert.hidden_size, e, layer_norm=False, rngs=rngs, dtype=dt)
        self.graph_proj = ProjectionHead(gin.emb_dim, e, layer_norm=True, rngs=rngs, dtype=dt)
        self.conf_proj = ProjectionHead(conf.embed_dim, e, layer_norm=True, rngs=rngs, dtype=dt)
        self.pro_proj = ProjectionHead(pocket.embed_dim, e, layer_norm=True, rngs=rngs, dtype=dt)

    # ------------------------------------------------------------------ single modalities
    def embed_text(self, ids, mask, *, train: bool = False, normalize: bool = True):
        """ids, mask [B, L] -> [B, E] from the first ([CLS]) position, no LayerNorm."""
        hidden = self.text_encoder(jnp.asarray(ids), jnp.asarray(mask), train=train)
        return _finish(self.text_proj(text_cls_pool(hidden)), normalize)

    def embed_graph(self, batch: Mapping[str, Any], *, train: bool = False, normalize: bool = True):
        """The graph_* arrays of DESIGN.md section 2 ([S, ...] with one padding graph last in
        each shard) -> [B, E] with B = S * G, in example order (shard s holds examples
        s*G .. s*G+G-1); the padding graphs are dropped. In train mode the GIN BatchNorm uses
        the statistics of all real nodes and updates its running statistics."""
        missing = [k for k in GRAPH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"graph batch lacks {missing}")
        graph = jraph.GraphsTuple(
            nodes=jnp.asarray(batch["graph_nodes"]), edges=jnp.asarray(batch["graph_edges"]),
            senders=jnp.asarray(batch["graph_senders"]), receivers=jnp.asarray(batch["graph_receivers"]),
            n_node=jnp.asarray(batch["graph_n_node"]), n_edge=jnp.asarray(batch["graph_n_edge"]),
            globals=None,
        )
        if graph.nodes.ndim != 3:
            raise ValueError(f"graph_nodes must be [S, Nn, 2] (shard axis first), got shape {graph.nodes.shape}")
        _, graph_rep = self.graph_encoder(graph, train=train)  # [S, G+1, D]
        s, g1, d = graph_rep.shape
        rows = graph_rep[:, :-1].reshape(s * (g1 - 1), d)
        return _finish(self.graph_proj(rows), normalize)

    def _embed_3d(self, encoder, head, tokens, coords, train, normalize):
        tokens = jnp.asarray(tokens)
        distance, edge_type = pair_inputs(tokens, coords, encoder.config.vocab_size)
        rep = encoder(tokens, distance, edge_type, train=train)
        return _finish(head(unimol_mean_pool(rep, tokens, mode=self.config.unimol_pooling)), normalize)

    def embed_conformer(self, tokens, coords, *, train: bool = False, normalize: bool = True):
        """Molecule dictionary tokens [B, N] (0 = pad) and coordinates [B, N, 3] -> [B, E]."""
        return self._embed_3d(self.conformer_encoder, self.conf_proj, tokens, coords, train, normalize)

    def embed_pocket(self, tokens, coords, *, train: bool = False, normalize: bool = True):
        """Pocket dictionary tokens [B, M] and coordinates [B, M, 3] -> [B, E]."""
        return self._embed_3d(self.pocket_encoder, self.pro_proj, tokens, coords, train, normalize)

    def embed_modality(self, modality: str, batch: Mapping[str, Any], *, train: bool = False,
                       normalize: bool = True):
        """One modality's rows of a pair batch (DESIGN.md section 2 keys) -> [B, E]."""
        kw = dict(train=train, normalize=normalize)
        if modality == "graph":
            return self.embed_graph(batch, **kw)
        if modality == "text":
            return self.embed_text(batch["text_ids"], batch["text_mask"], **kw)
        if modality == "conformer":
            return self.embed_conformer(batch["conformer_tokens"], batch["conformer_coords"], **kw)
        if modality == "pocket":
            return self.embed_pocket(batch["pocket_tokens"], batch["pocket_coords"], **kw)
        raise ValueError(f"unknown modality {modality!r}; expected graph, text, conformer or pocket")

    # ------------------------------------------------------------------------- pair types
    def pair_embeddings(self, pair: str, batch: Mapping[str, Any], *, train: bool = False):
        """(x, y, mask) of one pair type's batch, in the loss's orientation:
        graph_text (graph, text), conformer_text (conformer, text), graph_conformer
        (graph, conformer), conformer_pocket (ligand conformer, pocket). mask is the batch's
        pair_mask (all True when absent)."""
        if pair not in PAIR_MODALITIES:
            raise ValueError(f"unknown pair type {pair!r}; expected one of {PAIRS}")
        x, y = (self.embed_modality(m, batch, train=train) for m in PAIR_MODALITIES[pair])
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{pair}: {x.shape[0]} rows on the x side but {y.shape[0]} on the y side "
                             "(graph shards must hold B/S graphs each)")
        mask = batch.get("pair_mask")
        mask = jnp.ones((x.shape[0],), bool) if mask is None else jnp.asarray(mask).astype(bool)
        return x, y, mask
