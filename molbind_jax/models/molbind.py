"""MolBind: one encoder and one projection head per modality in one NNX module (spec 0 and 2).

The modalities come from the table (data_pipeline/schema.py); each one's runtime spec
(molbind_jax/modalities/) builds its tower and head and runs them. With the four original
modalities:

    text      TextBatch   -> BertEncoder   -> [CLS] row        -> text_proj (Linear)      -> L2
    graph     GraphBatch  -> GIN           -> mean per graph   -> graph_proj (LN, Linear) -> L2
    conformer AtomsBatch  -> UniMolEncoder -> mean over atoms  -> conf_proj (LN, Linear)  -> L2
    pocket    AtomsBatch  -> UniMolEncoder -> mean over atoms  -> pro_proj (LN, Linear)   -> L2

One conformer encoder (with its head) serves every conformer input: the 3D side of
conformer_text, graph_conformer and the ligand of conformer_pocket (spec section 2). All
embeddings are float32 [B, embed_dim] rows in example order, L2-normalised as in the
original's training path unless `normalize=False` (its evaluation skips the normalisation,
spec bug 2).

Uni-Mol pooling: "atoms" (default) averages the real positions ([CLS], atoms, [SEP]) and does
not depend on padding; "original" reproduces the original's mean over its collater's padded
length (spec 1b), computed from our bucket padding by `heads.unimol_mean_pool`. Under jit
on a sharded batch the "original" length is the max over the GLOBAL batch, whereas the
original used each GPU's own batch: the two agree on one device.

Attribute names follow the original's top-level layout (`graph_encoder`, `text_encoder` for
`Qformer.bert`, `conformer_encoder` for `conf_encoder`, `pocket_encoder` for `pro_encoder`,
heads whose `norm` is `ln_graph`/`ln_conf`/`ln_pro` and whose `proj` is `*_proj`), so that
`convert/molbind.py` maps keys one to one; each spec names its own.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax.numpy as jnp
from flax import nnx

from molbind_data import schema
from molbind_jax.models.heads import POOLING_MODES, l2_normalize
from molbind_jax.modalities import PairBatch, spec
from molbind_jax.modalities.base import tower_config_replace, tower_config_to_dict

ORIGINAL_MODALITIES = schema.ORIGINAL_MODALITIES
_TOP = ("embed_dim", "unimol_pooling", "dtype", "modalities")


class MolBindConfig:
    """Sizes of the towers (one per modality) and the shared embedding; immutable.

    `towers` maps each modality to its tower config (e.g. `BertConfig` for text); they are
    also reachable by the spec's config key (`config.bert`, `config.gin`, `config.conformer`,
    `config.pocket`). `modalities` fixes which towers the model has (default: the original
    four). `dtype` is the matmul dtype of every tower ("float32" or "bfloat16"); parameters,
    LayerNorms, softmaxes, pooling and the returned embeddings are float32 whatever it is.
    A modality without a given tower config gets its spec's config of `preset`.
    """

    def __init__(self, towers: Mapping[str, Any] | None = None, *, modalities: Iterable[str] | None = None,
                 embed_dim: int = 512, unimol_pooling: str = "atoms", dtype: str = "float32",
                 preset: str = "original", **tower_configs):
        modalities = tuple(modalities or (tuple(towers) if towers else ORIGINAL_MODALITIES))
        for m in modalities:
            schema.modality(m)  # unknown names list the known ones
        by_key = {spec(m).config_key: m for m in modalities}
        given = dict(towers or {})
        for k, v in tower_configs.items():
            if k not in by_key and k not in modalities:
                raise ValueError(f"unknown MolBindConfig field {k!r}; tower keys: {sorted(by_key)}, "
                                 f"other fields: {list(_TOP)}")
            given[by_key.get(k, k)] = v
        unknown = sorted(set(given) - set(modalities))
        if unknown:
            raise ValueError(f"tower configs for modalities the model does not have: {unknown} "
                             f"(modalities: {modalities})")
        if unimol_pooling not in POOLING_MODES:
            raise ValueError(f"unimol_pooling must be one of {POOLING_MODES}, got {unimol_pooling!r}")
        dtype = jnp.dtype(dtype).name
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        towers_t = tuple((m, given[m] if m in given else spec(m).tower_config(preset)) for m in modalities)
        for name, value in (("towers", towers_t), ("modalities", modalities), ("embed_dim", int(embed_dim)),
                            ("unimol_pooling", unimol_pooling), ("dtype", dtype), ("preset", preset)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError("MolBindConfig is immutable; use .replace(...)")

    def __getattr__(self, name: str):
        # Tower configs by the spec's config key (config.bert, config.gin, ...).
        towers = self.__dict__.get("towers", ())
        for m, cfg in towers:
            if spec(m).config_key == name or m == name:
                return cfg
        raise AttributeError(f"MolBindConfig has no {name!r} (modalities: {self.__dict__.get('modalities')})")

    def tower(self, modality: str):
        return dict(self.towers)[modality] if modality in self.modalities else getattr(self, modality)

    def _key(self):
        return (self.towers, self.embed_dim, self.unimol_pooling, self.dtype)

    def __eq__(self, other):
        return isinstance(other, MolBindConfig) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        towers = ", ".join(f"{spec(m).config_key}={c!r}" for m, c in self.towers)
        return (f"MolBindConfig({towers}, embed_dim={self.embed_dim}, unimol_pooling={self.unimol_pooling!r}, "
                f"dtype={self.dtype!r})")

    def replace(self, **changes) -> "MolBindConfig":
        """A copy with fields (embed_dim, ..., or whole tower configs by key) replaced."""
        kw = dict(towers=dict(self.towers), modalities=self.modalities, embed_dim=self.embed_dim,
                  unimol_pooling=self.unimol_pooling, dtype=self.dtype, preset=self.preset)
        by_key = {spec(m).config_key: m for m in self.modalities}
        for k, v in changes.items():
            if k in by_key or k in kw["towers"]:
                kw["towers"][by_key.get(k, k)] = v
            elif k in kw:
                kw[k] = v
            else:
                raise ValueError(f"unknown MolBindConfig field {k!r}; tower keys: {sorted(by_key)}, "
                                 f"other fields: {list(_TOP)}")
        if "modalities" in changes:
            kw["towers"] = {m: c for m, c in kw["towers"].items() if m in kw["modalities"]}
        return MolBindConfig(**kw)

    @classmethod
    def tiny(cls, **overrides) -> "MolBindConfig":
        """Test-sized towers (seconds on a CPU); vocabularies as the real dictionaries."""
        kw = dict(embed_dim=16, preset="tiny")
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def original(cls, **overrides) -> "MolBindConfig":
        """The original's sizes (spec): SciBERT text tower without token types and with the
        Q-Former's extra [DEC] row (31091), 5x300 GIN with (0,0) self-loops, 15x512 Uni-Mol
        towers (mol V=31, pocket V=10), 512-d embeddings, the original padded-mean pooling."""
        kw = dict(embed_dim=512, unimol_pooling="original", preset="original")
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict:
        """JSON-ready dict (dtypes as names, tuples as lists); inverse of `from_dict`."""
        out = {spec(m).config_key: tower_config_to_dict(c) for m, c in self.towers}
        out.update(modalities=list(self.modalities), embed_dim=self.embed_dim,
                   unimol_pooling=self.unimol_pooling, dtype=self.dtype)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: "MolBindConfig | None" = None) -> "MolBindConfig":
        """From `to_dict` output, or a partial dict (e.g. `ConfigDict.to_dict()`) applied on top
        of `base` (default: `MolBindConfig()`, the original sizes): top-level fields replace
        base's, a tower given as a dict replaces only the fields it names, e.g.
        `MolBindConfig.from_dict({"gin": {"num_layers": 3}}, base=MolBindConfig.tiny())`. A
        dict without `modalities` (older exports) keeps base's."""
        base = cls() if base is None else base
        d = dict(d)
        modalities = tuple(d.pop("modalities", None) or base.modalities)
        towers = {}
        for m in modalities:
            s = spec(m)
            start = dict(base.towers).get(m) or s.tower_config(base.preset)
            value = d.pop(s.config_key, None)
            if value is None:
                towers[m] = start
            elif isinstance(value, Mapping):
                towers[m] = tower_config_replace(start, value)
            else:
                towers[m] = value
        unknown = sorted(set(d) - set(_TOP))
        if unknown:
            keys = sorted(spec(m).config_key for m in modalities)
            raise ValueError(f"unknown MolBindConfig field(s) {unknown}; tower keys of modalities {modalities}: "
                             f"{keys}, other fields: {list(_TOP)}")
        kw = dict(embed_dim=base.embed_dim, unimol_pooling=base.unimol_pooling, dtype=base.dtype)
        kw.update(d)
        return cls(towers, modalities=modalities, preset=base.preset, **kw)


