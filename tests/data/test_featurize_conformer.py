"""Uni-Mol conformer inputs: RDKit conformers, the original's steps 3-8 and D3Collater."""
import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molbind_data.featurize import (
    EMPTY_MOLECULE,
    INVALID_SMILES,
    NONFINITE_COORDINATES,
    TOO_MANY_ATOMS,
    TWO_D_FALLBACK,
    UNKNOWN_ELEMENT,
    UNREADABLE_FILE,
    ZERO_COORDINATES,
    SkipRecord,
)
from molbind_data.featurize import conformer as conf
from molbind_data.featurize.dictionaries import MOL_DICTIONARY

V = len(MOL_DICTIONARY)


def test_generate_conformers_ethanol_seeded():
    atoms, coords, fallback = conf.generate_conformers("CCO", num_conformers=3, seed=7)
    assert atoms == ["C", "C", "O"] + ["H"] * 6
    assert coords.shape == (3, 9, 3) and coords.dtype == np.float32 and not fallback
    again = conf.generate_conformers("CCO", num_conformers=3, seed=7)[1]
    np.testing.assert_array_equal(coords, again)
    other = conf.generate_conformers("CCO", num_conformers=3, seed=8)[1]
    assert not np.array_equal(coords, other)
    # MMFF-relaxed bond lengths: C-C about 1.51 A, C-O about 1.42 A
    assert np.linalg.norm(coords[:, 0] - coords[:, 1], axis=-1) == pytest.approx([1.51] * 3, abs=0.03)
    assert np.linalg.norm(coords[:, 1] - coords[:, 2], axis=-1) == pytest.approx([1.42] * 3, abs=0.03)


def test_generate_conformers_accepts_a_mol_and_skips_bad_smiles():
    atoms, coords, _ = conf.generate_conformers(Chem.MolFromSmiles("c1ccccc1"), num_conformers=1, seed=0)
    assert atoms.count("C") == 6 and atoms.count("H") == 6 and coords.shape == (1, 12, 3)
    with pytest.raises(SkipRecord) as err:
        conf.generate_conformers("C1CC(", 1, 0)
    assert err.value.reason == INVALID_SMILES
    with pytest.raises(SkipRecord) as err:
        conf.generate_conformers("", 1, 0)
    assert err.value.reason == EMPTY_MOLECULE


def test_embedding_failure_is_refused_unless_the_2d_fallback_is_allowed(monkeypatch):
    monkeypatch.setattr(conf, "_embed", lambda *args, **kwargs: [])
    with pytest.raises(SkipRecord) as err:
        conf.generate_conformers("CC(=O)O", num_conformers=4, seed=0)  # the default refuses
    assert err.value.reason == TWO_D_FALLBACK == "2d_fallback"
    atoms, coords, fallback = conf.generate_conformers("CC(=O)O", num_conformers=4, seed=0, allow_2d_fallback=True)
    assert fallback and coords.shape == (1, len(atoms), 3)
    assert (coords[..., 2] == 0).all() and np.abs(coords[..., :2]).max() > 0.5


def test_timed_out_embedding_is_a_failure_not_a_crash(monkeypatch):
    # RDKit returns [-1] (and no conformer) when params.timeout runs out
    monkeypatch.setattr(conf.AllChem, "EmbedMultipleConfs", lambda mol, numConfs, params: [-1])
    with pytest.raises(SkipRecord) as err:
        conf.generate_conformers("CCO", num_conformers=3, seed=0, timeout=1)
    assert err.value.reason == TWO_D_FALLBACK
    atoms, coords, fallback = conf.generate_conformers("CCO", num_conformers=3, seed=0, timeout=1,
                                                       allow_2d_fallback=True)
    assert fallback and coords.shape == (1, 9, 3)


def test_real_unembeddable_molecule_is_flagged():
    # cyclobutadiyne: two triple bonds in a 4-ring have no 3D geometry ETKDG accepts
    with pytest.raises(SkipRecord) as err:
        conf.generate_conformers("C1#CC#C1", num_conformers=2, seed=0)
    assert err.value.reason == TWO_D_FALLBACK and "C1#CC#C1" in err.value.detail
    atoms, coords, fallback = conf.generate_conformers("C1#CC#C1", num_conformers=2, seed=0, allow_2d_fallback=True)
    assert fallback and atoms == ["C"] * 4 and coords.shape == (1, 4, 3) and (coords[..., 2] == 0).all()


