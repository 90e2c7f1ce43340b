"""The element and geometry rules every featurizer shares (featurize/checks.py), and a pocket
cut from a complex that still holds its ligand."""
import importlib.util
import os

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molbind_data.featurize import (
    FLAT_COORDINATES,
    NO_POCKET_ATOMS,
    NONFINITE_COORDINATES,
    UNKNOWN_ELEMENT,
    ZERO_COORDINATES,
    SkipRecord,
)
from molbind_data.featurize import checks
from molbind_data.featurize import conformer as conf
from molbind_data.featurize.graph import mol_to_graph, smiles_to_graph
from molbind_data.featurize.pocket import extract_pocket, unimol_pocket_input

SITE = os.path.dirname(os.path.dirname(importlib.util.find_spec("posebusters").origin))
POSEBUSTERS = os.path.join(SITE, "posebusters", "datasets", "pdb")


def _reason(fn, *args, **kwargs):
    with pytest.raises(SkipRecord) as err:
        fn(*args, **kwargs)
    return err.value.reason


def _sdf(tmp_path, mols, name="mols.sdf"):
    path = str(tmp_path / name)
    with Chem.SDWriter(path) as w:
        for m in mols:
            w.write(m)
    return path


def _depiction(smiles, hydrogens=True):
    mol = Chem.MolFromSmiles(smiles)
    mol = Chem.AddHs(mol) if hydrogens else mol
    AllChem.Compute2DCoords(mol)
    return mol


def _embedded(smiles, seed=0):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    return mol


# ----------------------------------------------------------------------------- elements

def test_atomic_number_rule():
    assert [checks.atomic_number(s) for s in ("C", "cl", "ZN", "Og", 1, 118)] == [6, 17, 30, 118, 1, 118]
    for bad in ("*", "R", "X", "Xx", "", 0, 119):
        assert _reason(checks.atomic_number, bad) == UNKNOWN_ELEMENT
    assert checks.atomic_number(Chem.MolFromSmiles("[Se]").GetAtomWithIdx(0)) == 34


def test_a_dummy_atom_is_refused_by_every_tower(tmp_path):
    # graph tower
    assert _reason(smiles_to_graph, "*CCO") == UNKNOWN_ELEMENT
    # conformer tower, from SMILES (before any embedding), from symbols, from an SDF
    assert _reason(conf.generate_conformers, "*CCO", 1, 0) == UNKNOWN_ELEMENT
    assert _reason(conf.unimol_input, ["*", "C", "O"], np.eye(3, dtype=np.float32)) == UNKNOWN_ELEMENT
    mol = Chem.MolFromSmiles("*CCO")
    conformer = Chem.Conformer(mol.GetNumAtoms())
    for i, xyz in enumerate([(0, 0, 0), (1.5, 0, 0), (2.0, 1.4, 0.3), (3.4, 1.5, -0.5)]):
        conformer.SetAtomPosition(i, xyz)
    mol.AddConformer(conformer)
    assert _reason(conf.mol_conformer, mol) == UNKNOWN_ELEMENT
    records, skipped = conf.sdf_to_unimol(_sdf(tmp_path, [mol, _embedded("CCO")]))
    assert skipped == {UNKNOWN_ELEMENT: 1} and [r["index"] for r in records] == [1]
    # pocket tower: a ligand with a dummy atom, a pocket atom whose element is no element
    assert _reason(extract_pocket, _toy_pdb(tmp_path), mol) == UNKNOWN_ELEMENT
    assert _reason(extract_pocket, _toy_pdb(tmp_path, extra=[_atom(99, "X1", "UNK", "A", 9, (0, 0, 3.0), "X",
                                                                   het=True)]), np.zeros((1, 3))) == UNKNOWN_ELEMENT
    # a real element the dictionaries lack is still an element: [UNK] (3), as in the original
    np.testing.assert_array_equal(conf.unimol_input(["Xe", "C"], np.eye(2, 3, dtype=np.float32))["conformer_tokens"],
                                  [1, 3, 4, 2])
    assert mol_to_graph(Chem.MolFromSmiles("[Xe]"))["graph_node_feat"].tolist() == [[53, 0]]


# ----------------------------------------------------------------------------- coordinates

def test_nonfinite_coordinates_are_refused_never_repaired():
    for bad in (np.nan, np.inf, -np.inf):
        xyz = np.array([[[0, 0, 0], [1.5, 0, 0], [1.5, 1.5, 0]]], np.float32)
        xyz[0, 1, 2] = bad
        assert _reason(conf.unimol_input, ["C", "C", "O"], xyz) == NONFINITE_COORDINATES
        assert _reason(unimol_pocket_input, ["CA", "N", "O"], xyz[0]) == NONFINITE_COORDINATES
        assert _reason(extract_pocket, "unused.pdb", xyz[0]) == NONFINITE_COORDINATES  # the ligand
    # a NaN in a hydrogen, which the tower never sees, is still refused
    xyz = np.array([[0, 0, 0], [1.5, 0, 0], [np.nan, 0, 0]], np.float32)
    assert _reason(conf.unimol_input, ["C", "C", "H"], xyz) == NONFINITE_COORDINATES


