"""The MolBind4M reader on a tiny release written by the test (LMDB + text + graph files)."""
import os
import pickle

import lmdb
import numpy as np
import pytest
import torch

from data_pipeline.featurize import EMPTY_TEXT, UNKNOWN_ELEMENT, UNREADABLE_FILE, SkipRecord
from data_pipeline.featurize.conformer import unimol_input
from data_pipeline.featurize.graph import smiles_to_graph
from data_pipeline.featurize.pocket import unimol_pocket_input
from data_pipeline.featurize.text import get_tokenizer, normalize
from data_pipeline.lmdb_io import write_lmdb
from data_pipeline.sources import m4
from data_pipeline.sources.pairs import record_seed


def _save_graph(path, smiles, extra_columns=True):
    g = smiles_to_graph(smiles)
    x = torch.from_numpy(g["graph_node_feat"]).long()
    if extra_columns:  # MolCA-style files carry more node columns; only the first two are read
        x = torch.cat([x, torch.full((x.shape[0], 7), 9)], dim=1)
    torch.save({"x": x, "edge_index": torch.from_numpy(g["graph_edge_index"]).long(),
                "edge_attr": torch.from_numpy(g["graph_edge_feat"]).long()}, path)
    return g


def _mol_entry(n_heavy, smi, seed):
    rng = np.random.default_rng(seed)
    atoms = ["C"] * (n_heavy - 1) + ["O"] + ["H"] * 3
    return {"atoms": atoms, "coordinates": [rng.normal(size=(len(atoms), 3)).astype(np.float32) for _ in range(2)],
            "smi": smi}


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "MolBind4M"
    # 2D-Text: ids 0, 1 complete; id 2 has no text; valid split has one record
    for split, ids in (("pretrain", ["0", "1", "2"]), ("valid", ["7"])):
        d = root / "2D-Text" / split
        for sub in ("graph", "text", "smiles"):
            (d / sub).mkdir(parents=True)
        for rid, smi in zip(ids, ["CCO", "c1ccccc1", "CC(=O)O"]):
            _save_graph(d / "graph" / f"graph_{rid}.pt", smi)
            (d / "smiles" / f"smiles_{rid}.txt").write_text(smi + "\n")
            if rid != "2":
                (d / "text" / f"text_{rid}.txt").write_text(f"  Molecule {smi}\n\n is  described.\n")
    # 3D-Text: texts 1, 2, 10 sort by int -> LMDB keys 0, 1, 2; text 2 is empty
    d = root / "3D-Text" / "pretrain"
    (d / "text").mkdir(parents=True)
    for k in ("10", "1", "2"):
        (d / "text" / f"text_{k}.txt").write_text("" if k == "2" else f"text number {k}\n")
    write_lmdb(str(d / "unimol_mol.lmdb"), [_mol_entry(4, "CCCO", 0), _mol_entry(5, "CCCCO", 1), _mol_entry(6, "CCCCCO", 2)])
    # 3D-2D
    d = root / "3D-2D" / "pretrain"
    (d / "graph").mkdir(parents=True)
    _save_graph(d / "graph" / "graph_0.pt", "CCCO")
    _save_graph(d / "graph" / "graph_1.pt", "CCCCO")
    write_lmdb(str(d / "unimol_mol.lmdb"), [_mol_entry(4, "CCCO", 3), _mol_entry(5, "CCCCO", 4)])
    # 3D-Protein: record 1's pocket is a malicious pickle
    d = root / "3D-Protein" / "pretrain"
    d.mkdir(parents=True)
    write_lmdb(str(d / "ligand.lmdb"), [_mol_entry(4, "CCCO", 5), _mol_entry(4, "CCCO", 6)])
    pocket = {"atoms": ["N", "CA", "C", "O", "OG1", "ZN", "HB"], "coordinates": [np.random.default_rng(7).normal(size=(7, 3))],
              "residue": ["SER"] * 7, "pocket": "1abc"}
    write_lmdb(str(d / "pocket.lmdb"), [pocket])
    env = lmdb.open(str(d / "pocket.lmdb"), subdir=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"1", pickle.dumps({"atoms": _RunsCommand(tmp_path / "pwned"), "coordinates": []}))
    env.close()
    return tmp_path


class GraphObject:
    """Stands in for a PyG Data object: a pickled class that weights_only loading refuses."""

    def __init__(self):
        self.x = torch.zeros((1, 2), dtype=torch.long)


def _all(pair, split, options):
    out, skipped = {}, {}
    for key, raw in m4.raw_records(pair, split, options):
        try:
            out[key] = m4.featurize(pair, raw, options)
        except SkipRecord as skip:
            skipped[key] = skip.reason
    return out, skipped


def test_graph_text_pairs_by_id(release):
    options = {"manual_dir": str(release)}
    out, skipped = _all("graph_text", "train", options)
    assert sorted(out) == ["m4/graph_text/train/0", "m4/graph_text/train/1"]
    assert skipped == {"m4/graph_text/train/2": m4.MISSING_PARTNER}
    ex = out["m4/graph_text/train/1"]
    g = smiles_to_graph("c1ccccc1")
    for key in g:
        np.testing.assert_array_equal(ex[key], g[key])
        assert ex[key].dtype == np.int32
    assert ex["smiles"] == "c1ccccc1" and ex["id"] == "m4/graph_text/train/1"
    assert ex["text"] == "Molecule c1ccccc1 is  described.\n" == normalize("  Molecule c1ccccc1\n\n is  described.\n")
    np.testing.assert_array_equal(ex["text_ids"], get_tokenizer().encode(ex["text"]))
    # split names map to the release's folders
    assert list(_all("graph_text", "validation", options)[0]) == ["m4/graph_text/validation/7"]