def test_unimol_input_ethanol_by_hand():
    atoms = ["C", "C", "O", "H", "H"]
    coords = np.array([[[0, 0, 0], [1.5, 0, 0], [1.5, 1.5, 0], [9, 9, 9], [9, 9, 9]]], np.float32)
    out = conf.unimol_input(atoms, coords)
    np.testing.assert_array_equal(out["conformer_tokens"], [1, 4, 4, 6, 2])  # [CLS] C C O [SEP]
    assert out["conformer_tokens"].dtype == np.int32 and out["conformer_coords"].dtype == np.float32
    expected = np.array([[0, 0, 0], [-1, -0.5, 0], [0.5, -0.5, 0], [0.5, 1, 0], [0, 0, 0]], np.float32)
    np.testing.assert_allclose(out["conformer_coords"][0], expected, atol=1e-6)


def test_unimol_input_keeps_all_conformers_and_centres_each():
    _, coords, _ = conf.generate_conformers("CC(=O)Oc1ccccc1C(=O)O", num_conformers=3, seed=0)
    atoms = conf.generate_conformers("CC(=O)Oc1ccccc1C(=O)O", 1, 0)[0]
    out = conf.unimol_input(atoms, coords)
    assert out["conformer_coords"].shape == (3, 13 + 2, 3)
    np.testing.assert_allclose(out["conformer_coords"][:, 1:-1].mean(axis=1), 0, atol=1e-5)
    assert (out["conformer_coords"][:, [0, -1]] == 0).all()


def test_all_hydrogen_and_unknown_symbols():
    out = conf.unimol_input(["H", "H"], np.array([[0, 0, 0], [0.74, 0, 0]], np.float32))
    np.testing.assert_array_equal(out["conformer_tokens"], [1, 8, 8, 2])  # kept: every atom was H
    out = conf.unimol_input(["C", "Xe", "Cl"], np.arange(9, dtype=np.float32).reshape(1, 3, 3))
    np.testing.assert_array_equal(out["conformer_tokens"], [1, 4, 3, 9, 2])  # Xe -> [UNK]


def test_crop_above_max_atoms_is_seeded_and_consistent():
    rng = np.random.default_rng(0)
    atoms = ["C"] * 200 + ["N"] * 100 + ["H"] * 50
    coords = rng.normal(size=(2, 350, 3)).astype(np.float32) * 10
    out = conf.unimol_input(atoms, coords, max_atoms=256, seed=3)
    assert out["conformer_tokens"].shape == (258,) and out["conformer_coords"].shape == (2, 258, 3)
    assert 8 not in out["conformer_tokens"]  # hydrogens go before cropping
    again = conf.unimol_input(atoms, coords, max_atoms=256, seed=3)
    np.testing.assert_array_equal(out["conformer_coords"], again["conformer_coords"])
    other = conf.unimol_input(atoms, coords, max_atoms=256, seed=4)
    assert not np.array_equal(out["conformer_coords"], other["conformer_coords"])
    # both conformers lost the same atoms: their centred coordinates are translates of the originals
    heavy = coords[:, :300]
    for k in range(2):
        kept = out["conformer_coords"][k, 1:-1]
        d_kept = np.linalg.norm(kept[:, None] - kept[None], axis=-1)
        d_all = np.linalg.norm(heavy[k][:, None] - heavy[k][None], axis=-1)
        assert np.isin(np.round(d_kept[0, 1:], 3), np.round(d_all, 3)).all()
    # no crop at or below the limit; 300 heavy atoms without cropping is allowed (< 512)
    assert conf.unimol_input(atoms, coords, max_atoms=0)["conformer_tokens"].shape == (302,)


def test_too_many_atoms_without_cropping_is_skipped():
    with pytest.raises(SkipRecord) as err:
        conf.unimol_input(["C"] * 600, np.arange(1800, dtype=np.float32).reshape(1, 600, 3), max_atoms=0)
    assert err.value.reason == TOO_MANY_ATOMS


