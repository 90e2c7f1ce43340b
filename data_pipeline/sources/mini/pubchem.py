"""PubChem names from chemicals 1.5.2's PubChem identifier table (~71,000 molecules).

The table (`chemicals/Identifiers/chemical identifiers pubchem large.tsv`, tab-separated, no
header) holds per row: CID, CAS, formula, MW, SMILES, InChI, InChIKey, IUPAC name, common
name, synonyms... (lower case, as PubChem ships them). Two uses:

- `pubchem_synonyms()`: InChIKey -> readable names, the extra synonyms of ChEBI and CCD texts.
- `pubchem_molecules()` / `pubchem_text()`: molecules of their own for graph_text, with the
  text recipe "<common name>. IUPAC name: <IUPAC name>. Synonyms: <up to 4 names>." and
  their IUPAC names for the zero-shot IUPAC task (tasks.py).

Names are normalised (`normalize_name`: whitespace collapsed, stripped) and kept only when
readable (`readable_name`): no registry numbers, catalogue codes, UUIDs, CAS-index inverted
names ("adenine, 9-ethyl-"), lists glued with ";" or mis-encoded Greek letters ("|a-").
"""
from __future__ import annotations

import csv
import functools
import os
import re
from typing import NamedTuple

from .common import _CODE_LIKE, _MOL_ELEMENTS, _hash_order, canonical, package_dir

TABLE = os.path.join("Identifiers", "chemical identifiers pubchem large.tsv")
MAX_SYNONYMS = 4  # in a PubChem molecule's text
MAX_NAME_CHARS = 60  # synonyms and common names; longer ones are mostly inverted index names
MAX_IUPAC_CHARS = 200
HEAVY_ATOMS = (3, 60)  # PubChem molecules kept for graph_text: organic, one fragment, 3-60 heavy atoms

_LONG_NUMBER = re.compile(r"\d{4,}")  # registry numbers and catalogue ids (IUPAC locants are short)
_LETTERS = re.compile(r"[a-z]{3}")
_GLUED = re.compile(r"[a-z]\d{2,}")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-")
_ANNOTATION = re.compile(r"\((?:\d+ci(?:,\s*\d+ci)*|[^()]*\bsalt|tech|[^()]*\bresin)\)|\btech\b|\bresin\b")


class PubChemMolecule(NamedTuple):
    cid: str
    smiles: str  # as in the table (PubChem's canonical SMILES, no stereo)
    inchikey: str
    iupac: str  # normalised
    common: str  # normalised; "" when the table's is not a readable name
    other_names: tuple[str, ...]  # the row's synonyms as they are (see synonyms())


def normalize_name(name: str) -> str:
    """One name as stored in texts: whitespace collapsed and stripped, no trailing separators."""
    return " ".join((name or "").split()).strip(" ;,")


_NOT_ALNUM = re.compile(r"[^0-9a-z]")


def _name_key(name: str) -> str:
    """Names that differ only in case, spaces or punctuation are the same name."""
    return _NOT_ALNUM.sub("", name.lower())


def code_like(name: str) -> bool:
    """A catalogue code, registry number or id rather than a name: no run of 3 letters, a run of
    4 digits, letters glued to 2+ digits ("amtsi068", "nsc12345") or a UUID. (IUPAC locants are
    short and stand apart: "heptan-2-ol", "1,2,4-triazole".)"""
    low = name.lower()
    return (not _LETTERS.search(low) or bool(_LONG_NUMBER.search(low)) or bool(_GLUED.search(low))
            or bool(_UUID.match(low)))


def readable_name(name: str, max_chars: int = MAX_NAME_CHARS) -> bool:
    """A name a reader would use (not a code, number, inverted index entry or list)."""
    if not name or len(name) > max_chars:
        return False
    if code_like(name):
        return False
    if any(c in name for c in ";|") or ", " in name or name.endswith("-") or _ANNOTATION.search(name.lower()):
        return False
    return True


def _readable_unique(names, exclude=(), limit: int | None = None) -> list[str]:
    """The readable names (normalised) in order, each once, none of `exclude`; at most `limit`."""
    seen = {_name_key(n) for n in exclude if n}
    out = []
    for n in names:
        if limit is not None and len(out) >= limit:
            break
        n = normalize_name(n)
        key = _name_key(n)
        if key and key not in seen and readable_name(n):
            seen.add(key)
            out.append(n)
    return out


def synonyms(mol: PubChemMolecule, limit: int | None = None) -> list[str]:
    """Readable synonyms of a molecule (table order), without its IUPAC and common names."""
    return _readable_unique(mol.other_names, exclude=(mol.iupac, mol.common), limit=limit)


def _rows():
    path = os.path.join(package_dir("chemicals"), TABLE)
    with open(path, encoding="utf-8") as f:
        yield from csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)


