"""Pocket featurizer: a hand-made PDB, real complexes against a brute-force reference, skips."""
import importlib.util
import os

import numpy as np
import pytest
from rdkit import Chem

from molbind_data.featurize import NO_POCKET_ATOMS, UNREADABLE_FILE, SkipRecord
from molbind_data.featurize.pocket import extract_pocket, unimol_pocket_input

SITE = os.path.dirname(os.path.dirname(importlib.util.find_spec("posebusters").origin))
POSEBUSTERS = os.path.join(SITE, "posebusters", "datasets", "pdb")
PERSES = os.path.join(SITE, "openmmforcefields", "data", "perses_jacs_systems")


def _atom(serial, name, res, chain, resid, xyz, element, het=False):
    record = "HETATM" if het else "ATOM  "
    return (f"{record}{serial:5d} {name:<4s} {res:>3s} {chain}{resid:4d}    "
            f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00          {element:>2s}\n")


@pytest.fixture
def toy_pdb(tmp_path):
    """Ligand at the origin. ALA 1 near (full), GLY 2 far, SER 3 near with no backbone,
    a water and a zinc ion near, hydrogens near."""
    lines = [
        _atom(1, "N", "ALA", "A", 1, (2.0, 0, 0), "N"),
        _atom(2, "CA", "ALA", "A", 1, (3.0, 0, 0), "C"),
        _atom(3, "C", "ALA", "A", 1, (4.0, 0, 0), "C"),
        _atom(4, "O", "ALA", "A", 1, (5.0, 0, 0), "O"),
        _atom(5, "CB", "ALA", "A", 1, (7.5, 0, 0), "C"),  # beyond 6 A but its residue is in
        _atom(6, "H", "ALA", "A", 1, (1.0, 0, 0), "H"),
        _atom(7, "N", "GLY", "A", 2, (20.0, 0, 0), "N"),
        _atom(8, "CA", "GLY", "A", 2, (21.0, 0, 0), "C"),
        _atom(9, "CB", "SER", "A", 3, (0, 4.0, 0), "C"),  # side chain only
        _atom(10, "OG", "SER", "A", 3, (0, 5.0, 0), "O"),
        _atom(11, "HG", "SER", "A", 3, (0, 5.5, 0), "H"),
        _atom(12, "O", "HOH", "A", 4, (0, 0, 2.0), "O", het=True),
        _atom(13, "ZN", "ZN", "A", 5, (0, 0, -3.0), "ZN", het=True),
    ]
    path = tmp_path / "toy.pdb"
    path.write_text("".join(lines) + "END\n")
    return str(path)


def test_toy_pocket_by_hand(toy_pdb):
    out = extract_pocket(toy_pdb, np.zeros((1, 3)), cutoff=6.0)
    # ALA N CA C O CB, SER CB OG, ZN (-> "Z" -> [UNK]); no water, no H, no GLY
    np.testing.assert_array_equal(out["pocket_tokens"], [1, 5, 4, 4, 6, 4, 4, 6, 3, 2])
    assert out["residues"] == ["A:ALA:1"] * 5 + ["A:SER:3"] * 2 + ["A:ZN:5"]
    xyz = np.array([[2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0], [7.5, 0, 0], [0, 4, 0], [0, 5, 0], [0, 0, -3]])
    np.testing.assert_allclose(out["pocket_coords"][1:-1], xyz - xyz.mean(0), atol=1e-5)
    assert (out["pocket_coords"][[0, -1]] == 0).all()
    assert out["pocket_tokens"].dtype == np.int32 and out["pocket_coords"].dtype == np.float32
    # a tighter cutoff keeps only SER (4 A) and ZN (3 A)
    # a tighter cutoff: ALA (N at 2 A) and ZN (3 A) stay, SER (4 A) goes
    np.testing.assert_array_equal(extract_pocket(toy_pdb, np.zeros((1, 3)), cutoff=3.5)["pocket_tokens"],
                                  [1, 5, 4, 4, 6, 4, 3, 2])


def test_mmcif_and_binarycif_give_the_same_pocket(toy_pdb, tmp_path):
    import biotite.structure.io.pdb as pdb
    import biotite.structure.io.pdbx as pdbx

    atoms = pdb.PDBFile.read(toy_pdb).get_structure(model=1)
    cif = pdbx.CIFFile()
    pdbx.set_structure(cif, atoms)
    cif_path = str(tmp_path / "toy.cif")
    cif.write(cif_path)
    bcif = pdbx.BinaryCIFFile()
    pdbx.set_structure(bcif, atoms)
    bcif_path = str(tmp_path / "toy.bcif")
    bcif.write(bcif_path)
    a = extract_pocket(toy_pdb, np.zeros((1, 3)))
    for path in (cif_path, bcif_path):
        b = extract_pocket(path, np.zeros((1, 3)))
        np.testing.assert_array_equal(a["pocket_tokens"], b["pocket_tokens"])
        np.testing.assert_allclose(a["pocket_coords"], b["pocket_coords"], atol=1e-5)
        assert a["residues"] == b["residues"]


def _brute_force_pocket(pdb_path, ligand_xyz, cutoff):
    """Independent reference: parse ATOM/HETATM columns by hand, numpy distances."""
    rows = []
    with open(pdb_path) as f:
        for line in f:
            if line.startswith("ENDMDL"):
                break
            if not line.startswith(("ATOM", "HETATM")) or line[16] not in " A":
                continue
            name, res = line[12:16].strip(), line[17:20].strip()
            element = line[76:78].strip().upper()
            if element in ("H", "D") or res == "HOH":
                continue
            rows.append((name, (line[21], line[22:27]), [float(line[30:38]), float(line[38:46]), float(line[46:54])]))
    xyz = np.array([r[2] for r in rows])
    d = np.sqrt(((xyz[:, None] - ligand_xyz[None]) ** 2).sum(-1)).min(1)
    near = {rows[i][1] for i in np.nonzero(d <= cutoff)[0]}
    return [r for r in rows if r[1] in near]


@pytest.mark.parametrize("complex_id", ["1ia1", "1uou"])
def test_real_complex_against_brute_force(complex_id):
    folder = os.path.join(POSEBUSTERS, complex_id)
    protein = os.path.join(folder, f"{complex_id}_protein_one_lig_removed.pdb")
    ligand = os.path.join(folder, f"{complex_id}_ligand.sdf")
    mol = next(iter(Chem.SDMolSupplier(ligand, removeHs=False)))
    lig_xyz = mol.GetConformer().GetPositions()[[a.GetAtomicNum() > 1 for a in mol.GetAtoms()]]
    expected = _brute_force_pocket(protein, lig_xyz, 6.0)
    out = extract_pocket(protein, ligand, cutoff=6.0, max_atoms=1000)
    assert len(out["pocket_tokens"]) == len(expected) + 2
    first = {"C": 4, "N": 5, "O": 6, "S": 7}
    np.testing.assert_array_equal(out["pocket_tokens"][1:-1], [first.get(r[0][0], 3) for r in expected])
    xyz = np.array([r[2] for r in expected])
    np.testing.assert_allclose(out["pocket_coords"][1:-1], xyz - xyz.mean(0), atol=1e-3)
    # the same pocket from an RDKit molecule and from bare coordinates
    np.testing.assert_array_equal(extract_pocket(protein, mol, max_atoms=1000)["pocket_tokens"], out["pocket_tokens"])
    np.testing.assert_array_equal(extract_pocket(protein, lig_xyz, max_atoms=1000)["pocket_tokens"], out["pocket_tokens"])


def test_crop_samples_near_the_centre_deterministically():
    protein = os.path.join(PERSES, "bace", "Bace_protein.pdb")
    ligand = os.path.join(PERSES, "bace", "Bace_ligands_shifted.sdf")
    full = extract_pocket(protein, ligand, cutoff=8.0, max_atoms=0)  # 367 atoms, no crop
    m = len(full["pocket_tokens"]) - 2
    assert m > 256
    a = extract_pocket(protein, ligand, cutoff=8.0, seed=1)
    b = extract_pocket(protein, ligand, cutoff=8.0, seed=1)
    c = extract_pocket(protein, ligand, cutoff=8.0, seed=2)
    assert a["pocket_tokens"].shape == (258,) and a["pocket_coords"].shape == (258, 3) and len(a["residues"]) == 256
    np.testing.assert_array_equal(a["pocket_coords"], b["pocket_coords"])
    assert not np.array_equal(a["pocket_coords"], c["pocket_coords"])
    # the sampled atoms are real pocket atoms: the residue labels form a sub-multiset
    from collections import Counter

    assert not Counter(a["residues"]) - Counter(full["residues"])


def test_crop_probability_is_the_originals_softmax():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-15, 15, size=(300, 3)).astype(np.float32)
    labels = [str(i) for i in range(300)]
    radius = np.linalg.norm(xyz - xyz.mean(0), axis=1)
    logits = 1.0 / (radius + 1.0)
    p = np.exp(logits) / np.exp(logits).sum()
    freq = np.zeros(300)
    for seed in range(200):
        out = unimol_pocket_input(["C"] * 300, xyz, labels, max_atoms=100, seed=seed)
        chosen = np.array([int(r) for r in out["residues"]])
        expected = np.random.default_rng(seed).choice(300, 100, replace=False, p=p)
        np.testing.assert_array_equal(chosen, expected)  # same draw as the spec's formula
        freq[chosen] += 1
    # coordinates are the chosen atoms, re-centred after the crop
    np.testing.assert_allclose(out["pocket_coords"][1:-1], xyz[chosen] - xyz[chosen].mean(0), atol=1e-4)
    order = np.argsort(radius)
    assert freq[order[:20]].mean() > freq[order[-20:]].mean() + 0.02 * 200  # central atoms kept more often


