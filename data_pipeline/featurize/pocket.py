"""Protein structures + a posed ligand -> Uni-Mol pocket inputs (spec section 3 "Pockets").

The original never defines the pocket (its LMDBs were made offline); Uni-Mol's pocket data
uses "residues with any atom within 6 A of the ligand", which `extract_pocket` implements:

  1. read the structure with biotite (PDB, mmCIF or BinaryCIF; model 1; first altloc);
     waters are ignored, other hetero groups (metal ions, cofactors) count as residues
  2. ligand heavy atoms: from an SDF (first molecule), an RDKit molecule (first conformer)
     or an [L, 3] coordinate array (taken as heavy atoms). A complex file that still holds
     the ligand itself: every hetero (HETATM) residue with a heavy atom within
     `ligand_tolerance` (0.5 A) of a ligand heavy atom is that copy of the ligand and is
     left out (`keep_ligand_atoms=True` keeps it); the count is returned
  3. a residue is in the pocket if any of its heavy atoms is within `cutoff` A (<=) of any
     ligand heavy atom; all its heavy atoms are kept, in file order. Residues missing atoms
     (no backbone, truncated side chains) simply contribute the atoms they have.
Then `unimol_pocket_input` applies the original `D3Dataset_Pro` steps, shared with the M4
reader: atom name -> first character -> pocket dictionary (CA->C, OG1->O, ZN->Z->[UNK]),
drop "H", above `max_atoms` sample without replacement with p = softmax(1/(|x - centroid| + 1))
(seeded), centre, [CLS]/[SEP] at the origin.
Element and coordinate rules are the ones every featurizer shares (featurize/checks.py): a
pocket atom whose element column names no element, or a ligand with a dummy atom, is
UNKNOWN_ELEMENT; non-finite coordinates are NONFINITE_COORDINATES; all atoms at one point is
ZERO_COORDINATES.
"""
from __future__ import annotations

import functools
import os

import numpy as np
from scipy.spatial import cKDTree

from molbind_data.featurize import NO_CONFORMER, NO_POCKET_ATOMS, TOO_MANY_ATOMS, UNREADABLE_FILE, SkipRecord
from molbind_data.featurize.checks import atomic_number, check_coordinates
from molbind_data.featurize.conformer import HARD_MAX_ATOMS, MALFORMED_CONFORMER, iter_sdf
from molbind_data.featurize.dictionaries import POCKET_DICTIONARY, Dictionary

WATER_NAMES = frozenset({"HOH", "WAT", "DOD", "H2O", "TIP", "TIP3", "SOL"})
HYDROGEN_ELEMENTS = frozenset({"H", "D"})
# Hetero atoms this close (A) to a ligand heavy atom are the ligand's own copy in the complex.
LIGAND_TOLERANCE = 0.5