@functools.lru_cache(maxsize=1)
def pubchem_synonyms() -> dict[str, list[str]]:
    """InChIKey -> [common name, synonyms...] from chemicals' PubChem table (readable names only)."""
    out = {}
    for row in _rows():
        if len(row) < 8:
            continue
        names = [n for n in row[8:] if n and not _CODE_LIKE.match(n.upper()) and len(n) < 60]
        out[row[6]] = list(dict.fromkeys(names))
    return out


_ELEMENT = re.compile(r"([A-Z][a-z]?)(\d*)")


def _formula_ok(formula: str) -> bool:
    counts = {m.group(1): int(m.group(2) or 1) for m in _ELEMENT.finditer(formula)}
    heavy = sum(v for k, v in counts.items() if k != "H")
    return bool(counts) and set(counts) <= _MOL_ELEMENTS and HEAVY_ATOMS[0] <= heavy <= HEAVY_ATOMS[1]


def parse_row(row: list[str]) -> PubChemMolecule | None:
    """One table row -> a PubChemMolecule, or None when it is not usable for graph_text.

    Usable: a single organic fragment (elements of the Uni-Mol dictionary, 3-60 heavy atoms by
    the formula, no charge sign in the formula column), an InChIKey and a readable IUPAC name.
    """
    if len(row) < 8:
        return None
    cid, _, formula, _, smiles, _, key, iupac = row[:8]
    iupac = normalize_name(iupac)
    if not smiles or "." in smiles or not key or not _formula_ok(formula) or any(c in formula for c in "+-"):
        return None
    if not iupac or len(iupac) > MAX_IUPAC_CHARS or code_like(iupac):
        return None
    common = normalize_name(row[8]) if len(row) > 8 else ""
    if not readable_name(common) or _name_key(common) == _name_key(iupac):
        common = ""
    return PubChemMolecule(cid, smiles, key, iupac, common, tuple(row[9:]))


@functools.lru_cache(maxsize=1)
def pubchem_molecules() -> tuple[PubChemMolecule, ...]:
    """The usable molecules of the table (parse_row), one per InChIKey, in table order."""
    out, seen = [], set()
    for row in _rows():
        mol = parse_row(row)
        if mol is not None and mol.inchikey not in seen:
            seen.add(mol.inchikey)
            out.append(mol)
    return tuple(out)


def pubchem_text(mol: PubChemMolecule) -> str:
    """The graph_text recipe of a PubChem molecule.

    "<common name>. IUPAC name: <IUPAC name>. Synonyms: <s1>; <s2>." The common name is the
    table's, else the first readable synonym; without either the text starts at "IUPAC name".
    No formula, CAS number or identifier: the text names the molecule, as a reader would.
    """
    names = synonyms(mol, limit=MAX_SYNONYMS + 1)
    lead = mol.common or (names[0] if names else "")
    names = [s for s in names if s != lead][:MAX_SYNONYMS]
    parts = ([f"{lead}."] if lead else []) + [f"IUPAC name: {mol.iupac}."]
    if names:
        parts.append(f"Synonyms: {'; '.join(names)}.")
    return " ".join(parts)


def name_owners(names, rows=None) -> dict[str, set[tuple[str, str]]]:
    """Name key (_name_key) of each of `names` -> {(InChIKey skeleton block, SMILES)} of the
    table rows (or `rows`) bearing that name.

    Any name of a row counts (IUPAC, common name, synonyms, readable or not), so that the
    IUPAC task can keep only names that belong to one molecule skeleton.
    """
    out: dict[str, set[tuple[str, str]]] = {_name_key(n): set() for n in names}
    for row in _rows() if rows is None else rows:
        if len(row) < 8 or not row[6]:
            continue
        for name in row[7:]:
            owners = out.get(_name_key(name))
            if owners is not None:
                owners.add((row[6].split("-")[0], row[4]))
    return out


def graph_text_stream(seed: int, exclude_blocks=frozenset(), exclude_smiles=frozenset(), molecules=None):
    """(canonical SMILES, raw graph_text record) of the usable PubChem molecules, in hash order.

    Molecules whose InChIKey skeleton (first block) is in `exclude_blocks` (the ChEBI
    molecules, which have a richer text) or whose canonical SMILES was already given are left
    out. An unparsable SMILES is kept as it is and skipped (counted) by the featurizer.
    `molecules` defaults to the packaged table (pubchem_molecules()).
    """
    seen = set(exclude_smiles)
    molecules = pubchem_molecules() if molecules is None else molecules
    for key, mol in _hash_order(((m.inchikey, m) for m in molecules), seed, "pubchem"):
        if key.split("-")[0] in exclude_blocks:
            continue
        smiles = canonical(mol.smiles) or mol.smiles
        if smiles in seen:
            continue
        seen.add(smiles)
        yield smiles, {"smiles": smiles, "text": pubchem_text(mol), "name": mol.common or mol.iupac,
                       "iupac": mol.iupac, "source": f"pubchem:{mol.cid}"}
