"""The MolBind-M4 release (MolBind4M) read from a manual directory, in the original's order.

Layout, file order and pairing: `m4_layout.py` (the tree is also in MANUAL_DOWNLOAD_INSTRUCTIONS
and docs/featurize.md). In short: 2D-Text lists graph/, text/, smiles/ in plain string order
of the file names (graph_10.pt before graph_2.pt) and pairs the three by <id> (the original's
evaluation asserts the ids match; an id without a partner is counted as `missing_partner`
here instead of shifting every later pair as the original's training zip would). 3D-Text and
3D-2D sort the files by int(k) and pair the i-th file with LMDB key str(i); 3D-Protein pairs
ligand.lmdb and pocket.lmdb key by key. The record counts must match (the original asserts
it); a mismatch is an error, not a build of misaligned pairs. Records come out in that order,
and the molbind_m4 builder stores them in it (TFDS shuffling disabled), so a split read back
gives the original's evaluation batches. Splits: train -> pretrain, validation -> valid,
test -> test.

Graph files (PyG `Data` objects or dicts of tensors) are read by `pyg_files.py` with
`torch.load(weights_only=True)` and only PyG's data classes allow-listed, as stand-ins:
torch_geometric is not needed and a file that would run code is an `unreadable_file` skip.
Only x[:, :2] and edge_attr[:, :2] are used (the GIN reads nothing else); values outside the
GIN tables (bond direction > 2, e.g. OGB's bond-stereo column) are `malformed_graph`.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from molbind_data.featurize import UNREADABLE_FILE, SkipRecord
from molbind_data.sources import m4_layout as layout
from molbind_data.sources.m4_layout import (  # noqa: F401 - re-exported
    MANUAL_DOWNLOAD_INSTRUCTIONS,
    PAIR_FOLDERS,
    SPLIT_FOLDERS,
    LayoutError,
    dataset_root,
)
from molbind_data.sources.pairs import (
    SPLITS,
    capped,
    conformer_fields,
    record_seed,
    resolve_options,
    text_fields,
)
from molbind_data.sources.pyg_files import MALFORMED_GRAPH, load_graph  # noqa: F401 - re-exported

# The stored pair types the release holds, one folder each (m4_layout.PAIR_FOLDERS).
PROVIDES = tuple(PAIR_FOLDERS)

# Skip reason added by this reader (featurize/__init__.py holds the shared ones).
MISSING_PARTNER = "missing_partner"


def check_dictionaries(root: str) -> None:
    """The release's dictionaries, when present, must equal ours (token ids index weights)."""
    from molbind_data.featurize.dictionaries import MOL_DICTIONARY, POCKET_DICTIONARY, Dictionary

    for name, ours in (("unimol_dict_mol.txt", MOL_DICTIONARY), ("unimol_dict_pro.txt", POCKET_DICTIONARY)):
        path = os.path.join(root, name)
        if os.path.isfile(path) and Dictionary.load(path).symbols != ours.symbols:
            raise ValueError(f"{path} differs from the built-in dictionary {ours.symbols}; token ids "
                             "would not match the Uni-Mol weights")


def _open_lmdb(path: str):
    from molbind_data.lmdb_io import LmdbReader

    return LmdbReader(path)


def _lmdb_value(reader, index: int):
    """Record str(index) of an LMDB, or an error tuple (a bad pickle must not stop a build)."""
    try:
        value = reader.get(str(index))
    except Exception as err:  # noqa: BLE001 - UnsafePickleError, corrupt pickles
        return {"__error__": (UNREADABLE_FILE, f"{reader.path} key {index}: {type(err).__name__}: {err}")}
    if value is None:
        return {"__error__": (MISSING_PARTNER, f"{reader.path} has no key {index}")}
    return value


def _check_counts(what_a: str, n_a: int, what_b: str, n_b: int) -> None:
    if n_a != n_b:
        raise ValueError(f"{what_a} holds {n_a} records but {what_b} holds {n_b}; the release pairs "
                         "them by position, so the counts must match (the original asserts it) and "
                         "pairing them anyway would misalign every record after the gap")