def test_conformer_text_sorts_texts_by_int_and_pairs_by_position(release):
    options = {"manual_dir": str(release), "seed": 3}
    out, skipped = _all("conformer_text", "train", options)
    assert skipped == {"m4/conformer_text/train/2": EMPTY_TEXT}
    ex = out["m4/conformer_text/train/10"]  # third text in int order -> LMDB key "2"
    assert ex["text"] == "text number 10\n" and ex["smiles"] == "CCCCCO"
    entry = _mol_entry(6, "CCCCCO", 2)
    expected = unimol_input(entry["atoms"], np.stack(entry["coordinates"]), seed=record_seed(3, ex["id"]))
    np.testing.assert_array_equal(ex["conformer_tokens"], [1, 4, 4, 4, 4, 4, 6, 2])
    np.testing.assert_array_equal(ex["conformer_tokens"], expected["conformer_tokens"])
    np.testing.assert_allclose(ex["conformer_coords"], expected["conformer_coords"])
    assert ex["conformer_coords"].shape == (2, 8, 3)  # both stored conformers kept
    capped = m4.featurize("conformer_text", next(r for k, r in m4.raw_records("conformer_text", "train", options)
                                                 if k.endswith("/1")), {**options, "max_conformers": 1})
    assert capped["conformer_coords"].shape == (1, 6, 3)


def test_graph_conformer(release):
    out, skipped = _all("graph_conformer", "train", {"manual_dir": str(release)})
    assert not skipped and len(out) == 2
    ex = out["m4/graph_conformer/train/1"]
    np.testing.assert_array_equal(ex["graph_node_feat"], smiles_to_graph("CCCCO")["graph_node_feat"])
    assert ex["conformer_tokens"].shape == (7,) and ex["smiles"] == "CCCCO"


def test_conformer_pocket_and_malicious_pickle(release):
    out, skipped = _all("conformer_pocket", "train", {"manual_dir": str(release), "seed": 0})
    assert skipped == {"m4/conformer_pocket/train/1": UNREADABLE_FILE}
    assert not (release / "pwned").exists()
    ex = out["m4/conformer_pocket/train/0"]
    np.testing.assert_array_equal(ex["pocket_tokens"], [1, 5, 4, 4, 6, 6, 3, 2])  # HB dropped, ZN -> [UNK]
    assert ex["target"] == "1abc" and ex["pocket_coords"].shape == (8, 3)
    xyz = np.random.default_rng(7).normal(size=(7, 3)).astype(np.float32)[:6]
    expected = unimol_pocket_input(["N", "CA", "C", "O", "OG1", "ZN"], xyz)
    np.testing.assert_allclose(ex["pocket_coords"], expected["pocket_coords"], atol=1e-6)


def test_bad_graph_files(release, tmp_path):
    bad = tmp_path / "graph_9.pt"
    torch.save({"x": torch.tensor([[119, 0]]), "edge_index": torch.zeros((2, 0), dtype=torch.long)}, bad)
    with pytest.raises(SkipRecord) as err:
        m4.load_graph(str(bad))
    assert err.value.reason == UNKNOWN_ELEMENT  # the mask token is not an element

    torch.save(GraphObject(), bad)
    with pytest.raises(SkipRecord) as err:
        m4.load_graph(str(bad))
    assert err.value.reason == UNREADABLE_FILE  # weights_only refuses the class, nothing runs

    torch.save({"x": torch.tensor([[5, 0], [5, 0]]), "edge_index": torch.tensor([[0], [1]]),
                "edge_attr": torch.tensor([[0, 4]])}, bad)  # OGB bond-stereo value
    with pytest.raises(SkipRecord) as err:
        m4.load_graph(str(bad))
    assert err.value.reason == m4.MALFORMED_GRAPH
    torch.save({"x": torch.tensor([[5, 0]]), "edge_index": torch.tensor([[0, 0, 0]])}, bad)  # not [2, e]
    with pytest.raises(SkipRecord) as err:
        m4.load_graph(str(bad))
    assert err.value.reason == m4.MALFORMED_GRAPH
    bad.write_bytes(b"not a torch file")
    with pytest.raises(SkipRecord) as err:
        m4.load_graph(str(bad))
    assert err.value.reason == UNREADABLE_FILE


def test_layout_errors(release, tmp_path):
    with pytest.raises(FileNotFoundError, match="2D-Text"):
        list(m4.raw_records("graph_text", "train", {"manual_dir": str(tmp_path / "empty")}))
    with pytest.raises(ValueError):
        list(m4.raw_records("graph_text", "train", {}))
    (release / "MolBind4M" / "unimol_dict_mol.txt").write_text("[PAD]\n[CLS]\n[SEP]\n[UNK]\nN\nC\n")
    with pytest.raises(ValueError, match="differs"):
        list(m4.raw_records("graph_text", "train", {"manual_dir": str(release)}))


def test_max_records(release):
    keys = [k for k, _ in m4.raw_records("conformer_text", "train", {"manual_dir": str(release), "max_records": 2})]
    assert keys == ["m4/conformer_text/train/1", "m4/conformer_text/train/2"]
