"""The user's pair files: CSV/JSONL/SDF molecule pairs, ligand/protein CSV, deterministic splits."""
import importlib.util
import json
import os

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molbind_data.featurize import EMPTY_TEXT, INVALID_SMILES, NO_POCKET_ATOMS, UNREADABLE_FILE, SkipRecord
from molbind_data.featurize.graph import smiles_to_graph
from molbind_data.featurize.pocket import extract_pocket
from molbind_data.sources import pairs

ROWS = [
    ("CCO", "Ethanol is a primary alcohol."),
    ("c1ccccc1", "Benzene is an aromatic hydrocarbon."),
    ("Cc1ccccc1", "Toluene is benzene with a methyl group."),
    ("C1CC(", "broken"),
    ("CC(=O)O", "   "),
    ("CC(C)Cc1ccc(cc1)C(C)C(=O)O", "Ibuprofen is an NSAID."),
]


def _every_split(pair, options):
    out, skipped, where = {}, {}, {}
    for split in pairs.SPLITS:
        for key, raw in pairs.raw_records(pair, split, options):
            where[key] = split
            try:
                out[key] = pairs.featurize(pair, raw, options)
            except SkipRecord as skip:
                skipped[key] = skip.reason
    return out, skipped, where


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("smiles,text\n" + "".join(f'{s},"{t}"\n' for s, t in ROWS))
    return str(path)


def test_csv_graph_text(csv_file):
    out, skipped, where = _every_split("graph_text", {"input": csv_file})
    assert len(where) == len(ROWS)  # every row is in exactly one split
    assert skipped == {"pairs/mine.csv/3": INVALID_SMILES, "pairs/mine.csv/4": EMPTY_TEXT}
    ex = out["pairs/mine.csv/1"]
    assert ex["smiles"] == "c1ccccc1" and ex["text"] == "Benzene is an aromatic hydrocarbon.\n"
    assert ex["text_ids"][0] == 101 and ex["text_ids"][-1] == 102
    for key, value in smiles_to_graph("c1ccccc1").items():
        np.testing.assert_array_equal(ex[key], value)
    # benzene and toluene share the scaffold c1ccccc1, hence the split
    assert where["pairs/mine.csv/1"] == where["pairs/mine.csv/2"]


def test_jsonl_and_tsv_equal_csv(csv_file, tmp_path):
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps({"smiles": s, "text": t}) + "\n" for s, t in ROWS))
    tsv = tmp_path / "mine.tsv"
    tsv.write_text("smiles\ttext\n" + "".join(f"{s}\t{t}\n" for s, t in ROWS))
    a, _, wa = _every_split("graph_text", {"input": csv_file})
    for path in (jsonl, tsv):
        b, _, wb = _every_split("graph_text", {"input": str(path)})
        assert [k.split("/")[-1] for k in a] == [k.split("/")[-1] for k in b]
        assert list(wa.values()) == list(wb.values())
        for ka, kb in zip(a, b):
            np.testing.assert_array_equal(a[ka]["text_ids"], b[kb]["text_ids"])


def test_conformers_from_smiles_are_deterministic(csv_file):
    options = {"input": csv_file, "num_conformers": 2, "seed": 5}
    out, skipped, _ = _every_split("conformer_text", options)
    again, _, _ = _every_split("conformer_text", options)
    ex = out["pairs/mine.csv/0"]  # ethanol: [CLS] C C O [SEP], two conformers
    np.testing.assert_array_equal(ex["conformer_tokens"], [1, 4, 4, 6, 2])
    assert ex["conformer_coords"].shape == (2, 5, 3)
    for key in out:
        np.testing.assert_array_equal(out[key]["conformer_coords"], again[key]["conformer_coords"])
    gc, gskipped, _ = _every_split("graph_conformer", options)
    assert gskipped == {"pairs/mine.csv/3": INVALID_SMILES}  # no text needed here
    assert set(gc["pairs/mine.csv/4"]) == {"id", "smiles", "graph_node_feat", "graph_edge_index", "graph_edge_feat",
                                            "conformer_tokens", "conformer_coords"}


def test_split_column_and_hash_split_proportions(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("smiles,text,split\nCCO,a,test\nCCN,b,valid\nCCC,c,\n")
    _, _, where = _every_split("graph_text", {"input": str(path)})
    assert where["pairs/split.csv/0"] == "test" and where["pairs/split.csv/1"] == "validation"
    counts = {s: 0 for s in pairs.SPLITS}
    for i in range(3000):
        counts[pairs.hash_split(f"scaffold-{i}")] += 1
    assert 0.77 < counts["train"] / 3000 < 0.83 and 0.08 < counts["test"] / 3000 < 0.12
    assert pairs.scaffold_key("CCO") == "CCO"  # acyclic: the molecule itself, not ""
    assert pairs.scaffold_key("Cc1ccccc1") == pairs.scaffold_key("Clc1ccccc1") == "c1ccccc1"


def _sdf(path, entries):
    writer = Chem.SDWriter(str(path))
    for smiles, text in entries:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=0)
        if text is not None:
            mol.SetProp("text", text)
        writer.write(mol)
    writer.close()