def test_all_atoms_at_one_point_are_refused(tmp_path):
    with pytest.raises(SkipRecord) as err:
        conf.unimol_input(["C", "C", "O"], np.zeros((1, 3, 3), np.float32))
    assert err.value.reason == ZERO_COORDINATES and "the origin" in err.value.detail
    # one bad conformer of several is enough; a point other than the origin too
    xyz = np.stack([np.eye(3), np.full((3, 3), 2.0)]).astype(np.float32)
    with pytest.raises(SkipRecord) as err:
        conf.unimol_input(["C", "C", "O"], xyz)
    assert err.value.reason == ZERO_COORDINATES and "conformer 1" in err.value.detail
    # a single atom has no geometry to get wrong
    np.testing.assert_array_equal(conf.unimol_input(["C"], np.zeros((1, 1, 3)))["conformer_tokens"], [1, 4, 2])
    assert _reason(unimol_pocket_input, ["CA", "N"], np.zeros((2, 3))) == ZERO_COORDINATES
    # an SDF record with every coordinate 0
    zero = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    zero.AddConformer(Chem.Conformer(zero.GetNumAtoms()))
    records, skipped = conf.sdf_to_unimol(_sdf(tmp_path, [zero, _embedded("CCO")]))
    assert skipped == {ZERO_COORDINATES: 1} and [r["index"] for r in records] == [1]


def test_a_2d_depiction_is_not_a_conformer(tmp_path):
    flat = _depiction("CC(C)O")  # isopropanol drawn in 2D: every z = 0, tetrahedral carbons
    assert (flat.GetConformer().GetPositions()[:, 2] == 0).all()
    with pytest.raises(SkipRecord) as err:
        conf.mol_conformer(flat)
    assert err.value.reason == FLAT_COORDINATES and "atom 0 (C) is tetrahedral" in err.value.detail
    # heavy atoms only (implicit H still make the centre carbon tetrahedral)
    assert _reason(conf.mol_conformer, _depiction("CC(C)O", hydrogens=False)) == FLAT_COORDINATES
    # the parity option keeps it, as Uni-Mol did
    atoms, coords = conf.mol_conformer(flat, allow_flat=True)
    assert coords.shape == (1, 12, 3) and (coords[..., 2] == 0).all()
    # planar molecules in a z plane are real 3D geometries: benzene, formaldehyde with H
    for smiles, n in (("c1ccccc1", 12), ("C=O", 4)):
        atoms, coords = conf.mol_conformer(_depiction(smiles))
        assert coords.shape == (1, n, 3)
    # three atoms are always in a plane, whatever the molecule
    assert conf.mol_conformer(_depiction("CCO", hydrogens=False))[1].shape == (1, 3, 3)
    # an SDF mixing a depiction and a real conformer: one record, one counted skip
    path = _sdf(tmp_path, [flat, _embedded("CC(C)O"), _depiction("c1ccccc1")])
    records, skipped = conf.sdf_to_unimol(path)
    assert skipped == {FLAT_COORDINATES: 1} and [r["index"] for r in records] == [1, 2]
    records, skipped = conf.sdf_to_unimol(path, allow_flat=True)
    assert skipped == {} and len(records) == 3


def test_the_flat_rule_on_an_unsanitized_molecule():
    # no hybridization: an atom with four neighbours (implicit H counted) counts as tetrahedral
    def unsanitized(smiles):
        mol = _depiction(smiles, hydrogens=False)
        raw = Chem.RWMol(mol)
        for atom in raw.GetAtoms():
            atom.SetHybridization(Chem.rdchem.HybridizationType.UNSPECIFIED)
        return raw, mol.GetConformer().GetPositions()

    raw, xyz = unsanitized("OC(=O)C(C)(C)C")
    assert checks.tetrahedral_atoms(raw) == [3, 4, 5, 6]
    assert "atom 3 (C)" in checks.is_flat_depiction(raw, xyz)
    raw, xyz = unsanitized("OC(=O)C=CC=O")  # three neighbours at most: may be planar
    assert checks.tetrahedral_atoms(raw) == [] and checks.is_flat_depiction(raw, xyz) == ""


# ----------------------------------------------------------------------------- pockets