def test_malformed_inputs_are_skipped():
    with pytest.raises(SkipRecord) as err:
        conf.unimol_input(["C", "O"], np.zeros((1, 3, 3)))
    assert err.value.reason == conf.MALFORMED_CONFORMER
    with pytest.raises(SkipRecord) as err:
        conf.unimol_input([], np.zeros((1, 0, 3)))
    assert err.value.reason == EMPTY_MOLECULE


def test_pair_arrays_by_hand():
    tokens = np.array([1, 4, 2])
    coords = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0]], np.float32)
    distance, edge_type = conf.pair_arrays(tokens, coords, V)
    np.testing.assert_array_equal(distance, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(edge_type, [[32, 35, 33], [125, 128, 126], [63, 66, 64]])
    assert distance.dtype == np.float32 and edge_type.dtype == np.int64


def test_distances_equal_rdkit_geometry():
    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"))  # paracetamol
    AllChem.EmbedMolecule(mol, randomSeed=1)
    rd = Chem.Get3DDistanceMatrix(mol)
    atoms = [a.GetSymbol() for a in mol.GetAtoms()]
    out = conf.unimol_input(atoms, mol.GetConformer().GetPositions()[None])
    distance, _ = conf.pair_arrays(out["conformer_tokens"], out["conformer_coords"][0], V)
    heavy = [i for i, a in enumerate(atoms) if a != "H"]
    np.testing.assert_allclose(distance[1:-1, 1:-1], rd[np.ix_(heavy, heavy)], atol=2e-5)
    # [CLS] sits on the centroid of the heavy atoms
    xyz = mol.GetConformer().GetPositions()[heavy]
    np.testing.assert_allclose(distance[0, 1:-1], np.linalg.norm(xyz - xyz.mean(0), axis=1), atol=2e-5)


@pytest.mark.parametrize("lengths,padded", [((5, 11), 16), ((8,), 8), ((9,), 16), ((17, 3), 24), ((16, 16), 16)])
def test_collate_pads_to_multiple_of_8(lengths, padded):
    rng = np.random.default_rng(0)
    samples = [(rng.integers(4, 10, n), rng.normal(size=(n, 3)).astype(np.float32)) for n in lengths]
    tokens, distance, edge_type = conf.collate_unimol(samples, V)
    assert tokens.shape == (len(lengths), padded) and distance.shape == edge_type.shape == (len(lengths), padded, padded)
    assert tokens.dtype == np.int64 and distance.dtype == np.float32 and edge_type.dtype == np.int64
    for i, (t, c) in enumerate(samples):
        n = len(t)
        d, e = conf.pair_arrays(t, c, V)
        np.testing.assert_array_equal(tokens[i, :n], t)
        np.testing.assert_array_equal(distance[i, :n, :n], d)
        np.testing.assert_array_equal(edge_type[i, :n, :n], e)
        assert (tokens[i, n:] == 0).all() and (distance[i, n:] == 0).all() and (edge_type[i, :, n:] == 0).all()


def _write_sdf(path, blocks):
    path.write_text("".join(b if b.endswith("\n") else b + "\n" for b in blocks))


def test_sdf_to_unimol_reads_coordinates_and_skips_bad_molecules(tmp_path):
    mols = []
    for smi in ("CCO", "c1ccncc1"):
        m = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(m, randomSeed=0)
        m.SetProp("_Name", smi)
        m.SetProp("text", f"about {smi}")
        mols.append(m)
    good = [Chem.MolToMolBlock(m) + ">  <text>\n" + m.GetProp("text") + "\n\n$$$$\n" for m in mols]
    broken = "broken\n  junk\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nnot an atom line\n$$$$\n"
    path = tmp_path / "mols.sdf"
    _write_sdf(path, [good[0], broken, good[1]])
    records, skipped = conf.sdf_to_unimol(str(path))
    assert [r["index"] for r in records] == [0, 2] and skipped == {UNREADABLE_FILE: 1}
    assert records[0]["name"] == "CCO" and records[1]["smiles"] == "c1ccncc1"
    assert records[0]["props"]["text"] == "about CCO"
    np.testing.assert_array_equal(records[1]["conformer_tokens"], [1, 4, 4, 4, 5, 4, 4, 2])
    xyz = mols[1].GetConformer().GetPositions()[:6]
    # the SDF stores 4 decimals
    np.testing.assert_allclose(records[1]["conformer_coords"][0, 1:-1], xyz - xyz.mean(0), atol=1e-4)


def test_sdf_to_unimol_real_ligands():
    import importlib.util
    import os

    root = os.path.dirname(importlib.util.find_spec("posebusters").origin)
    path = os.path.join(root, "datasets", "pdb", "1ia1", "1ia1_ligands.sdf")
    records, skipped = conf.sdf_to_unimol(path)
    expected = [m for m in Chem.SDMolSupplier(path, removeHs=False)]
    assert len(records) + sum(skipped.values()) == len(expected) and records
    heavy = sum(a.GetAtomicNum() != 1 for a in expected[0].GetAtoms())
    assert records[0]["conformer_tokens"].shape == (heavy + 2,)


def test_sdf_unreadable_file(tmp_path):
    with pytest.raises(SkipRecord) as err:
        conf.sdf_to_unimol(str(tmp_path / "missing.sdf"))
    assert err.value.reason == UNREADABLE_FILE
    garbage = tmp_path / "garbage.sdf"
    garbage.write_bytes(b"\x00\x01 not a molecule \xff\n$$$$\n")
    with pytest.raises(SkipRecord) as err:
        conf.sdf_to_unimol(str(garbage))
    assert err.value.reason == UNREADABLE_FILE


def _original_d3_item(atoms, coordinates, dictionary):
    """The spec's D3Dataset.__getitem__ without its random parts, in torch/numpy as the original."""
    import torch

    atoms = np.array(atoms)
    coordinates = coordinates.astype(np.float32)
    keep = atoms != "H"
    atoms, coordinates = atoms[keep], coordinates[keep]
    atom_vec = torch.tensor([dictionary.index(a) for a in atoms], dtype=torch.long)
    coordinates = coordinates - coordinates.mean(axis=0)
    atom_vec = torch.cat([torch.LongTensor([1]), atom_vec, torch.LongTensor([2])])
    coordinates = np.concatenate([np.zeros((1, 3)), coordinates, np.zeros((1, 3))], axis=0)  # float64
    edge_type = atom_vec.view(-1, 1) * len(dictionary) + atom_vec.view(1, -1)
    from scipy.spatial import distance_matrix

    dist = torch.from_numpy(distance_matrix(coordinates, coordinates).astype(np.float32))
    return atom_vec, edge_type, dist


def _original_collate(values, dims, multiple=8):
    """unicore collate_tokens / collate_tokens_2d with right padding and pad value 0."""
    import torch

    size = max(v.size(0) for v in values)
    if size % multiple != 0:
        size = int(((size - 0.1) // multiple + 1) * multiple)
    res = values[0].new(len(values), *([size] * dims)).fill_(0)
    for i, v in enumerate(values):
        (res[i][: len(v)] if dims == 1 else res[i][: len(v), : len(v)]).copy_(v)
    return res


def test_bit_exact_against_the_original_pipeline():
    mols = ["CC(=O)Oc1ccccc1C(=O)O", "c1ccc2[nH]ccc2c1", "ClCCl", "OC(=O)CC[Se]C"]
    items, ours = [], []
    for i, smi in enumerate(mols):
        atoms, coords, _ = conf.generate_conformers(smi, num_conformers=1, seed=i)
        items.append(_original_d3_item(atoms, coords[0].astype(np.float64) + 3.7, MOL_DICTIONARY))
        out = conf.unimol_input(atoms, coords[0].astype(np.float64) + 3.7)
        ours.append((out["conformer_tokens"], out["conformer_coords"][0]))
    tokens, distance, edge_type = conf.collate_unimol(ours, V)
    ref_tokens = _original_collate([t for t, _, _ in items], 1).numpy()
    ref_edge = _original_collate([e for _, e, _ in items], 2).numpy()
    ref_dist = _original_collate([d for _, _, d in items], 2).numpy()
    assert tokens.shape == ref_tokens.shape == (4, 16)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_array_equal(edge_type, ref_edge)
    np.testing.assert_array_equal(distance, ref_dist)  # bit-exact, float32