def test_unimol_pocket_input_original_steps():
    names = ["N", "CA", "OG1", "ZN", "HB2", "SD"]
    coords = np.arange(18, dtype=np.float32).reshape(6, 3)
    out = unimol_pocket_input(names, coords, ["ALA"] * 5)  # one residue short -> cut to 5 atoms
    np.testing.assert_array_equal(out["pocket_tokens"], [1, 5, 4, 6, 3, 2])  # CA->C, OG1->O, ZN->Z->[UNK], H dropped
    assert out["residues"] == ["ALA"] * 4


def test_skip_reasons(toy_pdb, tmp_path):
    with pytest.raises(SkipRecord) as err:
        extract_pocket(toy_pdb, np.array([[500.0, 500.0, 500.0]]))
    assert err.value.reason == NO_POCKET_ATOMS
    with pytest.raises(SkipRecord) as err:
        extract_pocket(str(tmp_path / "missing.pdb"), np.zeros((1, 3)))
    assert err.value.reason == UNREADABLE_FILE
    garbage = tmp_path / "garbage.pdb"
    garbage.write_text("hello\nthis is not a structure\n")
    with pytest.raises(SkipRecord) as err:
        extract_pocket(str(garbage), np.zeros((1, 3)))
    assert err.value.reason == UNREADABLE_FILE
    with pytest.raises(SkipRecord) as err:
        extract_pocket(toy_pdb, str(tmp_path / "missing.sdf"))
    assert err.value.reason == UNREADABLE_FILE