def _atom(serial, name, res, chain, resid, xyz, element, het=False):
    record = "HETATM" if het else "ATOM  "
    return (f"{record}{serial:5d} {name:<4s} {res:>3s} {chain}{resid:4d}    "
            f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00          {element:>2s}\n")


LIGAND = np.array([[0.0, 0, 0], [1.4, 0, 0], [0.7, 1.2, 0]])


def _toy_pdb(tmp_path, extra=(), name="toy.pdb"):
    """ALA 1 near, a water near, a zinc near, and the ligand itself as HETATM LIG 10 (its three
    atoms within 0.3 A of LIGAND, plus a fourth atom the ligand array does not list)."""
    lines = [
        _atom(1, "N", "ALA", "A", 1, (3.0, 0, 0), "N"),
        _atom(2, "CA", "ALA", "A", 1, (4.0, 0, 0), "C"),
        _atom(3, "O", "HOH", "A", 4, (0, 0, 2.5), "O", het=True),
        _atom(4, "ZN", "ZN", "A", 5, (0, 0, -3.0), "ZN", het=True),
        _atom(5, "C1", "LIG", "B", 10, (0.1, 0, 0), "C", het=True),
        _atom(6, "C2", "LIG", "B", 10, (1.4, 0.2, 0), "C", het=True),
        _atom(7, "O1", "LIG", "B", 10, (0.7, 1.2, 0.3), "O", het=True),
        _atom(8, "N1", "LIG", "B", 10, (0.7, 2.6, 0), "N", het=True),
        *extra,
    ]
    path = tmp_path / name
    path.write_text("".join(lines) + "END\n")
    return str(path)


def test_the_ligand_copy_in_a_complex_is_left_out(tmp_path):
    pdb = _toy_pdb(tmp_path)
    out = extract_pocket(pdb, LIGAND)
    # ALA N CA, ZN (-> [UNK]); no water, no LIG atom
    np.testing.assert_array_equal(out["pocket_tokens"], [1, 5, 4, 3, 2])
    assert out["residues"] == ["A:ALA:1", "A:ALA:1", "A:ZN:5"]
    assert out["excluded_ligand_atoms"] == 4
    kept = extract_pocket(pdb, LIGAND, keep_ligand_atoms=True)
    np.testing.assert_array_equal(kept["pocket_tokens"], [1, 5, 4, 3, 4, 4, 6, 5, 2])
    assert kept["residues"][3:] == ["B:LIG:10"] * 4 and kept["excluded_ligand_atoms"] == 0
    # a tighter tolerance than the copy's 0.3 A offsets keeps it
    assert extract_pocket(pdb, LIGAND, ligand_tolerance=0.1)["excluded_ligand_atoms"] == 0
    # nothing but the ligand near: no pocket, and the message says why
    alone = str(tmp_path / "alone.pdb")
    with open(pdb) as f, open(alone, "w") as g:
        g.writelines(line for line in f if " LIG " in line or line.startswith("END"))
    with pytest.raises(SkipRecord) as err:
        extract_pocket(alone, LIGAND)
    assert err.value.reason == NO_POCKET_ATOMS and "only the ligand" in err.value.detail


def test_real_complex_with_the_ligand_put_back(tmp_path):
    """1ia1 with its ligand written back as HETATM gives the pocket of the ligand-free file."""
    folder = os.path.join(POSEBUSTERS, "1ia1")
    protein = os.path.join(folder, "1ia1_protein_one_lig_removed.pdb")
    ligand = os.path.join(folder, "1ia1_ligand.sdf")
    mol = next(iter(Chem.SDMolSupplier(ligand, removeHs=False)))
    lines = [line for line in open(protein) if not line.startswith(("END", "CONECT", "MASTER"))]
    heavy = [a for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    xyz = mol.GetConformer().GetPositions()
    lines += [_atom(90000 + k, f"{a.GetSymbol()}{k}", "LIG", "Z", 900, xyz[a.GetIdx()], a.GetSymbol(), het=True)
              for k, a in enumerate(heavy)]
    complex_pdb = str(tmp_path / "1ia1_complex.pdb")
    with open(complex_pdb, "w") as f:
        f.writelines(lines + ["END\n"])
    clean = extract_pocket(protein, ligand, max_atoms=1000)
    cut = extract_pocket(complex_pdb, ligand, max_atoms=1000)
    assert clean["excluded_ligand_atoms"] == 0 and cut["excluded_ligand_atoms"] == len(heavy)
    np.testing.assert_array_equal(cut["pocket_tokens"], clean["pocket_tokens"])
    np.testing.assert_allclose(cut["pocket_coords"], clean["pocket_coords"], atol=1e-5)
    kept = extract_pocket(complex_pdb, ligand, max_atoms=1000, keep_ligand_atoms=True)
    assert len(kept["pocket_tokens"]) == len(clean["pocket_tokens"]) + len(heavy)
