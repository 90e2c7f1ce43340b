"""The user's own pairs: a CSV / JSONL / SDF file -> records of one pair type.

Formats (chosen by the file extension of `options["input"]`):
  * CSV (.csv, .tsv) or JSON lines (.jsonl, .ndjson, .json with one object per line) with
    columns `smiles,text`: graph_text, conformer_text (RDKit conformers generated from the
    SMILES) and graph_conformer (both from the SMILES; `text` is not needed).
  * SDF (.sdf) with a text data field (`options["text_property"]`, default "text"):
    conformer_text with the SDF's own 3D coordinates; graph_text and graph_conformer also
    work (graph from the SDF molecule, conformer from its coordinates).
  * CSV of `ligand_sdf,protein_pdb` rows (paths absolute or relative to the CSV; optional
    `target` column): conformer_pocket. Every molecule of a ligand SDF becomes one record
    (a series of ligands posed in the same site), with the pocket cut around it.
Optional columns everywhere: `id` (record key; default the row / molecule number) and
`split` (train / validation / test; `valid`, `pretrain` also accepted). A repeated id is
skipped as `duplicate`, an unknown split name as `invalid_split`; neither stops a build.

Reading (data_pipeline/sources/pair_files.py): column names are matched case-insensitively
and a UTF-8 BOM is dropped; a header that repeats a column or lacks one the pair type needs
is refused before anything is built; records are decoded one by one, so a record that is
not UTF-8 or has more fields than the header is one counted skip (`not_utf8`, `bad_row`);
fields of any length are read.

Splits without a split column are deterministic: the Bemis-Murcko scaffold of the molecule
(its canonical SMILES when it has no ring, so acyclic molecules do not all share the empty
scaffold) is hashed with sha1 into 1000 buckets: < 800 train, < 900 validation, else test
(80/10/10 by scaffold count). Pairs sharing a scaffold share a split, so a test molecule's
close analogues are not trained on. For conformer_pocket the ligand scaffold is used too;
`options["split_by"] = "target"` hashes the target (protein) instead, which keeps whole
pockets out of training when the file holds several targets.

The module also holds the field builders that every source shares (text, graph and
conformer fields, per-record seeds), so that a record means the same thing whichever source
it comes from.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import zlib
from typing import Iterator

import numpy as np

from molbind_data.featurize import (
    DUPLICATE,
    EMPTY_TEXT,
    INVALID_SMILES,
    UNREADABLE_FILE,
    SkipRecord,
)
from molbind_data.sources.pair_files import (  # noqa: F401  (part of this source's API)
    BAD_ROW, NOT_UTF8, PairsFileError, _rows, check_columns, columns, required_columns)

# The stored pair types this source reads from users' files (data_pipeline/schema.py).
PROVIDES = ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")
SPLITS = ("train", "validation", "test")
INVALID_SPLIT = "invalid_split"  # skip reason added here: a split column value we do not know
SPLIT_ALIASES = {"train": "train", "pretrain": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "test": "test"}

# Options shared by the m4 and pairs sources (names agree with sources.mini).
DEFAULT_OPTIONS = {
    "seed": 0,
    "tokenizer_path": None,  # None -> the offline MiniLM vocab
    "max_text_tokens": 256,
    "max_atoms": 256,  # Uni-Mol crop for molecules and pockets
    "num_conformers": 10,  # RDKit conformers per molecule generated from SMILES (Uni-Mol: 10)
    "max_conformers": None,  # cap on stored conformers read from files (None: all)
    "allow_2d_fallback": False,  # True: Uni-Mol's flat 2D fallback when ETKDG fails (default: skip, "2d_fallback")
    "pocket_cutoff": 6.0,
    "input": None,  # pairs: the user's file
    "text_property": "text",  # pairs: SDF data field holding the text
    "split_by": "scaffold",  # pairs: "scaffold" or "target" (conformer_pocket)
    "manual_dir": None,  # m4: the MolBind4M directory
    "max_records": None,  # int or {pair: int}: keep the first N raw records of each split (None: all)
}


def resolve_options(options=None) -> dict:
    """Defaults updated with `options` (a dict, a ConfigDict or any object with attributes)."""
    out = dict(DEFAULT_OPTIONS)
    if options is None:
        return out
    if hasattr(options, "items"):
        out.update(dict(options.items()))
    else:
        out.update({k: getattr(options, k) for k in dir(options) if not k.startswith("_")})
    return out


def capped(records, pair: str, options: dict):
    """The first `max_records` (int, or {pair: int}) raw records of a split; all when None."""
    cap = options.get("max_records")
    if isinstance(cap, dict):
        cap = cap.get(pair)
    return records if cap is None else itertools.islice(records, int(cap))


def record_seed(seed: int, key: str) -> int:
    """A per-record seed: the same record gets the same crop / conformers in any order or worker."""
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % 2**31


# ----------------------------------------------------------------------------- shared fields

def text_fields(text: str, options: dict) -> dict:
    from molbind_data.featurize import text as text_mod

    normalized = text_mod.normalize(text if isinstance(text, str) else "")
    tok = text_mod.get_tokenizer(options["tokenizer_path"])
    return {"text": normalized, "text_ids": tok.encode(normalized, max_length=int(options["max_text_tokens"]))}


def graph_fields(smiles_or_mol) -> dict:
    from molbind_data.featurize import graph

    if isinstance(smiles_or_mol, str):
        return graph.smiles_to_graph(smiles_or_mol)
    return graph.mol_to_graph(smiles_or_mol)


def conformer_fields(atoms, coords, options: dict, seed: int) -> dict:
    from molbind_data.featurize.conformer import unimol_input
    from molbind_data.featurize.dictionaries import MOL_DICTIONARY

    coords = np.asarray(coords, dtype=np.float32)
    if coords.ndim == 3 and options.get("max_conformers"):
        coords = coords[: int(options["max_conformers"])]
    return unimol_input(atoms, coords, MOL_DICTIONARY, max_atoms=int(options["max_atoms"]), seed=seed)


def generated_conformer_fields(smiles_or_mol, options: dict, seed: int) -> dict:
    from molbind_data.featurize.conformer import generate_conformers

    atoms, coords, _ = generate_conformers(smiles_or_mol, int(options["num_conformers"]), seed,
                                           allow_2d_fallback=bool(options["allow_2d_fallback"]))
    return conformer_fields(atoms, coords, options, seed)


def scaffold_key(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES; the canonical SMILES when there is no ring; else the input."""
    from rdkit import Chem, rdBase
    from rdkit.Chem.Scaffolds import MurckoScaffold

    logs = rdBase.BlockLogs()  # quiet RDKit, restoring the caller's settings after
    try:
        mol = Chem.MolFromSmiles(smiles) if smiles else None
        if mol is None or mol.GetNumAtoms() == 0:
            return smiles or ""
        try:
            scaffold = MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)
        except Exception:  # noqa: BLE001
            scaffold = ""
        return scaffold or Chem.MolToSmiles(mol, isomericSmiles=False)
    finally:
        del logs