def unimol_pocket_input(atom_names, coords, residues=None, dictionary: Dictionary = POCKET_DICTIONARY,
                        max_atoms: int = 256, seed: int = 0) -> dict:
    """The original `D3Dataset_Pro` steps on one pocket (atoms named as in a PDB file).

    atom_names: m PDB atom names; coords [m, 3]; residues: m per-atom residue labels or None.
    If the counts of atoms and residues differ, both are cut to the shorter (as the original).
    Returns pocket_tokens int32 [m'+2], pocket_coords float32 [m'+2, 3], residues (list, m').
    """
    symbols = np.asarray([str(a)[:1] for a in atom_names])
    coords = np.asarray(coords, dtype=np.float32)
    residues = np.asarray(residues if residues is not None else [""] * len(symbols), dtype=object)
    if len(symbols) == 0:
        raise SkipRecord(NO_POCKET_ATOMS, "pocket without atoms")
    if coords.shape != (len(symbols), 3):
        raise SkipRecord(MALFORMED_CONFORMER, f"{len(symbols)} pocket atoms but coordinates of shape {coords.shape}")
    check_coordinates(coords, what="pocket")
    if len(residues) != len(symbols):
        n = min(len(residues), len(symbols))
        symbols, coords, residues = symbols[:n], coords[:n], residues[:n]

    keep = symbols != "H"
    symbols, coords, residues = symbols[keep], coords[keep], residues[keep]
    if len(symbols) == 0:
        raise SkipRecord(NO_POCKET_ATOMS, "pocket has only hydrogen atoms")

    if max_atoms and max_atoms > 0 and len(symbols) > max_atoms:
        distance = np.linalg.norm(coords - coords.mean(axis=0), axis=1) + 1.0
        logits = 1.0 / distance
        weight = np.exp(logits - logits.max())
        weight = weight / weight.sum()
        index = np.random.default_rng(seed).choice(len(symbols), max_atoms, replace=False, p=weight)
        symbols, coords, residues = symbols[index], coords[index], residues[index]
    if len(symbols) >= HARD_MAX_ATOMS:
        raise SkipRecord(TOO_MANY_ATOMS, f"{len(symbols)} pocket atoms without cropping")

    tokens = np.array([dictionary.index(s) for s in symbols], dtype=np.int32)
    coords = coords - coords.mean(axis=0)
    zero = np.zeros((1, 3), dtype=np.float32)
    return {
        "pocket_tokens": np.concatenate([[Dictionary.CLS], tokens, [Dictionary.SEP]]).astype(np.int32),
        "pocket_coords": np.concatenate([zero, coords, zero]).astype(np.float32),
        "residues": [str(r) for r in residues],
    }


def read_structure(path: str):
    """biotite AtomArray of model 1 of a PDB / mmCIF / BinaryCIF file (UNREADABLE_FILE if not).

    Parsed structures are cached per (path, mtime, size): a congeneric series poses many
    ligands in one protein, and parsing dominates the cost of a pocket. Callers index the
    array (which copies), so the cached object is never modified.
    """
    if not os.path.isfile(path):
        raise SkipRecord(UNREADABLE_FILE, f"no such file: {path}")
    stat = os.stat(path)
    return _read_structure_cached(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_structure_cached(path: str, mtime_ns: int, size: int):
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".cif", ".mmcif", ".bcif"):
            import biotite.structure.io.pdbx as pdbx
            cif = pdbx.BinaryCIFFile.read(path) if ext == ".bcif" else pdbx.CIFFile.read(path)
            atoms = pdbx.get_structure(cif, model=1)
        else:
            import biotite.structure.io.pdb as pdb
            atoms = pdb.PDBFile.read(path).get_structure(model=1)
    except Exception as err:  # noqa: BLE001 - any parser failure is an unreadable file
        raise SkipRecord(UNREADABLE_FILE, f"{path}: {type(err).__name__}: {err}") from err
    if atoms.array_length() == 0:
        raise SkipRecord(UNREADABLE_FILE, f"{path}: no atoms")
    return atoms


def _is_hydrogen(elements, names) -> np.ndarray:
    elements = np.char.upper(np.asarray(elements, dtype=str))
    names = np.asarray(names, dtype=str)
    by_element = np.isin(elements, list(HYDROGEN_ELEMENTS))
    # files without an element column: PDB hydrogen names start with H or a digit then H
    no_element = elements == ""
    by_name = np.array([n.lstrip("0123456789").startswith("H") for n in names], dtype=bool)
    return by_element | (no_element & by_name)


