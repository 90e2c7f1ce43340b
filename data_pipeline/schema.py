"""The table of modalities and pair types: the one place that says what exists.

Everything that enumerates modalities or pair types iterates these two tables: the TFDS
builders (one config per stored pair type, features from its modalities), the sources (each
declares the pair types it provides), the input pipeline (sizes, buckets, collation through the
modality's runtime spec), the model (one tower and head per modality), the train step and the
configs (per-pair weights, batch sizes, frequencies), evaluation, baselines, the API and the
export. Pure Python: `data_pipeline` imports no JAX, so the JAX side of a modality is named
here by module path (`runtime`) and imported only where it runs.

A modality is a kind of input with its own tower: what its stored records hold (`stored`),
which padded dimensions its batches have (`size_keys`, one bucket set each), which stored field
says what a row *is* (`identity`: rows with the same identity are the same molecule, text or
protein, which evaluation counts as equally correct answers), and its runtime spec module
(`molbind_jax.modalities.<name>`: collation, synthetic records, tower, head, pretrained
initialisation, export artefacts).

A pair type names two modalities in the loss's orientation (x, y). Most pair types are built
into a TFDS config of their own; a *view* (`records_of`) reads another pair type's stored
records instead, when every field it needs is already there (e.g. a SMILES modality read from
the `smiles` field of graph_text records).

See docs/extending.md for adding a modality, a pair type or a data source.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

# ----------------------------------------------------------------------------- types


@dataclasses.dataclass(frozen=True)
class Feature:
    """One stored field: `dtype` is "text" (a string), "int32" or "float32"; `shape` uses None
    for a variable dimension (TFDS Tensor shape)."""

    name: str
    dtype: str
    shape: tuple = ()
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class Modality:
    name: str
    stored: tuple[Feature, ...]
    size_keys: tuple[str, ...]
    identity: str
    runtime: str
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class PairType:
    name: str
    x: str
    y: str
    doc: str = ""
    records_of: str | None = None  # a view: read this pair type's stored records

    @property
    def modalities(self) -> tuple[str, str]:
        return (self.x, self.y)

    @property
    def stored_as(self) -> str:
        """The pair type whose TFDS config holds this pair's records."""
        return self.records_of or self.name


# Fields every stored record has, whatever its pair type.
COMMON = (
    Feature("id", "text", doc="record key, unique within its split"),
    Feature("smiles", "text", doc="canonical SMILES of the molecule (the ligand for pockets); '' if unknown"),
)

# ----------------------------------------------------------------------------- the tables

MODALITIES: dict[str, Modality] = {m.name: m for m in (
    Modality(
        "text",
        stored=(Feature("text", "text", doc="normalised text (whitespace collapsed)"),
                Feature("text_ids", "int32", (None,), doc="word-piece ids, [CLS] ... [SEP], at most 256")),
        size_keys=("text",), identity="text", runtime="molbind_jax.modalities.text",
        doc="natural-language description, BERT tower, [CLS] row"),
    Modality(
        "graph",
        stored=(Feature("graph_node_feat", "int32", (None, 2), doc="[atomic number - 1, chirality]"),
                Feature("graph_edge_index", "int32", (2, None), doc="senders, receivers; both directions"),
                Feature("graph_edge_feat", "int32", (None, 2), doc="[bond type, bond direction]")),
        size_keys=("graph_nodes", "graph_edges"), identity="smiles", runtime="molbind_jax.modalities.graph",
        doc="2D molecular graph, GIN tower, mean over nodes"),
    Modality(
        "conformer",
        stored=(Feature("conformer_tokens", "int32", (None,), doc="molecule dictionary ids, [CLS] atoms [SEP]"),
                Feature("conformer_coords", "float32", (None, None, 3), doc="[conformers, atoms, 3], centred")),
        size_keys=("conformer",), identity="smiles", runtime="molbind_jax.modalities.conformer",
        doc="3D conformation, Uni-Mol tower (molecule dictionary)"),
    Modality(
        "pocket",
        stored=(Feature("pocket_tokens", "int32", (None,), doc="pocket dictionary ids, [CLS] atoms [SEP]"),
                Feature("pocket_coords", "float32", (None, 3), doc="[atoms, 3], centred"),
                Feature("target", "text", doc="protein (target) name: pockets of one protein share it")),
        size_keys=("pocket",), identity="target", runtime="molbind_jax.modalities.pocket",
        doc="3D protein pocket, Uni-Mol tower (pocket dictionary)"),
    Modality(
        "smiles",
        stored=(),  # the common `smiles` field, tokenised when collated
        size_keys=("smiles",), identity="smiles", runtime="molbind_jax.modalities.smiles",
        doc="SMILES string, atom-level tokens through a small Transformer, mean over tokens"),
)}

PAIR_TYPES: dict[str, PairType] = {p.name: p for p in (
    PairType("graph_text", "graph", "text", "2D molecular graphs paired with text descriptions."),
    PairType("conformer_text", "conformer", "text", "3D conformations paired with text descriptions."),
    PairType("graph_conformer", "graph", "conformer", "2D graphs paired with 3D conformations of the same molecule."),
    PairType("conformer_pocket", "conformer", "pocket", "Ligand conformations paired with the protein pocket they bind."),
    PairType("smiles_text", "smiles", "text", "SMILES strings paired with text descriptions.",
             records_of="graph_text"),
    PairType("smiles_graph", "smiles", "graph", "SMILES strings paired with the 2D graph of the same molecule.",
             records_of="graph_text"),
)}

# What the original MolBind trains: the defaults of every config, step and model. A pair type or
# modality added to the tables above is trained only where a config names it.
ORIGINAL_PAIRS = ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")
ORIGINAL_MODALITIES = ("text", "graph", "conformer", "pocket")

# ----------------------------------------------------------------------------- lookups


def modality(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; known modalities: {', '.join(MODALITIES)}") from None


def pair_type(name: str) -> PairType:
    try:
        return PAIR_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown pair type {name!r}; known pair types: {', '.join(PAIR_TYPES)}") from None


def check_pairs(names: Iterable[str]) -> tuple[str, ...]:
    """The names as a tuple, each checked against the table (a clear error lists the known ones)."""
    return tuple(pair_type(n).name for n in names)


def stored_pair_types() -> tuple[str, ...]:
    """Pair types that have their own TFDS config (not views)."""
    return tuple(n for n, p in PAIR_TYPES.items() if p.records_of is None)


def record_features(pair: str) -> tuple[Feature, ...]:
    """Every field of a stored record of `pair` (a stored pair type): the common fields, then
    each modality's, without repeats; a view needs its modalities' fields in its source."""
    p = pair_type(pair)
    out = {f.name: f for f in COMMON}
    for m in p.modalities:
        for f in modality(m).stored:
            out.setdefault(f.name, f)
    if p.records_of:
        have = {f.name for f in record_features(p.records_of)}
        missing = sorted(set(out) - have)
        if missing:
            raise ValueError(f"view {pair} reads {p.records_of} records, which lack {missing}")
    return tuple(out.values())


def size_keys(pair: str) -> tuple[str, ...]:
    """The padded dimensions of a batch of `pair` (x's then y's)."""
    return tuple(k for m in pair_type(pair).modalities for k in modality(m).size_keys)