def hash_split(text: str) -> str:
    """80/10/10 split of a string by its sha1 bucket in [0, 1000)."""
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:12], 16) % 1000
    return "train" if bucket < 800 else "validation" if bucket < 900 else "test"


# ----------------------------------------------------------------------------- reading files
# (data_pipeline/sources/pair_files.py)

def _row_split(row: dict, fallback: str) -> str:
    """The row's own split if it names one, else the hash split; an unknown name is returned
    as is and turned into an `invalid_split` skip by raw_records (one bad row must not stop a build)."""
    given = str(row.get("split") or "").strip().lower()
    if given:
        return SPLIT_ALIASES.get(given, "invalid:" + given)
    return hash_split(fallback)


def _molecule_records(pair: str, path: str, options: dict):
    base = os.path.basename(path)
    if path.lower().endswith(".sdf"):
        from molbind_data.featurize.conformer import iter_sdf
        from molbind_data.featurize.graph import canonical_smiles

        for i, block, mol in iter_sdf(path):
            rid = str(i)
            smiles = canonical_smiles(mol) if mol is not None else ""
            split_row = {"split": mol.GetProp("split")} if mol is not None and mol.HasProp("split") else {}
            yield _row_split(split_row, scaffold_key(smiles) or block), f"pairs/{base}/{rid}", {"molblock": block}
        return
    for i, row in _rows(path):
        rid = str(row.get("id") or i)
        raw = {"smiles": str(row.get("smiles") or "").strip(), "text": row.get("text"),
               "error": row.get("__error__")}
        yield _row_split(row, scaffold_key(raw["smiles"]) or f"row:{rid}"), f"pairs/{base}/{rid}", raw


def _pocket_records(path: str, options: dict):
    from molbind_data.featurize.conformer import iter_sdf
    from molbind_data.featurize.graph import canonical_smiles

    base, root = os.path.basename(path), os.path.dirname(os.path.abspath(path))
    for i, row in _rows(path):
        rid = str(row.get("id") or i)
        if row.get("__error__"):
            yield _row_split(row, f"row:{rid}"), f"pairs/{base}/{rid}", {"error": row["__error__"]}
            continue
        ligand = os.path.join(root, str(row.get("ligand_sdf") or "").strip())
        protein = os.path.join(root, str(row.get("protein_pdb") or "").strip())
        target = str(row.get("target") or os.path.splitext(os.path.basename(protein))[0])
        error = (UNREADABLE_FILE, f"{ligand}: no molecule")
        try:
            molecules = list(iter_sdf(ligand))
        except SkipRecord as skip:
            molecules, error = [], (skip.reason, skip.detail)
        if not molecules:
            # keep the row visible: featurize() counts it as unreadable instead of dropping it
            yield _row_split(row, f"row:{rid}"), f"pairs/{base}/{rid}", {"error": error}
            continue
        for j, block, mol in molecules:
            smiles = canonical_smiles(mol) if mol is not None else ""
            group = target if options["split_by"] == "target" else (scaffold_key(smiles) or block)
            yield (_row_split(row, group), f"pairs/{base}/{rid}/{j}",
                   {"molblock": block, "protein_path": protein, "target": target})


