"""The checks every featurizer shares: which atoms are elements, which coordinates are 3D.

One function decides each question, so the graph, conformer and pocket featurizers refuse
the same inputs for the same reason (docs/featurize.md "Element and geometry rules"):

  * `atomic_number(atom)`: an RDKit atom, an atomic number or an element symbol must name one
    of the 118 elements; atomic number 0 (`*`, attachment points, query atoms) and symbols
    that are no element (`R`, `X`, `Xx`) raise SkipRecord(UNKNOWN_ELEMENT). Elements the
    Uni-Mol dictionaries lack (Xe, ...) are still elements: they become `[UNK]`, as in the
    original.
  * `check_coordinates(coords)`: every value finite (else NONFINITE_COORDINATES, never
    repaired) and, for two or more atoms, not all atoms at one point (all-zero coordinates
    included: ZERO_COORDINATES).
  * `is_flat_depiction(mol, coords)`: a 2D drawing passed off as 3D coordinates (FLAT_COORDINATES).
"""
from __future__ import annotations

import functools

import numpy as np

from molbind_data.featurize import (
    FLAT_COORDINATES,
    NONFINITE_COORDINATES,
    UNKNOWN_ELEMENT,
    ZERO_COORDINATES,
    SkipRecord,
)

NUM_ELEMENTS = 118
# Coordinates closer than this (Angstrom) count as equal: atoms "at one point", "all z equal".
COINCIDENT_TOLERANCE = 1e-3
# A flat depiction needs at least this many atoms: three points always lie in one plane.
FLAT_MIN_ATOMS = 4


@functools.lru_cache(maxsize=1)
def _symbols() -> dict[str, int]:
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    return {table.GetElementSymbol(z).upper(): z for z in range(1, NUM_ELEMENTS + 1)}


def atomic_number(atom, where: str = "") -> int:
    """The atomic number (1..118) of an RDKit atom, an int or an element symbol (any case);
    SkipRecord(UNKNOWN_ELEMENT) for anything that is not an element. `where` prefixes the
    detail (e.g. "atom 3")."""
    prefix = f"{where}: " if where else ""
    if hasattr(atom, "GetAtomicNum"):
        z, label = int(atom.GetAtomicNum()), atom.GetSymbol()
    elif isinstance(atom, (int, np.integer)):
        z, label = int(atom), str(int(atom))
    else:
        label = str(atom).strip()
        z = _symbols().get(label.upper(), 0)
        if z == 0:
            raise SkipRecord(UNKNOWN_ELEMENT, f"{prefix}{label!r} is not an element symbol")
    if not 1 <= z <= NUM_ELEMENTS:
        raise SkipRecord(UNKNOWN_ELEMENT, f"{prefix}atomic number {z} ({label}): a dummy or query atom, "
                                          "not an element")
    return z


def check_elements(symbols, what: str = "molecule") -> None:
    """`atomic_number` on every symbol (the first offender is named)."""
    for i, s in enumerate(symbols):
        atomic_number(s, where=f"{what} atom {i}")


def check_coordinates(coords, what: str = "molecule") -> np.ndarray:
    """Returns `coords` ([..., n, 3]) when every value is finite and, per leading index
    (conformer), two or more atoms do not all sit at one point; else SkipRecord
    NONFINITE_COORDINATES / ZERO_COORDINATES."""
    xyz = np.asarray(coords)
    if not np.isfinite(xyz).all():
        bad = np.argwhere(~np.isfinite(xyz))[0]
        raise SkipRecord(NONFINITE_COORDINATES, f"{what}: non-finite coordinate at index {tuple(int(i) for i in bad)}")
    flat = xyz.reshape(-1, xyz.shape[-2], 3) if xyz.ndim >= 2 else xyz.reshape(1, -1, 3)
    if flat.shape[1] >= 2:
        spread = np.abs(flat - flat[:, :1]).max(axis=(1, 2))
        if (spread <= COINCIDENT_TOLERANCE).any():
            k = int(np.argmax(spread <= COINCIDENT_TOLERANCE))
            at_zero = bool(np.abs(flat[k]).max() <= COINCIDENT_TOLERANCE)
            raise SkipRecord(ZERO_COORDINATES, f"{what}: all {flat.shape[1]} atoms of conformer {k} are at "
                                               f"{'the origin' if at_zero else 'one point'}")
    return xyz


def tetrahedral_atoms(mol) -> list[int]:
    """Indices of atoms that cannot lie in one plane with their neighbours in 3D: sp3 with
    three or more neighbours, hydrogens counted (implicit ones too). For a molecule RDKit could
    not sanitize (no hybridization), atoms with four or more neighbours."""
    from rdkit import Chem

    sp3 = Chem.rdchem.HybridizationType.SP3
    out = []
    for atom in mol.GetAtoms():
        degree = atom.GetTotalDegree()
        hybrid = atom.GetHybridization()
        known = hybrid != Chem.rdchem.HybridizationType.UNSPECIFIED
        if (known and hybrid == sp3 and degree >= 3) or (not known and degree >= 4):
            out.append(atom.GetIdx())
    return out


def is_flat_depiction(mol, coords) -> str:
    """Why `coords` ([n, 3], the atoms of `mol`) look like a 2D drawing, or "" when they do not.

    The rule: at least FLAT_MIN_ATOMS atoms, every z equal (within COINCIDENT_TOLERANCE), and
    the molecule has a tetrahedral atom (`tetrahedral_atoms`), which no real 3D geometry puts
    in one plane with its neighbours. A planar molecule (benzene, formaldehyde) lying in a z
    plane is a valid 3D geometry (QM9 writes many that way) and passes.
    """
    xyz = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    if len(xyz) < FLAT_MIN_ATOMS or np.ptp(xyz[:, 2]) > COINCIDENT_TOLERANCE:
        return ""
    tetra = tetrahedral_atoms(mol)
    if not tetra:
        return ""
    return (f"all {len(xyz)} atoms have z = {xyz[0, 2]:.4g} but atom {tetra[0]} "
            f"({mol.GetAtomWithIdx(tetra[0]).GetSymbol()}) is tetrahedral: a 2D depiction, not a 3D conformer")


def check_flat(mol, coords) -> None:
    """SkipRecord(FLAT_COORDINATES) when `is_flat_depiction` says so."""
    why = is_flat_depiction(mol, coords)
    if why:
        raise SkipRecord(FLAT_COORDINATES, why)
