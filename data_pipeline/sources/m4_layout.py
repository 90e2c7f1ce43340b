"""The folder layout of the MolBind-M4 release (MolBind4M) and the original's file order.

Layout (the original's `loader/dataloader.py` 54-57 and 73-86 build the paths; the file names
come from `loader/pretrain_dataset.py` 20-40 and `loader/test_dataset.py`):

    <manual_dir>/                     (or <manual_dir>/MolBind4M/)
      unimol_dict_mol.txt             optional; must equal the built-in dictionaries
      unimol_dict_pro.txt
      2D-Text/{pretrain,valid,test}/
        graph/graph_<id>.pt           PyG Data objects (see pyg_files.py)
        text/text_<id>.txt
        smiles/smiles_<id>.txt
      3D-Text/{pretrain,valid,test}/
        text/text_<k>.txt
        unimol_mol.lmdb               a single-file LMDB (subdir=False), keys "0".."n-1"
      3D-2D/{pretrain,valid,test}/
        graph/graph_<k>.pt
        unimol_mol.lmdb
      3D-Protein/{pretrain,valid,test}/
        ligand.lmdb
        pocket.lmdb

Order (what in-batch evaluation, batches of 64 in file order, depends on):
  * 2D-Text: `os.listdir` then a plain string sort of the file names, in training
    (`pretrain_dataset.py` 20-23) and evaluation (`test_dataset.py` 70-75): graph_10.pt
    comes before graph_2.pt. Training zips the sorted graph and text listings; evaluation
    asserts that the i-th graph, text and smiles names carry the same id (`test_dataset.py` 89).
  * 3D-Text and 3D-2D: the files sorted by `int(k)` of `<prefix>_<k>.<ext>`
    (`pretrain_dataset.py` 27, 34; `test_dataset.py` 18, 154); the i-th file pairs with LMDB
    record `str(i)` (`loader/unimol_dataset.py` 151: key f"{idx}"), whatever its k. The
    original asserts that the LMDB holds as many records as there are files
    (`pretrain_dataset.py` 31, `test_dataset.py` 155).
  * 3D-Protein: record i of ligand.lmdb with record i of pocket.lmdb, i = 0..n-1; equal
    counts asserted (`pretrain_dataset.py` 40, `test_dataset.py` 191).
"""
from __future__ import annotations

import os
import re

PAIR_FOLDERS = {"graph_text": "2D-Text", "conformer_text": "3D-Text", "graph_conformer": "3D-2D",
                "conformer_pocket": "3D-Protein"}
SPLIT_FOLDERS = {"train": "pretrain", "validation": "valid", "test": "test"}
RELEASE_DIR = "MolBind4M"

# Per pair folder, the entries of each split folder: (name, file pattern inside a folder or
# None for a single-file LMDB).
CONTENTS = {
    "2D-Text": (("graph", "graph_<id>.pt"), ("text", "text_<id>.txt"), ("smiles", "smiles_<id>.txt")),
    "3D-Text": (("text", "text_<k>.txt"), ("unimol_mol.lmdb", None)),
    "3D-2D": (("graph", "graph_<k>.pt"), ("unimol_mol.lmdb", None)),
    "3D-Protein": (("ligand.lmdb", None), ("pocket.lmdb", None)),
}
FILE_PREFIX = {"graph": ("graph", "pt"), "text": ("text", "txt"), "smiles": ("smiles", "txt")}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the MolBind-M4 release (MolBind4M; the download link is in the README of
github.com/MolBind/Code) and unpack its four archives into one folder DIR as that README does:

  mkdir 2D-Text && tar xf Text2D.tar -C 2D-Text/      mkdir 3D-Text && tar xf Text3D.tar -C 3D-Text/
  mkdir 3D-2D && tar xf 3D2D.tar -C 3D-2D/            mkdir 3D-Protein && tar xf 3DProtein.tar -C 3D-Protein/

then pass --manual_dir=DIR (a DIR holding MolBind4M/ works too). Expected layout:

  DIR/
    2D-Text/{pretrain,valid,test}/graph/graph_<id>.pt, text/text_<id>.txt, smiles/smiles_<id>.txt
    3D-Text/{pretrain,valid,test}/text/text_<k>.txt, unimol_mol.lmdb
    3D-2D/{pretrain,valid,test}/graph/graph_<k>.pt, unimol_mol.lmdb
    3D-Protein/{pretrain,valid,test}/ligand.lmdb, pocket.lmdb
    unimol_dict_mol.txt, unimol_dict_pro.txt   (optional)

The *.lmdb entries are single files (LMDB subdir=False), not folders. Graph files are PyG
Data objects (or dicts of tensors), read with torch.load(weights_only=True) and PyG's data
classes allow-listed: torch_geometric is not needed. LMDB values are read with a restricted
unpickler (numpy arrays and plain containers only). See docs/featurize.md."""


class LayoutError(FileNotFoundError):
    """The manual directory does not have the release's layout (the message shows the tree)."""


def _entry_problem(path: str, pattern: str | None) -> str | None:
    """Why an expected entry is unusable (None when it is fine)."""
    if pattern is not None:  # a folder of numbered files
        return None if os.path.isdir(path) else "missing"
    if os.path.isdir(path):
        return "is a folder; the release's LMDBs are single files (subdir=False)"
    return None if os.path.isfile(path) else "missing"