def test_sdf_conformer_text_uses_the_files_coordinates(tmp_path):
    path = tmp_path / "mols.sdf"
    _sdf(path, [("CCO", "Ethanol."), ("c1ccncc1", "Pyridine."), ("CCN", None)])
    with open(path, "a") as f:
        f.write("garbage\n  no counts line\n\n$$$$\n")
    out, skipped, _ = _every_split("conformer_text", {"input": str(path)})
    assert skipped == {"pairs/mols.sdf/2": EMPTY_TEXT, "pairs/mols.sdf/3": UNREADABLE_FILE}
    ex = out["pairs/mols.sdf/1"]
    assert ex["text"] == "Pyridine.\n" and ex["smiles"] == "c1ccncc1"
    mol = next(m for m in Chem.SDMolSupplier(str(path), removeHs=False) if m.GetProp("text") == "Pyridine.")
    xyz = mol.GetConformer().GetPositions()[:6]
    assert ex["conformer_coords"].shape == (1, 8, 3)
    np.testing.assert_allclose(ex["conformer_coords"][0, 1:-1], xyz - xyz.mean(0), atol=1e-4)
    gc, _, _ = _every_split("graph_conformer", {"input": str(path)})
    np.testing.assert_array_equal(gc["pairs/mols.sdf/2"]["graph_node_feat"], smiles_to_graph("CCN")["graph_node_feat"])


def test_ligand_protein_csv(tmp_path):
    site = os.path.dirname(importlib.util.find_spec("posebusters").origin)
    folder = os.path.join(site, "datasets", "pdb", "1ia1")
    protein = os.path.join(folder, "1ia1_protein_one_lig_removed.pdb")
    ligand = Chem.MolFromMolFile(os.path.join(folder, "1ia1_ligand.sdf"), removeHs=False)
    far = Chem.Mol(ligand)
    conf = far.GetConformer()
    for i in range(far.GetNumAtoms()):
        p = conf.GetAtomPosition(i)
        conf.SetAtomPosition(i, (p.x + 500, p.y, p.z))
    writer = Chem.SDWriter(str(tmp_path / "ligands.sdf"))
    writer.write(ligand)
    writer.write(far)
    writer.close()
    csv_path = tmp_path / "complexes.csv"
    csv_path.write_text(f"ligand_sdf,protein_pdb,target\nligands.sdf,{protein},dhfr\nmissing.sdf,{protein},dhfr\n")
    out, skipped, where = _every_split("conformer_pocket", {"input": str(csv_path)})
    assert skipped == {"pairs/complexes.csv/0/1": NO_POCKET_ATOMS, "pairs/complexes.csv/1": UNREADABLE_FILE}
    ex = out["pairs/complexes.csv/0/0"]
    assert ex["target"] == "dhfr"
    expected = extract_pocket(protein, ligand, seed=pairs.record_seed(0, ex["id"]))
    np.testing.assert_array_equal(ex["pocket_tokens"], expected["pocket_tokens"])
    np.testing.assert_allclose(ex["pocket_coords"], expected["pocket_coords"])
    heavy = sum(a.GetAtomicNum() > 1 for a in ligand.GetAtoms())
    assert ex["conformer_tokens"].shape == (heavy + 2,)
    # split by target: every record of a target shares one split
    _, _, by_target = _every_split("conformer_pocket", {"input": str(csv_path), "split_by": "target"})
    assert len({by_target[k] for k in by_target if k.startswith("pairs/complexes.csv/0/")}) == 1


def test_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(pairs.raw_records("graph_text", "train", {"input": str(tmp_path / "nope.csv")}))
    bad = tmp_path / "pairs.xlsx"
    bad.write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        list(pairs.raw_records("graph_text", "train", {"input": str(bad)}))
    with pytest.raises(ValueError):
        list(pairs.raw_records("text_text", "train", {"input": str(bad)}))


def test_max_records_caps_each_split(csv_file):
    all_train = list(pairs.raw_records("graph_text", "train", {"input": csv_file}))
    assert len(all_train) > 2
    two = list(pairs.raw_records("graph_text", "train", {"input": csv_file, "max_records": 2}))
    assert [k for k, _ in two] == [k for k, _ in all_train[:2]]
    per_pair = list(pairs.raw_records("graph_text", "train", {"input": csv_file, "max_records": {"graph_text": 1}}))
    assert len(per_pair) == 1


def test_repeated_ids_and_unknown_split_names_are_counted_skips(tmp_path):
    path = tmp_path / "dups.csv"
    path.write_text("id,smiles,text,split\na,CCO,one,train\na,CCN,two,train\nb,CCC,three,holdout\n")
    out, skipped, where = _every_split("graph_text", {"input": str(path)})
    assert list(out) == ["pairs/dups.csv/a"]
    assert skipped == {"pairs/dups.csv/a#1": "duplicate", "pairs/dups.csv/b": pairs.INVALID_SPLIT}
    assert len(where) == 3  # each row is reported once, in one split
