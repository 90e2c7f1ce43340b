"""Featurization of one raw mini record into the stored example (runs in the worker processes)."""
from __future__ import annotations

import functools

import numpy as np

from molbind_data import featurize as fz

from .common import canonical, resolve_options, stable_hash
from .pockets import _pocket_example
from .qm9 import qm9_geometry


@functools.lru_cache(maxsize=4)
def _tokenizer(path):
    from molbind_data.featurize import text as text_mod

    return text_mod.TextTokenizer(path)


def _text_fields(raw: dict, options: dict) -> dict:
    from molbind_data.featurize import text as text_mod

    text = text_mod.normalize(raw.get("text") or "")
    if not text:
        raise fz.SkipRecord(fz.EMPTY_TEXT)
    ids = _tokenizer(options["tokenizer_path"]).encode(text, max_length=int(options["max_text_tokens"]))
    return {"text": text, "text_ids": np.asarray(ids, np.int32)}


def _conformer_fields(raw: dict, options: dict, seed: int) -> dict:
    from molbind_data.featurize import conformer
    from molbind_data.featurize.dictionaries import MOL_DICTIONARY

    if raw.get("qm9_xyz") is not None:
        atoms, coords = qm9_geometry(raw["qm9_elements"], raw["qm9_xyz"])
    elif raw.get("coords") is not None:
        atoms, coords = list(raw["atoms"]), np.asarray(raw["coords"], np.float32)
    else:
        atoms, coords, _ = conformer.generate_conformers(raw["smiles"], int(options["num_conformers"]), seed,
                                                         timeout=int(options["conformer_timeout"]))
    out = conformer.unimol_input(atoms, coords, MOL_DICTIONARY, max_atoms=256, seed=seed)
    return {k: np.asarray(v) for k, v in out.items()}


def _graph_fields(smiles: str) -> dict:
    from molbind_data.featurize import graph

    return {k: np.asarray(v, np.int32) for k, v in graph.smiles_to_graph(smiles).items()}


def featurize(pair: str, raw: dict, options: dict | None = None) -> dict:
    """One raw record -> the stored example (docs/DESIGN.md section 1); raises SkipRecord."""
    options = resolve_options(options)
    seed = (int(options["seed"]) * 1_000_003 + stable_hash(raw.get("smiles") or raw.get("molblock") or "")) % 2**31
    if pair == "graph_text":
        if canonical(raw["smiles"]) is None:
            raise fz.SkipRecord(fz.INVALID_SMILES, raw["smiles"][:80])
        return {"smiles": raw["smiles"], **_text_fields(raw, options), **_graph_fields(raw["smiles"])}
    if pair == "conformer_text":
        return {"smiles": raw["smiles"], **_text_fields(raw, options), **_conformer_fields(raw, options, seed)}
    if pair == "graph_conformer":
        if canonical(raw["smiles"]) is None:
            raise fz.SkipRecord(fz.INVALID_SMILES, raw["smiles"][:80])
        return {"smiles": raw["smiles"], **_graph_fields(raw["smiles"]), **_conformer_fields(raw, options, seed)}
    if pair == "conformer_pocket":
        return _pocket_example(raw, options, seed)
    raise ValueError(f"unknown pair type {pair!r}")