def problems(root: str, pairs=None) -> dict[str, str]:
    """{relative path: problem} of the expected entries of `pairs` (all by default)."""
    out = {}
    for pair in pairs or PAIR_FOLDERS:
        folder = PAIR_FOLDERS[pair]
        if not os.path.isdir(os.path.join(root, folder)):
            out[folder] = "missing"
            continue
        for split in SPLIT_FOLDERS.values():
            rel = os.path.join(folder, split)
            if not os.path.isdir(os.path.join(root, rel)):
                out[rel] = "missing"
                continue
            for name, pattern in CONTENTS[folder]:
                problem = _entry_problem(os.path.join(root, rel, name), pattern)
                if problem:
                    out[os.path.join(rel, name)] = problem
    return out


def expected_tree(root: str, found: dict[str, str] | None = None) -> str:
    """The release tree under `root`, one entry a line, with `<- problem` marks."""
    found = problems(root) if found is None else found

    def mark(rel):
        for bad, problem in found.items():
            if rel == bad or rel.startswith(bad + os.sep):
                return f"   <- {problem}" if rel == bad else ""
        return ""

    lines = [f"{root}{os.sep}"]
    for folder, entries in CONTENTS.items():
        lines.append(f"  {folder}/{mark(folder)}")
        if mark(folder):
            continue
        for split in SPLIT_FOLDERS.values():
            rel = os.path.join(folder, split)
            lines.append(f"    {split}/{mark(rel)}")
            if mark(rel):
                continue
            for name, pattern in entries:
                shown = f"{name}/{pattern}" if pattern else name
                lines.append(f"      {shown}{mark(os.path.join(rel, name))}")
    lines.append("  unimol_dict_mol.txt, unimol_dict_pro.txt   (optional)")
    return "\n".join(lines)


def dataset_root(manual_dir: str) -> str:
    """The folder holding the pair folders: manual_dir itself or manual_dir/MolBind4M."""
    if not manual_dir:
        raise ValueError("the m4 source needs options['manual_dir'] (the MolBind4M directory)")
    for root in (manual_dir, os.path.join(manual_dir, RELEASE_DIR)):
        if any(os.path.isdir(os.path.join(root, f)) for f in PAIR_FOLDERS.values()):
            return root
    state = "does not exist" if not os.path.exists(manual_dir) else \
        f"holds none of {', '.join(PAIR_FOLDERS.values())} (nor {RELEASE_DIR}/ with them)"
    raise LayoutError(f"MolBind-M4 manual directory {manual_dir} {state}.\n\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def check_layout(root: str, pair: str) -> None:
    """Raise LayoutError (with the tree) unless every split folder of `pair` is complete."""
    found = problems(root, [pair])
    if found:
        listed = "; ".join(f"{rel} {problem}" for rel, problem in found.items())
        raise LayoutError(f"MolBind-M4 release at {root} is incomplete for {pair} "
                          f"({PAIR_FOLDERS[pair]}): {listed}.\nExpected layout "
                          f"(<- marks what is wrong):\n{expected_tree(root)}")


def split_folder(root: str, pair: str, split: str) -> str:
    return os.path.join(root, PAIR_FOLDERS[pair], SPLIT_FOLDERS[split])


# ----------------------------------------------------------------------------- listings

def listed_files(directory: str, kind: str) -> dict[str, str]:
    """{id: file name} of `<kind>_<id>.<ext>` files in a folder. Hidden files are ignored;
    any other name is an error naming it (the original lists every file of the folder, so a
    stray file would shift its pairing)."""
    prefix, ext = FILE_PREFIX[kind]
    pattern = re.compile(rf"^{prefix}_(.+)\.{ext}$")
    out = {}
    for name in os.listdir(directory):
        if name.startswith("."):
            continue
        match = pattern.match(name)
        if not match:
            raise ValueError(f"{os.path.join(directory, name)}: unexpected file; the release's {kind}/ "
                             f"folders hold only {prefix}_<id>.{ext} files")
        out[match.group(1)] = name
    return out


def lexicographic_ids(ids, kind: str = "graph") -> list[str]:
    """Ids in the order of their sorted file names `<kind>_<id>.<ext>` (a plain string sort, as
    the original's list.sort(): graph_10.pt comes before graph_2.pt)."""
    prefix, ext = FILE_PREFIX[kind]
    return sorted(ids, key=lambda rid: f"{prefix}_{rid}.{ext}")


def numeric_ids(files: dict[str, str], directory: str) -> list[str]:
    """Ids sorted by int(k), as the original sorts 3D-Text / 3D-2D; a k that is not a number,
    or two files with the same number, is an error naming the files."""
    by_number: dict[int, str] = {}
    for rid, name in files.items():
        if not (rid.isascii() and rid.isdigit()):
            raise ValueError(f"{os.path.join(directory, name)}: the number k of <prefix>_<k> must be an "
                             "integer (the release sorts these files by int(k) and pairs the i-th with LMDB key i)")
        k = int(rid)
        if k in by_number:
            raise ValueError(f"{directory}: {by_number[k]} and {name} have the same number {k}")
        by_number[k] = rid
    return [by_number[k] for k in sorted(by_number)]
