"""SMILES / RDKit molecules -> 2D graphs with the Hu et al. (2020) "simple" features.

This is the featurization the MolBind GIN (a Hu et al.-style pretrained GIN) expects
(spec section 3 "2D graphs", MolCA `mol_to_graph_data_obj_simple`):

  node features  [atomic_num - 1, chirality tag index]
  edge features  [bond type index, bond direction index], every bond as (i, j) then (j, i)

Heavy atoms only: hydrogens stay implicit, as in the pretrained GIN's training data.

Vocabularies (they index fixed embedding tables, so no value may fall outside them):
  atomic_num - 1  0..117 (rows 118 and 119 of the GIN table are unused / the mask token)
  chirality       CHI_UNSPECIFIED=0, CHI_TETRAHEDRAL_CW=1, CHI_TETRAHEDRAL_CCW=2.
                  The table has only 3 rows, so every other RDKit tag (CHI_OTHER, the
                  non-tetrahedral CHI_ALLENE / SQUAREPLANAR / TRIGONALBIPYRAMIDAL / OCTAHEDRAL
                  and the unresolved CHI_TETRAHEDRAL) maps to 0 "unspecified": the GIN never
                  saw those geometries, and "no chirality information" is the honest reading.
  bond type       SINGLE=0, DOUBLE=1, TRIPLE=2, AROMATIC=3. Rows 4 (self loop) and 5 (mask)
                  are reserved for the model. Other RDKit types (DATIVE, ZERO, ONEANDAHALF,
                  ...) occur only in organometallics; they map to SINGLE=0, the closest
                  "one shared connection" meaning, instead of dropping the molecule.
  bond direction  NONE=0, ENDUPRIGHT=1, ENDDOWNRIGHT=2 (the SMILES '/' '\\' marks of E/Z
                  double bonds). Wedge/dash and unknown directions map to NONE=0.
"""
from __future__ import annotations

import numpy as np
from rdkit import Chem, rdBase

from molbind_data.featurize import EMPTY_MOLECULE, INVALID_SMILES, SkipRecord
from molbind_data.featurize.checks import atomic_number

NUM_ATOM_TYPES = 118  # atomic numbers 1..118 -> indices 0..117
CHIRALITY_INDEX = {
    Chem.rdchem.ChiralType.CHI_UNSPECIFIED: 0,
    Chem.rdchem.ChiralType.CHI_TETRAHEDRAL_CW: 1,
    Chem.rdchem.ChiralType.CHI_TETRAHEDRAL_CCW: 2,
}
BOND_TYPE_INDEX = {
    Chem.rdchem.BondType.SINGLE: 0,
    Chem.rdchem.BondType.DOUBLE: 1,
    Chem.rdchem.BondType.TRIPLE: 2,
    Chem.rdchem.BondType.AROMATIC: 3,
}
BOND_DIR_INDEX = {
    Chem.rdchem.BondDir.NONE: 0,
    Chem.rdchem.BondDir.ENDUPRIGHT: 1,
    Chem.rdchem.BondDir.ENDDOWNRIGHT: 2,
}


def parse_smiles(smiles) -> Chem.Mol:
    """RDKit molecule from SMILES, or SkipRecord(INVALID_SMILES / EMPTY_MOLECULE)."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise SkipRecord(EMPTY_MOLECULE if isinstance(smiles, str) else INVALID_SMILES, repr(smiles)[:80])
    logs = rdBase.BlockLogs()  # RDKit prints every parse error; the skip report counts them
    try:
        mol = Chem.MolFromSmiles(smiles.strip())
    finally:
        del logs
    if mol is None:
        raise SkipRecord(INVALID_SMILES, smiles[:200])
    if mol.GetNumAtoms() == 0:
        raise SkipRecord(EMPTY_MOLECULE, smiles[:200])
    return mol


def mol_to_graph(mol: Chem.Mol) -> dict:
    """Hu et al. graph of an RDKit molecule (explicit hydrogens are removed first)."""
    if mol is None:
        raise SkipRecord(INVALID_SMILES, "no molecule")
    if any(a.GetAtomicNum() == 1 for a in mol.GetAtoms()):
        # Keep H atoms only when they are the whole molecule (e.g. [H][H]); RemoveHs keeps those.
        mol = Chem.RemoveHs(mol, sanitize=False)
    n = mol.GetNumAtoms()
    if n == 0:
        raise SkipRecord(EMPTY_MOLECULE, "molecule without atoms")

    nodes = np.zeros((n, 2), dtype=np.int32)
    for atom in mol.GetAtoms():
        # the element rule every tower shares (checks.py): atomic number 0 ('*', query atoms) is refused
        z = atomic_number(atom, where=f"atom {atom.GetIdx()}")
        nodes[atom.GetIdx()] = (z - 1, CHIRALITY_INDEX.get(atom.GetChiralTag(), 0))

    e = 2 * mol.GetNumBonds()
    edge_index = np.zeros((2, e), dtype=np.int32)
    edge_feat = np.zeros((e, 2), dtype=np.int32)
    for k, bond in enumerate(mol.GetBonds()):
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        feat = (BOND_TYPE_INDEX.get(bond.GetBondType(), 0), BOND_DIR_INDEX.get(bond.GetBondDir(), 0))
        edge_index[:, 2 * k] = (i, j)
        edge_index[:, 2 * k + 1] = (j, i)
        edge_feat[2 * k] = feat
        edge_feat[2 * k + 1] = feat
    return {"graph_node_feat": nodes, "graph_edge_index": edge_index, "graph_edge_feat": edge_feat}


def smiles_to_graph(smiles: str) -> dict:
    """Hu et al. graph of a SMILES string (see the module docstring for the vocabularies)."""
    return mol_to_graph(parse_smiles(smiles))


def canonical_smiles(smiles_or_mol) -> str:
    """RDKit canonical isomeric SMILES ('' when the input cannot be parsed)."""
    mol = smiles_or_mol
    if isinstance(smiles_or_mol, str):
        try:
            mol = parse_smiles(smiles_or_mol)
        except SkipRecord:
            return ""
    if mol is None:
        return ""
    try:
        return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
    except Exception:  # noqa: BLE001 - an unsanitizable molecule still has coordinates worth keeping
        return ""