def raw_records(pair: str, split: str, options=None) -> Iterator[tuple[str, dict]]:
    """(key, raw) of one split of the user's file, in file order (cheap: no featurization)."""
    options = resolve_options(options)
    if pair not in PROVIDES:
        raise ValueError(f"the pairs source does not read {pair!r}; it reads {PROVIDES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = options.get("input")
    check_columns(path, pair)
    if options["split_by"] not in ("scaffold", "target"):
        raise ValueError(f"split_by must be 'scaffold' or 'target', got {options['split_by']!r}")
    records = _pocket_records(path, options) if pair == "conformer_pocket" else _molecule_records(pair, path, options)
    yield from capped(_checked(records, split), pair, options)


def _checked(records, split: str):
    """Records of one split with unique keys; bad split names and repeated ids become skips.

    Every record is looked at in every pass, so a record lands in exactly one split: an
    unknown split name in the hash split of its key, a repeated id under `<id>#<n>`.
    """
    seen: dict[str, int] = {}
    for record_split, key, raw in records:
        if record_split.startswith("invalid:"):
            raw = {**raw, "error": (INVALID_SPLIT, f"{key}: unknown split {record_split[8:]!r}; "
                                                  "use train/validation/test")}
            record_split = hash_split(key)
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n:
            key = f"{key}#{n}"
            raw = {**raw, "error": (DUPLICATE, f"id {key} repeats an earlier record")}
        if record_split == split:
            yield key, {**raw, "id": key}


# ----------------------------------------------------------------------------- featurization

def _sdf_molecule(raw: dict):
    from molbind_data.featurize.conformer import molblock_to_mol

    mol = molblock_to_mol(raw.get("molblock") or "")
    if mol is None:
        raise SkipRecord(UNREADABLE_FILE, f"{raw['id']}: RDKit cannot parse the molecule")
    return mol


def featurize(pair: str, raw: dict, options=None) -> dict:
    """One raw record -> the stored example of docs/DESIGN.md section 1 (raises SkipRecord)."""
    from molbind_data.featurize.conformer import mol_conformer
    from molbind_data.featurize.graph import canonical_smiles, parse_smiles

    options = resolve_options(options)
    if raw.get("error"):
        error = raw["error"]
        reason, detail = error if isinstance(error, (tuple, list)) else (UNREADABLE_FILE, str(error))
        raise SkipRecord(reason, detail)
    key = raw["id"]
    seed = record_seed(options["seed"], key)

    if pair == "conformer_pocket":
        from molbind_data.featurize.pocket import extract_pocket

        mol = _sdf_molecule(raw)
        atoms, coords = mol_conformer(mol)
        site = extract_pocket(raw["protein_path"], mol, cutoff=float(options["pocket_cutoff"]),
                              max_atoms=int(options["max_atoms"]), seed=seed)
        return {"id": key, "smiles": canonical_smiles(mol), "target": raw["target"],
                **conformer_fields(atoms, coords, options, seed),
                "pocket_tokens": site["pocket_tokens"], "pocket_coords": site["pocket_coords"]}
    if pair not in PROVIDES:
        raise ValueError(f"unknown pair type {pair!r}")

    if "molblock" in raw:  # a molecule of an SDF, with its own coordinates
        mol = _sdf_molecule(raw)
        smiles = canonical_smiles(mol)
        text = mol.GetProp(options["text_property"]) if mol.HasProp(options["text_property"]) else ""
        graph_source = mol
        atoms, coords = mol_conformer(mol)
        conformer = lambda: conformer_fields(atoms, coords, options, seed)  # noqa: E731
    else:
        mol = parse_smiles(raw.get("smiles") or "")
        smiles = canonical_smiles(mol)
        text = raw.get("text")
        graph_source = mol
        conformer = lambda: generated_conformer_fields(mol, options, seed)  # noqa: E731
    if not smiles and pair != "conformer_text":
        raise SkipRecord(INVALID_SMILES, f"{key}: molecule cannot be sanitized")

    example = {"id": key, "smiles": smiles}
    if pair in ("graph_text", "conformer_text"):
        if not isinstance(text, str) or not text.strip():
            raise SkipRecord(EMPTY_TEXT, f"{key}: no text")
        example.update(text_fields(text, options))
    if pair in ("graph_text", "graph_conformer"):
        example.update(graph_fields(graph_source))
    if pair in ("conformer_text", "graph_conformer"):
        example.update(conformer())
    return example