def raw_records(pair: str, split: str, options=None) -> Iterator[tuple[str, dict]]:
    """(key, raw) of one pair type and split, in the original's order; reads LMDB values here.

    `options["max_records"]` keeps the first N records of each split (quick trial builds).
    """
    options = resolve_options(options)
    yield from capped(_raw_records(pair, split, options), pair, options)


def record_order(pair: str, split: str, manual_dir: str) -> list[str]:
    """The record ids of one split in the original's order (no file is read; for tests and
    checks). Equals the keys `raw_records` yields."""
    return [key for key, _ in _listing(pair, split, manual_dir)]


def _listing(pair: str, split: str, manual_dir: str):
    """(key, paths) of a split in order, from the folder listings (and LMDB sizes)."""
    if pair not in PROVIDES:
        raise ValueError(f"the MolBind-M4 release does not hold {pair!r}; it holds {PROVIDES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = dataset_root(manual_dir)
    layout.check_layout(root, pair)
    folder = layout.split_folder(root, pair, split)
    prefix = f"m4/{pair}/{split}"

    if pair == "graph_text":
        found = {kind: layout.listed_files(os.path.join(folder, kind), kind) for kind in ("graph", "text", "smiles")}
        ids = set(found["graph"]) | set(found["text"])
        for rid in layout.lexicographic_ids(ids, "graph"):
            paths = {f"{kind}_path": os.path.join(folder, kind, found[kind][rid]) if rid in found[kind] else None
                     for kind in found}
            yield f"{prefix}/{rid}", paths
        return

    if pair in ("conformer_text", "graph_conformer"):
        kind = "text" if pair == "conformer_text" else "graph"
        directory = os.path.join(folder, kind)
        files = layout.listed_files(directory, kind)
        ordered = layout.numeric_ids(files, directory)
        lmdb_path = os.path.join(folder, "unimol_mol.lmdb")
        with _open_lmdb(lmdb_path) as mols:
            _check_counts(f"{directory} ({kind}_<k> files)", len(ordered), lmdb_path, len(mols))
        for i, rid in enumerate(ordered):
            yield f"{prefix}/{rid}", {f"{kind}_path": os.path.join(directory, files[rid]),
                                      "lmdb": lmdb_path, "index": i}
        return

    ligand_path, pocket_path = (os.path.join(folder, name) for name in ("ligand.lmdb", "pocket.lmdb"))
    with _open_lmdb(ligand_path) as ligands, _open_lmdb(pocket_path) as pockets:
        _check_counts(ligand_path, len(ligands), pocket_path, len(pockets))
        n = len(ligands)
    for i in range(n):
        yield f"{prefix}/{i}", {"ligand_lmdb": ligand_path, "pocket_lmdb": pocket_path, "index": i}


def _raw_records(pair: str, split: str, options: dict) -> Iterator[tuple[str, dict]]:
    root = dataset_root(options["manual_dir"])
    check_dictionaries(root)
    listing = _listing(pair, split, options["manual_dir"])
    if pair == "graph_text":
        for key, paths in listing:
            yield key, {"id": key, **paths}
        return
    readers: dict[str, object] = {}
    try:
        for key, item in listing:
            raw = {"id": key, **{k: v for k, v in item.items() if k.endswith("_path")}}
            for field, lmdb_key in (("conformer", "lmdb"), ("conformer", "ligand_lmdb"), ("pocket", "pocket_lmdb")):
                if lmdb_key in item:
                    path = item[lmdb_key]
                    if path not in readers:
                        readers[path] = _open_lmdb(path)
                    raw[field] = _lmdb_value(readers[path], item["index"])
            yield key, raw
    finally:
        for reader in readers.values():
            reader.close()


# ----------------------------------------------------------------------------- featurization

def _read_text(path: str | None, rid: str) -> str:
    if not path:
        raise SkipRecord(MISSING_PARTNER, f"{rid}: no text file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise SkipRecord(UNREADABLE_FILE, f"{path}: {err}") from err


def _lmdb_entry(value, rid: str, what: str) -> dict:
    if value is None:
        raise SkipRecord(MISSING_PARTNER, f"{rid}: no {what} record")
    if isinstance(value, dict) and "__error__" in value:
        raise SkipRecord(*value["__error__"])
    if not isinstance(value, dict) or "atoms" not in value or "coordinates" not in value:
        raise SkipRecord(UNREADABLE_FILE, f"{rid}: {what} record lacks atoms/coordinates")
    return value


def _conformer_from_lmdb(value, rid: str, options: dict, seed: int) -> tuple[str, dict]:
    from molbind_data.featurize.graph import canonical_smiles

    entry = _lmdb_entry(value, rid, "conformer")
    coords = entry["coordinates"]
    coords = np.stack([np.asarray(c, np.float32) for c in coords]) if isinstance(coords, (list, tuple)) \
        else np.asarray(coords, np.float32)
    smi = str(entry.get("smi") or "")
    return canonical_smiles(smi) or smi, conformer_fields(list(entry["atoms"]), coords, options, seed)


def _pocket_from_lmdb(value, rid: str, options: dict, seed: int) -> tuple[str, dict]:
    from molbind_data.featurize.pocket import unimol_pocket_input

    entry = _lmdb_entry(value, rid, "pocket")
    coords = entry["coordinates"]
    # pocket LMDBs hold one coordinate set (a list of one [m, 3] array); use the first
    coords = np.asarray(coords[0] if isinstance(coords, (list, tuple)) else coords, np.float32)
    if coords.ndim == 3:
        coords = coords[0]
    site = unimol_pocket_input(list(entry["atoms"]), coords, entry.get("residue"),
                               max_atoms=int(options["max_atoms"]), seed=seed)
    return str(entry.get("pocket") or ""), {"pocket_tokens": site["pocket_tokens"], "pocket_coords": site["pocket_coords"]}


def featurize(pair: str, raw: dict, options=None) -> dict:
    """One raw M4 record -> the stored example of docs/DESIGN.md section 1 (raises SkipRecord)."""
    from molbind_data.featurize.graph import canonical_smiles

    options = resolve_options(options)
    rid = raw["id"]
    seed = record_seed(options["seed"], rid)
    if pair == "graph_text":
        if not raw.get("graph_path"):
            raise SkipRecord(MISSING_PARTNER, f"{rid}: no graph file")
        text = _read_text(raw.get("text_path"), rid)
        smiles = ""
        if raw.get("smiles_path"):
            lines = [line.strip() for line in _read_text(raw["smiles_path"], rid).splitlines() if line.strip()]
            smiles = lines[0] if lines else ""
        return {"id": rid, "smiles": canonical_smiles(smiles) or smiles, **text_fields(text, options),
                **load_graph(raw["graph_path"])}
    if pair == "conformer_text":
        text = _read_text(raw.get("text_path"), rid)
        smiles, conformer = _conformer_from_lmdb(raw.get("conformer"), rid, options, seed)
        return {"id": rid, "smiles": smiles, **text_fields(text, options), **conformer}
    if pair == "graph_conformer":
        if not raw.get("graph_path"):
            raise SkipRecord(MISSING_PARTNER, f"{rid}: no graph file")
        smiles, conformer = _conformer_from_lmdb(raw.get("conformer"), rid, options, seed)
        return {"id": rid, "smiles": smiles, **load_graph(raw["graph_path"]), **conformer}
    if pair == "conformer_pocket":
        smiles, ligand = _conformer_from_lmdb(raw.get("conformer"), rid, options, seed)
        target, site = _pocket_from_lmdb(raw.get("pocket"), rid, options, seed)
        return {"id": rid, "smiles": smiles, "target": target, **ligand, **site}
    raise ValueError(f"the MolBind-M4 release does not hold {pair!r}; it holds {PROVIDES}")