def _finish(projected, normalize: bool):
    """float32 rows, L2-normalised as in the original's training path; `normalize=False` gives
    the raw projections that the original's evaluation ranks (spec section 4, bug 2)."""
    return l2_normalize(projected) if normalize else projected.astype(jnp.float32)


class MolBind(nnx.Module):
    """One tower and head per modality of `config`; `embed` returns float32 [B, embed_dim]
    rows, L2-normalised unless `normalize=False` (the original's evaluation features)."""

    def __init__(self, config: MolBindConfig, *, rngs: nnx.Rngs):
        self.config = config
        dt = jnp.dtype(config.dtype)
        # Every encoder, then every head (the parameter order of the original four-tower model,
        # so that a seed gives the same initial weights as before the table existed).
        for m in config.modalities:
            setattr(self, spec(m).encoder_attr, spec(m).build(config.tower(m), dtype=dt, rngs=rngs))
        for m in config.modalities:
            setattr(self, spec(m).head_attr,
                    spec(m).build_head(config.tower(m), embed_dim=config.embed_dim, dtype=dt, rngs=rngs))

    def embed(self, modality: str, batch, *, train: bool = False, normalize: bool = True):
        """A modality's typed batch -> [B, E] in example order."""
        if modality not in self.config.modalities:
            raise ValueError(f"this model has no {modality!r} tower (modalities: {self.config.modalities})")
        s = spec(modality)
        if (s.batch_type is not None and not isinstance(batch, s.batch_type)
                and not (s.feature_type is not None and isinstance(batch, s.feature_type))):
            raise TypeError(f"the {modality} tower takes a {s.batch_type.__name__}({', '.join(s.batch_type._fields)}) "
                            f"(ModalitySpec.collate makes one), got {type(batch).__name__}")
        return _finish(s.embed(self, batch, train=train), normalize)

    def pair_embeddings(self, pair: str, batch: PairBatch, *, train: bool = False):
        """(x, y, mask) of one pair type's batch, in the loss's orientation (the table's
        x and y); mask is the batch's pair mask as bool."""
        p = schema.pair_type(pair)
        x = self.embed(p.x, batch.x, train=train)
        y = self.embed(p.y, batch.y, train=train)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{pair}: {x.shape[0]} rows on the x side but {y.shape[0]} on the y side "
                             "(graph shards must hold B/S graphs each)")
        return x, y, jnp.asarray(batch.mask).astype(bool)

    # Convenience for the original four (tests, importers and the comparison harness).
    def embed_text(self, ids, mask, *, train: bool = False, normalize: bool = True):
        from molbind_jax.modalities.text import TextBatch

        return self.embed("text", TextBatch(ids, mask), train=train, normalize=normalize)

    def embed_graph(self, batch, *, train: bool = False, normalize: bool = True):
        return self.embed("graph", batch, train=train, normalize=normalize)

    def embed_conformer(self, tokens, coords, *, train: bool = False, normalize: bool = True):
        from molbind_jax.modalities.atoms import AtomsBatch

        return self.embed("conformer", AtomsBatch(tokens, coords), train=train, normalize=normalize)

    def embed_pocket(self, tokens, coords, *, train: bool = False, normalize: bool = True):
        from molbind_jax.modalities.atoms import AtomsBatch

        return self.embed("pocket", AtomsBatch(tokens, coords), train=train, normalize=normalize)
