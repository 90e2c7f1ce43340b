"""Options, caps, split rules and molecule helpers shared by the molbind_mini sources."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import re

# The stored pair types this source provides (data_pipeline/schema.py).
PROVIDES = ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")
SPLITS = ("train", "validation", "test")

# Caps on records per pair type (over all splits, before featurization skips). They keep the
# default build to a few minutes on 2 cores; None = everything.
DEFAULT_MAX_RECORDS = {
    "graph_text": 16000,  # all ~7k named ChEBI members, then PubChem molecules (the locked text tower's cache encodes every text once: ~100 texts/s here)
    "conformer_text": 5000,  # CCD ideal coordinates + chebi_conformer_fraction RDKit conformers
    "graph_conformer": 25000,  # of QM9's 43,610 part-1 geometries
    "conformer_pocket": None,
}
DEFAULT_OPTIONS = {
    "max_records": None,  # int (all pairs) or {pair: int}; None -> DEFAULT_MAX_RECORDS
    "seed": 0,
    "num_conformers": 2,  # for RDKit-generated conformers (ChEBI part of conformer_text)
    "chebi_conformer_fraction": 0.05,  # share of conformer_text taken from ChEBI molecules (generated: slow)
    "chebi_conformer_max_heavy_atoms": 40,  # larger ones (lipids, glycans) embed slowly
    "conformer_timeout": 10,  # seconds per ETKDG pass; a molecule still without a conformer is skipped (2d_fallback)
    "pocket_cutoff": 6.0,
    "tokenizer_path": None,  # None -> the offline MiniLM vocab
    "max_text_tokens": 256,
    # conformer_pocket split: "scaffold" (default) splits each target's ligands by scaffold like
    # every other molecule, with posebusters' 4 proteins in test; "target" holds whole targets
    # out (TARGET_SPLITS), which 8 proteins are too few to learn (only 2 in val/test).
    "pocket_split": "scaffold",
}

_MOL_ELEMENTS = {"C", "N", "O", "S", "H", "Cl", "F", "Br", "I", "Si", "P", "B"}
_CODE_LIKE = re.compile(r"^[A-Z0-9]{1,6}[- ]?\d+[A-Z0-9-]*$|^\d+-\d+-\d+$")


def resolve_options(options: dict | None) -> dict:
    out = dict(DEFAULT_OPTIONS)
    out.update(options or {})
    return out


def max_records(pair: str, options: dict) -> int | None:
    cap = options.get("max_records")
    if cap is None:
        return DEFAULT_MAX_RECORDS[pair]
    if isinstance(cap, dict):
        return cap.get(pair, DEFAULT_MAX_RECORDS[pair])
    return int(cap)


def package_dir(name: str) -> str:
    """Install directory of a package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (make setup installs it from requirements-data.txt)")
    return list(spec.submodule_search_locations)[0]


def stable_hash(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16)


# ----------------------------------------------------------------------------- molecules

@functools.lru_cache(maxsize=1)
def _rdkit():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem


def canonical(smiles: str) -> str | None:
    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    return Chem.MolToSmiles(mol) if mol is not None and mol.GetNumAtoms() else None


def inchikey(smiles: str) -> str | None:
    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    try:
        return Chem.MolToInchiKey(mol) or None
    except Exception:  # InChI fails on a few exotic molecules; they just get no extra text
        return None


@functools.lru_cache(maxsize=200_000)
def scaffold_of(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES; the molecule itself when it has no ring."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return smiles
    try:
        scaffold = MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)
    except Exception:
        scaffold = ""
    return scaffold or Chem.MolToSmiles(mol, isomericSmiles=False)


def split_of_smiles(smiles: str) -> str:
    bucket = stable_hash(scaffold_of(smiles)) % 1000
    return "train" if bucket < 800 else "validation" if bucket < 900 else "test"


SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _hash_order(items, seed: int, salt: str = "") -> list:
    """Items (key first) in a deterministic, seed-dependent pseudo-random order."""
    return sorted(items, key=lambda it: stable_hash(f"{seed}:{salt}:{it[0]}"))


def split_quotas(cap: int) -> dict[str, int]:
    """Records per split of a cap: 80/10/10, at least one per split."""
    return {s: max(1, round(cap * f)) for s, f in SPLIT_FRACTIONS.items()}


def take_per_split(items, cap: int | None, split_fn, quota: dict[str, int] | None = None) -> tuple:
    """The first items of each split, at most cap * fraction (>= 1) per split, from a lazy stream.

    Per-split quotas keep every split non-empty even for a tiny cap, and consuming lazily
    means that an expensive candidate (a CCD conversion) is only made when it is needed.
    `quota` ({split: n}) replaces the quotas of `cap` (what a second source may still add).
    """
    if cap is None and quota is None:
        return tuple(items)
    quota = dict(quota) if quota is not None else split_quotas(cap)
    if not any(quota.values()):
        return ()
    out = []
    for key, raw in items:
        split = split_fn(key, raw)
        if quota[split] > 0:
            quota[split] -= 1
            out.append((key, raw))
            if not any(quota.values()):
                break
    return tuple(out)

