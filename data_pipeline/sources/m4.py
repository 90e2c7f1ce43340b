"""The MolBind-M4 release (MolBind4M) read from a manual directory.

Layout (spec section 3 "Folders", original `loader/dataloader.py` and `pretrain_dataset.py`):

  <manual_dir>/                      (or <manual_dir>/MolBind4M/)
    unimol_dict_mol.txt, unimol_dict_pro.txt   optional; checked against our dictionaries
    2D-Text/{pretrain,valid,test}/graph/graph_<id>.pt, text/text_<id>.txt, smiles/smiles_<id>.txt
    3D-Text/{...}/text/text_<k>.txt + unimol_mol.lmdb
    3D-2D/{...}/graph/graph_<k>.pt + unimol_mol.lmdb
    3D-Protein/{...}/ligand.lmdb + pocket.lmdb

Pairing. 2D-Text pairs graph, text and smiles by their <id> (the original's evaluation
asserts this; its training zips two independently sorted listings, which is the same thing
when the folders are complete -- an id without a partner is counted as `missing_partner`
here instead of shifting every later pair). 3D-Text and 3D-2D sort the files by int(k) and
pair the i-th file with LMDB key str(i); 3D-Protein pairs ligand.lmdb and pocket.lmdb key by
key. Splits: train -> pretrain, validation -> valid, test -> test.

Graph files. The original saves PyG `Data` objects; they are read with
`torch.load(weights_only=True)` (no arbitrary code runs). A plain dict of tensors
{x, edge_index, edge_attr} loads anywhere. A real PyG `Data` pickle only unpickles when
torch_geometric is installed (PyG >= 2.6 registers its classes as safe globals); otherwise
every such record is skipped as `unreadable_file` with a message saying so. To convert once
where PyG exists: `torch.save({k: d[k] for k in ("x", "edge_index", "edge_attr")}, path)`.
Only x[:, :2] and edge_attr[:, :2] are used (the GIN reads nothing else); values outside the
GIN tables (bond direction > 2, e.g. OGB's bond-stereo column) are `malformed_graph`.
"""
from __future__ import annotations

import os
import re
from typing import Iterator

import numpy as np

from data_pipeline.featurize import UNKNOWN_ELEMENT, UNREADABLE_FILE, SkipRecord
from data_pipeline.sources.pairs import (
    PAIRS,
    SPLITS,
    capped,
    conformer_fields,
    record_seed,
    resolve_options,
    text_fields,
)

# Skip reasons added by this reader (featurize/__init__.py holds the shared ones).
MISSING_PARTNER = "missing_partner"
MALFORMED_GRAPH = "malformed_graph"

PAIR_FOLDERS = {"graph_text": "2D-Text", "conformer_text": "3D-Text", "graph_conformer": "3D-2D",
                "conformer_pocket": "3D-Protein"}
SPLIT_FOLDERS = {"train": "pretrain", "validation": "valid", "test": "test"}
_NUMBERED = re.compile(r"^[a-z]+_(.+)\.(pt|txt)$")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the MolBind4M release (see github.com/MolBind/Code) and pass the directory that
holds 2D-Text/, 3D-Text/, 3D-2D/ and 3D-Protein/ (each with pretrain/, valid/, test/) as
the manual directory. LMDB values are read with a restricted unpickler (numpy arrays and
plain containers only). PyG graph files need torch_geometric (>= 2.6) or conversion to
dicts of tensors {x, edge_index, edge_attr}; see docs/featurize.md."""


def dataset_root(manual_dir: str) -> str:
    if not manual_dir:
        raise ValueError("the m4 source needs options['manual_dir'] (the MolBind4M directory)")
    for root in (manual_dir, os.path.join(manual_dir, "MolBind4M")):
        if any(os.path.isdir(os.path.join(root, f)) for f in PAIR_FOLDERS.values()):
            return root
    raise FileNotFoundError(f"{manual_dir} holds none of {sorted(PAIR_FOLDERS.values())}.\n"
                            + MANUAL_DOWNLOAD_INSTRUCTIONS)


def check_dictionaries(root: str) -> None:
    """The release's dictionaries, when present, must equal ours (token ids index weights)."""
    from data_pipeline.featurize.dictionaries import MOL_DICTIONARY, POCKET_DICTIONARY, Dictionary

    for name, ours in (("unimol_dict_mol.txt", MOL_DICTIONARY), ("unimol_dict_pro.txt", POCKET_DICTIONARY)):
        path = os.path.join(root, name)
        if os.path.isfile(path) and Dictionary.load(path).symbols != ours.symbols:
            raise ValueError(f"{path} differs from the built-in dictionary {ours.symbols}; token ids "
                             "would not match the Uni-Mol weights")


