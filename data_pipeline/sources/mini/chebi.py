"""ChEBI molecules, classes and the graph_text recipe, from c3p 0.5.0's program metadata.

The class programs are read with `ast` (never imported or run); the members named in their
outcome messages are the molecules, the curated class definitions their text.
"""
from __future__ import annotations

import ast
import bz2
import functools
import glob
import os
import pickle
import re

from .common import _hash_order, canonical, inchikey, package_dir
from .pubchem import pubchem_synonyms

_ITEM = re.compile(r"SMILES: (\S+) NAME: (.*?) REASON:")


def _members_from_message(message: str) -> list[tuple[str, str]]:
    """Ground-truth members listed in a c3p outcome message (true positives + false negatives)."""
    out, section = [], None
    for line in message.split("\n"):
        head = line.split(":", 1)[0]
        if head in ("True positives", "False positives", "False negatives"):
            section = head
        elif not line.startswith(" *"):
            section = None if line.strip() else section
        if section in ("True positives", "False negatives"):
            out.extend(_ITEM.findall(line))
    return out


@functools.lru_cache(maxsize=1)
def chebi_classes() -> tuple[dict, ...]:
    """ChEBI classes with their curated definitions and member molecules, from c3p metadata."""
    classes = {}
    for path in sorted(glob.glob(os.path.join(package_dir("c3p"), "programs", "*.py"))):
        try:
            tree = ast.parse(open(path, encoding="utf-8").read())
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__metadata__" for t in node.targets):
                try:
                    meta = ast.literal_eval(node.value)
                except ValueError:
                    continue
                cls = meta.get("chemical_class") or {}
                if not cls.get("id") or not cls.get("definition"):
                    continue
                members = _members_from_message(meta.get("message") or "")
                members += [(m["smiles"], m["name"]) for m in meta.get("sample_false_negatives") or []
                            if isinstance(m, dict) and m.get("smiles")]
                for m in cls.get("all_positive_examples") or []:
                    if isinstance(m, str) and " " not in m:
                        members.append((m, ""))
                entry = classes.setdefault(cls["id"], {"id": cls["id"], "name": cls["name"],
                                                       "definition": cls["definition"].strip(),
                                                       "members": []})
                entry["members"].extend(members)
    return tuple(classes[k] for k in sorted(classes))


@functools.lru_cache(maxsize=1)
def chebi_molecules() -> dict[str, dict]:
    """canonical SMILES -> {name, classes: sorted class ids}; named members only."""
    mols: dict[str, dict] = {}
    for cls in chebi_classes():
        for smiles, name in cls["members"]:
            can = canonical(smiles)
            if can is None:
                continue
            entry = mols.setdefault(can, {"name": "", "classes": set()})
            entry["classes"].add(cls["id"])
            if name and not entry["name"]:
                entry["name"] = name.strip()
    return {k: {"name": v["name"], "classes": tuple(sorted(v["classes"]))}
            for k, v in sorted(mols.items()) if v["name"]}


@functools.lru_cache(maxsize=1)
def _class_index() -> dict[str, dict]:
    return {c["id"]: c for c in chebi_classes()}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"



@functools.lru_cache(maxsize=1)
def drug_names() -> dict[str, tuple[str, list[str]]]:
    """InChIKey -> (drug name, brand names) from drug-named-entity-recognition."""
    path = os.path.join(package_dir("drug_named_entity_recognition"), "drug_ner_dictionary.pkl.bz2")
    with bz2.open(path) as f:
        data = pickle.load(f)  # the package's own shipped dictionary
    brands: dict[str, list[str]] = {}
    for variant, canon in data["drug_variant_to_canonical"].items():
        if data["drug_variant_to_variant_data"].get(variant, {}).get("is_brand"):
            for c in canon:
                brands.setdefault(c, []).append(variant)
    out = {}
    for canon, entry in data["drug_canonical_to_data"].items():
        smiles = entry.get("smiles")
        if smiles and "." not in smiles:
            key = inchikey(smiles)
            if key:
                out[key] = (entry["name"], sorted(brands.get(canon, []))[:3])
    return out


def chebi_text(name: str, class_ids, key: str | None = None) -> str:
    """The graph_text recipe (see the module docstring)."""
    classes = sorted((_class_index()[c] for c in class_ids), key=lambda c: c["name"])[:3]
    parts = []
    for i, cls in enumerate(classes):
        lead = f"{name} is" if i == 0 else "It is also"
        parts.append(f"{lead} {_article(cls['name'])} {cls['name']}. {cls['definition']}")
    if key:
        drug = drug_names().get(key)
        if drug:
            brand = f"; brand names: {', '.join(drug[1])}" if drug[1] else ""
            parts.append(f"It is a drug ({drug[0]}{brand}).")
        synonyms = [s for s in pubchem_synonyms().get(key, []) if s.lower() != name.lower()][:5]
        if synonyms:
            parts.append(f"Synonyms: {'; '.join(synonyms)}.")
    return " ".join(p if p.endswith(".") else p + "." for p in parts)



def graph_text_stream(seed: int):
    """(canonical SMILES, raw graph_text record) of every named ChEBI molecule, in hash order."""
    for smiles, entry in _hash_order(chebi_molecules().items(), seed):
        text = chebi_text(entry["name"], entry["classes"], chebi_inchikey(smiles))
        yield smiles, {"smiles": smiles, "text": text, "name": entry["name"]}


def _chebi_inchikeys() -> dict[str, str | None]:
    """canonical SMILES -> InChIKey of every named ChEBI molecule."""
    return {smiles: chebi_inchikey(smiles) for smiles in chebi_molecules()}


@functools.lru_cache(maxsize=200_000)
def chebi_inchikey(smiles: str) -> str | None:
    """InChIKey of a ChEBI molecule (canonical SMILES), computed once per process."""
    return inchikey(smiles)