def ligand_heavy_coords(ligand) -> np.ndarray:
    """[L, 3] float64 heavy-atom coordinates of an SDF path, RDKit molecule or array."""
    from rdkit import Chem

    if isinstance(ligand, (str, os.PathLike)):
        mol = next((m for _, _, m in iter_sdf(os.fspath(ligand)) if m is not None), None)
        if mol is None:
            raise SkipRecord(UNREADABLE_FILE, f"{ligand}: no readable molecule")
        ligand = mol
    if isinstance(ligand, Chem.Mol):
        if ligand.GetNumConformers() == 0:
            raise SkipRecord(NO_CONFORMER, "ligand has no coordinates")
        for atom in ligand.GetAtoms():
            atomic_number(atom, where=f"ligand atom {atom.GetIdx()}")
        xyz = ligand.GetConformer().GetPositions()
        heavy = np.array([a.GetAtomicNum() != 1 for a in ligand.GetAtoms()], dtype=bool)
        xyz = xyz[heavy] if heavy.any() else xyz
    else:
        xyz = np.asarray(ligand, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise SkipRecord(MALFORMED_CONFORMER, f"ligand coordinates of shape {xyz.shape}")
    check_coordinates(xyz, what="ligand")
    return xyz


def extract_pocket(protein_path: str, ligand, cutoff: float = 6.0, max_atoms: int = 256, seed: int = 0,
                   dictionary: Dictionary = POCKET_DICTIONARY, *, keep_ligand_atoms: bool = False,
                   ligand_tolerance: float = LIGAND_TOLERANCE) -> dict:
    """Pocket of `protein_path` around `ligand` as Uni-Mol inputs (see the module docstring).

    Returns pocket_tokens int32 [m+2], pocket_coords float32 [m+2, 3], residues: one label
    "chain:resname:resid[icode]" per pocket atom (after cropping, [CLS]/[SEP] excluded), and
    excluded_ligand_atoms: how many heavy atoms of hetero residues were left out as the
    ligand's own copy (0 with `keep_ligand_atoms=True`).
    Raises SkipRecord: UNREADABLE_FILE (protein or ligand file), NO_POCKET_ATOMS (nothing
    within the cutoff), UNKNOWN_ELEMENT, NONFINITE_COORDINATES, ZERO_COORDINATES.
    """
    lig = ligand_heavy_coords(ligand)
    atoms = read_structure(protein_path)
    keep = ~_is_hydrogen(atoms.element, atoms.atom_name) & ~np.isin(atoms.res_name, list(WATER_NAMES))
    atoms = atoms[keep]
    if atoms.array_length() == 0:
        raise SkipRecord(NO_POCKET_ATOMS, f"{protein_path}: no heavy atoms")

    xyz = atoms.coord.astype(np.float64)
    check_coordinates(xyz, what=protein_path)
    labels = np.array([f"{c}:{n}:{r}{i}" for c, n, r, i in
                       zip(atoms.chain_id, atoms.res_name, atoms.res_id, atoms.ins_code)], dtype=object)
    tree = cKDTree(lig)
    excluded = 0
    if not keep_ligand_atoms:
        hetero = np.asarray(atoms.hetero, dtype=bool)
        on_ligand, _ = tree.query(xyz, k=1, distance_upper_bound=ligand_tolerance + 1e-9)
        copies = set(labels[hetero & (on_ligand <= ligand_tolerance)])
        if copies:
            drop = hetero & np.array([lab in copies for lab in labels], dtype=bool)
            excluded = int(drop.sum())
            atoms, xyz, labels = atoms[~drop], xyz[~drop], labels[~drop]
            if atoms.array_length() == 0:
                raise SkipRecord(NO_POCKET_ATOMS, f"{protein_path}: only the ligand's own atoms")

    near_dist, _ = tree.query(xyz, k=1, distance_upper_bound=cutoff + 1e-9)
    near = near_dist <= cutoff
    if not near.any():
        raise SkipRecord(NO_POCKET_ATOMS, f"no protein atom within {cutoff} A of the ligand"
                         + (f" ({excluded} ligand atoms of the complex left out)" if excluded else ""))

    selected = set(labels[near])
    in_pocket = np.array([lab in selected for lab in labels], dtype=bool)
    for element, name in zip(atoms.element[in_pocket], atoms.atom_name[in_pocket]):
        if str(element).strip():  # files without an element column are read by atom name
            atomic_number(str(element), where=f"{protein_path} pocket atom {name}")
    out = unimol_pocket_input(atoms.atom_name[in_pocket], atoms.coord[in_pocket], labels[in_pocket],
                              dictionary, max_atoms=max_atoms, seed=seed)
    out["excluded_ligand_atoms"] = excluded
    return out