def _numbered_files(directory: str) -> dict[str, str]:
    """{id: path} of files named <prefix>_<id>.<ext> in a directory."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"missing folder {directory}")
    out = {}
    for name in os.listdir(directory):
        match = _NUMBERED.match(name)
        if match:
            out[match.group(1)] = os.path.join(directory, name)
    return out


def _id_order(ids) -> list[str]:
    """int(k) order, as the original sorts 3D-Text / 3D-2D files; non-numeric ids after, by name."""
    return sorted(ids, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))


def _open_lmdb(path: str):
    from data_pipeline.lmdb_io import LmdbReader

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


def raw_records(pair: str, split: str, options=None) -> Iterator[tuple[str, dict]]:
    """(key, raw) of one pair type and split, in the original's order; reads LMDB values here.

    `options["max_records"]` keeps the first N records of each split (quick trial builds).
    """
    options = resolve_options(options)
    yield from capped(_raw_records(pair, split, options), pair, options)


def _raw_records(pair: str, split: str, options: dict) -> Iterator[tuple[str, dict]]:
    if pair not in PAIRS:
        raise ValueError(f"unknown pair type {pair!r}; expected one of {PAIRS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = dataset_root(options["manual_dir"])
    check_dictionaries(root)
    folder = os.path.join(root, PAIR_FOLDERS[pair], SPLIT_FOLDERS[split])
    prefix = f"m4/{pair}/{split}"

    if pair == "graph_text":
        graphs = _numbered_files(os.path.join(folder, "graph"))
        texts = _numbered_files(os.path.join(folder, "text"))
        smiles_dir = os.path.join(folder, "smiles")
        smiles = _numbered_files(smiles_dir) if os.path.isdir(smiles_dir) else {}
        for rid in _id_order(set(graphs) | set(texts)):
            yield f"{prefix}/{rid}", {"id": f"{prefix}/{rid}", "graph_path": graphs.get(rid),
                                      "text_path": texts.get(rid), "smiles_path": smiles.get(rid)}
        return

    if pair in ("conformer_text", "graph_conformer"):
        sub = "text" if pair == "conformer_text" else "graph"
        files = _numbered_files(os.path.join(folder, sub))
        with _open_lmdb(os.path.join(folder, "unimol_mol.lmdb")) as mols:
            ordered = _id_order(files)
            for i in range(max(len(ordered), len(mols))):
                rid = ordered[i] if i < len(ordered) else f"lmdb{i}"
                raw = {"id": f"{prefix}/{rid}", f"{sub}_path": files.get(rid),
                       "conformer": _lmdb_value(mols, i) if i < len(mols) else None}
                yield raw["id"], raw
        return

    with _open_lmdb(os.path.join(folder, "ligand.lmdb")) as ligands, \
            _open_lmdb(os.path.join(folder, "pocket.lmdb")) as pockets:
        for i in range(max(len(ligands), len(pockets))):
            raw = {"id": f"{prefix}/{i}", "conformer": _lmdb_value(ligands, i) if i < len(ligands) else None,
                   "pocket": _lmdb_value(pockets, i) if i < len(pockets) else None}
            yield raw["id"], raw


# ----------------------------------------------------------------------------- featurization

def load_graph(path: str) -> dict:
    """graph_* arrays from a graph_<id>.pt file (dict of tensors, or PyG Data with PyG installed)."""
    import torch

    try:
        import torch_geometric  # noqa: F401 - registers PyG's safe globals when installed
    except ImportError:
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        hint = (" (a PyG Data object: install torch_geometric >= 2.6 or convert the files to dicts "
                "of tensors, see docs/featurize.md)") if "torch_geometric" in str(err) else ""
        raise SkipRecord(UNREADABLE_FILE, f"{path}: {type(err).__name__}: {str(err)[:300]}{hint}") from err

    def field(name):
        if isinstance(obj, dict):
            return obj.get(name)
        return getattr(obj, name, None)

    x, edge_index, edge_attr = field("x"), field("edge_index"), field("edge_attr")
    if x is None or edge_index is None:
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: needs x and edge_index, got {type(obj).__name__}")
    try:
        x = np.asarray(x, dtype=np.int64)
        edge_index = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
        e = edge_index.shape[1]
        edge_attr = (np.zeros((e, 2), np.int64) if edge_attr is None
                     else np.asarray(edge_attr, dtype=np.int64).reshape(e, -1))
    except (TypeError, ValueError, RuntimeError) as err:
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: {type(err).__name__}: {err}") from err
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] == 0 or edge_attr.shape[1] < 2:
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: x {x.shape}, edge_attr {edge_attr.shape}")
    n = x.shape[0]
    nodes, edges = x[:, :2].copy(), edge_attr[:, :2]
    if not ((nodes[:, 0] >= 0) & (nodes[:, 0] <= 117)).all():
        raise SkipRecord(UNKNOWN_ELEMENT, f"{path}: atom type index outside 0..117")
    nodes[nodes[:, 1] == 3, 1] = 0  # Hu's CHI_OTHER: the GIN table has 3 rows (see featurize/graph.py)
    if not ((nodes[:, 1] >= 0) & (nodes[:, 1] <= 2)).all():
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: chirality index outside 0..2")
    if e and not (((edges[:, 0] >= 0) & (edges[:, 0] <= 3)).all() and ((edges[:, 1] >= 0) & (edges[:, 1] <= 2)).all()):
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: bond type outside 0..3 or direction outside 0..2")
    if e and not ((edge_index >= 0) & (edge_index < n)).all():
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: edge index outside the {n} nodes")
    return {"graph_node_feat": nodes.astype(np.int32), "graph_edge_index": edge_index.astype(np.int32),
            "graph_edge_feat": edges.astype(np.int32)}


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
    from data_pipeline.featurize.graph import canonical_smiles

    entry = _lmdb_entry(value, rid, "conformer")
    coords = entry["coordinates"]
    coords = np.stack([np.asarray(c, np.float32) for c in coords]) if isinstance(coords, (list, tuple)) \
        else np.asarray(coords, np.float32)
    smi = str(entry.get("smi") or "")
    return canonical_smiles(smi) or smi, conformer_fields(list(entry["atoms"]), coords, options, seed)


def _pocket_from_lmdb(value, rid: str, options: dict, seed: int) -> tuple[str, dict]:
    from data_pipeline.featurize.pocket import unimol_pocket_input

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
    from data_pipeline.featurize.graph import canonical_smiles

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
    raise ValueError(f"unknown pair type {pair!r}; expected one of {PAIRS}")
