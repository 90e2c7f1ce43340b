"""Hu et al. graph featurizer: hand-checked molecules, agreement with RDKit, skip reasons."""
import numpy as np
import pytest
from rdkit import Chem

from molbind_data.featurize import EMPTY_MOLECULE, INVALID_SMILES, UNKNOWN_ELEMENT, SkipRecord
from molbind_data.featurize.graph import canonical_smiles, mol_to_graph, smiles_to_graph


def _bonds(g):
    """{(i, j): (type, dir)} from the stored arrays."""
    return {tuple(map(int, g["graph_edge_index"][:, k])): tuple(map(int, g["graph_edge_feat"][k]))
            for k in range(g["graph_edge_index"].shape[1])}


def test_ethanol_by_hand():
    g = smiles_to_graph("CCO")
    np.testing.assert_array_equal(g["graph_node_feat"], [[5, 0], [5, 0], [7, 0]])  # C=6-1, O=8-1
    np.testing.assert_array_equal(g["graph_edge_index"], [[0, 1, 1, 2], [1, 0, 2, 1]])
    np.testing.assert_array_equal(g["graph_edge_feat"], np.zeros((4, 2)))
    assert {k: v.dtype for k, v in g.items()} == {k: np.int32 for k in g}


def test_benzene_is_aromatic_in_both_directions():
    g = smiles_to_graph("c1ccccc1")
    assert g["graph_node_feat"].shape == (6, 2) and g["graph_edge_index"].shape == (2, 12)
    assert (g["graph_edge_feat"][:, 0] == 3).all() and (g["graph_edge_feat"][:, 1] == 0).all()
    # every bond appears as (i, j) immediately followed by (j, i)
    np.testing.assert_array_equal(g["graph_edge_index"][:, 0::2], g["graph_edge_index"][::-1, 1::2])


def test_double_and_triple_bonds():
    assert _bonds(smiles_to_graph("C=C"))[(0, 1)] == (1, 0)
    assert _bonds(smiles_to_graph("C#N"))[(0, 1)] == (2, 0)


def test_chiral_centre_cw_and_ccw():
    a = smiles_to_graph("C[C@H](N)O")["graph_node_feat"][1, 1]
    b = smiles_to_graph("C[C@@H](N)O")["graph_node_feat"][1, 1]
    assert {int(a), int(b)} == {1, 2}
    # the index follows RDKit's tag: CW -> 1, CCW -> 2
    mol = Chem.MolFromSmiles("C[C@H](N)O")
    expected = {Chem.ChiralType.CHI_TETRAHEDRAL_CW: 1, Chem.ChiralType.CHI_TETRAHEDRAL_CCW: 2}
    assert a == expected[mol.GetAtomWithIdx(1).GetChiralTag()]
    assert (smiles_to_graph("CC(N)O")["graph_node_feat"][:, 1] == 0).all()


def test_e_z_bond_directions():
    trans = _bonds(smiles_to_graph("F/C=C/F"))
    cis = _bonds(smiles_to_graph("F/C=C\\F"))
    assert trans[(0, 1)] == (0, 1) and trans[(2, 3)] == (0, 1)  # ENDUPRIGHT on both single bonds
    assert cis[(0, 1)] == (0, 1) and cis[(2, 3)] == (0, 2)  # ENDUPRIGHT then ENDDOWNRIGHT
    assert trans[(1, 2)] == cis[(1, 2)] == (1, 0)  # the double bond itself has no direction
    assert trans[(1, 0)] == trans[(0, 1)]  # the reverse edge carries the same features


def test_unusual_tags_map_into_the_tables():
    # square-planar chirality (not in the 3-row table) -> unspecified; dative bond -> single
    g = smiles_to_graph("F[Pt@SP1](Cl)(F)Cl")
    assert (g["graph_node_feat"][:, 1] == 0).all()
    assert _bonds(smiles_to_graph("N->[Fe]"))[(0, 1)] == (0, 0)


@pytest.mark.parametrize("smiles", [
    "CC(=O)Oc1ccccc1C(=O)O",  # aspirin
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C",  # caffeine
    "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O",  # (S)-ibuprofen
    "C[N+](C)(C)CC(=O)[O-]",  # charged
    "ClC(Cl)(Cl)Br",
    "[Na+].[Cl-]",  # two fragments, no bonds
])
def test_against_rdkit(smiles):
    mol = Chem.MolFromSmiles(smiles)
    g = smiles_to_graph(smiles)
    assert g["graph_node_feat"].shape == (mol.GetNumAtoms(), 2)
    assert g["graph_edge_index"].shape == (2, 2 * mol.GetNumBonds())
    assert g["graph_edge_feat"].shape == (2 * mol.GetNumBonds(), 2)
    np.testing.assert_array_equal(g["graph_node_feat"][:, 0] + 1, [a.GetAtomicNum() for a in mol.GetAtoms()])
    got = {frozenset(e) for e in g["graph_edge_index"].T.tolist()}
    assert got == {frozenset((b.GetBeginAtomIdx(), b.GetEndAtomIdx())) for b in mol.GetBonds()}


def test_explicit_hydrogens_are_removed():
    mol = Chem.MolFromSmiles("CC(=O)O")
    with_h = Chem.AddHs(mol)
    a, b = mol_to_graph(mol), mol_to_graph(with_h)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_skip_reasons():
    with pytest.raises(SkipRecord) as err:
        smiles_to_graph("C1CC(")
    assert err.value.reason == INVALID_SMILES
    with pytest.raises(SkipRecord) as err:
        smiles_to_graph("")
    assert err.value.reason == EMPTY_MOLECULE
    with pytest.raises(SkipRecord) as err:
        smiles_to_graph("*CC")  # dummy atom, atomic number 0
    assert err.value.reason == UNKNOWN_ELEMENT
    with pytest.raises(SkipRecord) as err:
        smiles_to_graph(None)
    assert err.value.reason == INVALID_SMILES


def test_canonical_smiles():
    assert canonical_smiles("OCC") == canonical_smiles("C(O)C") == "CCO"
    assert canonical_smiles("not a smiles") == ""
