"""Zero-shot classification tasks over held-out molecules (for evaluation)."""
from __future__ import annotations

import re

from . import pubchem
from .chebi import _chebi_inchikeys, _class_index, chebi_molecules
from .common import SPLITS, _hash_order, canonical, split_of_smiles


def classification_tasks(split: str = "test", *, max_queries: int = 500, num_name_candidates: int = 500,
                         min_class_members: int = 1, seed: int = 0, iupac: bool = True) -> dict[str, dict]:
    """Zero-shot classification tasks over held-out molecules (same scaffold split as the data).

    - "chebi_class": candidates = ChEBI class texts ("<class name>. <definition>") of every
      class with at least `min_class_members` member in `split`; queries = the split's ChEBI
      molecules, labels = indices of all the classes each belongs to (multi-label).
    - "name": candidates = names of `num_name_candidates` molecules of the split; queries = those
      same molecules (SMILES), label = the index of the molecule's own name; every other name is
      a distractor.
    - "iupac_name" (unless `iupac=False`): iupac_task() below, PubChem molecules of the split.
    Each task: {"candidates": [str], "candidate_ids": [str], "queries": [{"smiles", "labels"}],
    "description": str}. Queries are capped at `max_queries` (deterministic order).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    mols = [(s, e) for s, e in _hash_order(chebi_molecules().items(), seed, "tasks") if split_of_smiles(s) == split]
    classes = _class_index()
    counts: dict[str, int] = {}
    for _, entry in mols:
        for c in entry["classes"]:
            counts[c] = counts.get(c, 0) + 1
    class_ids = sorted(c for c, n in counts.items() if n >= min_class_members)
    position = {c: i for i, c in enumerate(class_ids)}
    class_queries = [{"smiles": s, "name": e["name"], "labels": sorted(position[c] for c in e["classes"] if c in position)}
                     for s, e in mols]
    class_queries = [q for q in class_queries if q["labels"]][:max_queries]
    named = mols[:num_name_candidates]
    tasks = {
        "chebi_class": {
            "description": f"Which ChEBI class does a held-out ({split}) molecule belong to? Multi-label.",
            "candidates": [f"{classes[c]['name']}. {classes[c]['definition']}" for c in class_ids],
            "candidate_ids": class_ids,
            "queries": class_queries,
        },
        "name": {
            "description": f"Pick a held-out ({split}) molecule's own name among {len(named)} names.",
            "candidates": [e["name"] for _, e in named],
            "candidate_ids": [s for s, _ in named],
            "queries": [{"smiles": s, "labels": [i]} for i, (s, _) in enumerate(named)][:max_queries],
        },
    }
    if iupac:
        tasks["iupac_name"] = iupac_task(split, num_candidates=num_name_candidates, max_queries=max_queries, seed=seed)
    return tasks


def iupac_task(split: str = "test", *, num_candidates: int = 500, max_queries: int = 500, seed: int = 0,
               molecules=None, rows=None, other_names=None) -> dict:
    """Graph -> IUPAC name among the IUPAC names of `num_candidates` PubChem molecules of `split`.

    Molecules of the split (scaffold rule) in a seeded hash order; each query is one molecule
    (canonical SMILES), its label the index of its own IUPAC name; the other names are
    distractors. A name enters only when it names a single molecule skeleton, so that no text
    of another molecule (another split) carries it: every table row bearing the name (as
    IUPAC name, common name or synonym; `pubchem.name_owners`) has the molecule's InChIKey
    skeleton and lies in the same split, and no ChEBI molecule of another skeleton is called
    so (`other_names`: name -> InChIKey). Stereoisomers share a name: the first one is kept.

    `molecules` (PubChemMolecule), `rows` (table rows) and `other_names` default to the
    packaged data; tests pass small ones.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    molecules = pubchem.pubchem_molecules() if molecules is None else molecules
    if other_names is None:
        keys = _chebi_inchikeys()
        other_names = {e["name"]: keys.get(s) for s, e in chebi_molecules().items()}
    other = {pubchem._name_key(n): (k or "").split("-")[0] for n, k in other_names.items()}
    picked, names = [], set()
    for key, mol in _hash_order(((m.inchikey, m) for m in molecules), seed, "iupac"):
        name_key = pubchem._name_key(mol.iupac)
        if name_key in names or len(picked) >= 2 * num_candidates:  # a margin for the owner rule
            continue
        smiles = canonical(mol.smiles)
        if smiles is None or split_of_smiles(smiles) != split:
            continue
        names.add(name_key)
        picked.append((smiles, mol))
    owners = pubchem.name_owners([m.iupac for _, m in picked], rows)
    kept = []
    for smiles, mol in picked:
        block, name_key = mol.inchikey.split("-")[0], pubchem._name_key(mol.iupac)
        if name_key in other and other[name_key] != block:
            continue
        if all(b == block and (s == mol.smiles or split_of_smiles(canonical(s) or s) == split)
               for b, s in owners[name_key]):
            kept.append((smiles, mol))
        if len(kept) == num_candidates:
            break
    return {
        "description": f"Pick a held-out ({split}) molecule's IUPAC name among {len(kept)} IUPAC names "
                       "(PubChem molecules).",
        "candidates": [m.iupac for _, m in kept],
        "candidate_ids": [f"pubchem:{m.cid}" for _, m in kept],
        "queries": [{"smiles": s, "labels": [i]} for i, (s, _) in enumerate(kept)][:max_queries],
    }


_LEAD = re.compile(r"^(.+?) is an? ")
_FIELD_SEPARATORS = re.compile(r"(?:[.;:]\s+|\s*\n\s*|[.;]$)")


def name_fields(text: str) -> set[str]:
    """The pieces of a text between sentence / list separators (". ", "; ", ": "), normalised:
    each name of a recipe ("<name>. IUPAC name: <name>. Synonyms: <name>; <name>.") is one."""
    out = set()
    for field in _FIELD_SEPARATORS.split(text):
        field = pubchem.normalize_name(field).lower()
        if field:
            out.add(field)
            lead = _LEAD.match(field)  # "<name> is a <class>" (ChEBI recipe)
            if lead:
                out.add(lead.group(1))
    return out


def names_in_texts(names, texts) -> set[str]:
    """The `names` that stand as a whole field (name_fields) in any of `texts` (a leak audit)."""
    fields = set()
    for text in texts:
        fields |= name_fields(text)
    return {n for n in names if pubchem.normalize_name(n).lower() in fields}
