"""The MolBind-M4 reader on a miniature release in the release's own formats (m4_release.py).

Fast: order and pairing, PyG graph files (written by torch_geometric 2.8 here, by 2.3 for
tests/data/files/pyg230_paracetamol.pt, and read through the stand-in classes with PyG
unimportable), malicious pickles, layout errors, featurization details. Slow: a built split
read back through TFDS keeps the order; build -> train -> export -> evaluate end to end.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from molbind_data.featurize import EMPTY_TEXT, UNKNOWN_ELEMENT, UNREADABLE_FILE, SkipRecord
from molbind_data.featurize.conformer import unimol_input
from molbind_data.featurize.graph import canonical_smiles, smiles_to_graph
from molbind_data.featurize.pocket import unimol_pocket_input
from molbind_data.featurize.text import normalize
from molbind_data.lmdb_io import read_lmdb, write_lmdb
from molbind_data.sources import m4, pyg_files
from molbind_data.sources.pairs import record_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import m4_release  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PYG230_FILE = os.path.join(HERE, "files", "pyg230_paracetamol.pt")
SMALL = {"pretrain": 12, "valid": 4, "test": 4}


@pytest.fixture(scope="module")
def release_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("m4") / "MolBind4M"
    manifest = m4_release.write_release(root, SMALL, bad=True)
    return root, manifest


@pytest.fixture
def release(release_master, tmp_path):
    """A private copy (tests may damage it)."""
    root, manifest = release_master
    copy = tmp_path / "release"
    shutil.copytree(root, copy / "MolBind4M")
    return copy, manifest


def _all(pair, split, options):
    out, skipped = {}, {}
    for key, raw in m4.raw_records(pair, split, options):
        try:
            out[key] = m4.featurize(pair, raw, options)
        except SkipRecord as skip:
            skipped[key] = skip.reason
    return out, skipped


# ----------------------------------------------------------------------------- order and pairing

def test_records_come_in_the_originals_order_and_pair_correctly(release_master):
    root, manifest = release_master
    options = {"manual_dir": str(root.parent)}  # the parent holding MolBind4M/ works too
    assert manifest["order"]["graph_text"]["train_raw"][:4] == [
        "m4/graph_text/train/0", "m4/graph_text/train/1", "m4/graph_text/train/10", "m4/graph_text/train/11"]
    assert manifest["order"]["conformer_text"]["test"] == [
        "m4/conformer_text/test/1", "m4/conformer_text/test/4", "m4/conformer_text/test/7", "m4/conformer_text/test/10"]
    for pair in m4.PROVIDES:
        for split in m4.SPLITS:
            expected = manifest["order"][pair].get(split + "_raw", manifest["order"][pair][split])
            keys = [k for k, _ in m4.raw_records(pair, split, options)]
            assert keys == expected == m4.record_order(pair, split, str(root)), (pair, split)
            out, skipped = _all(pair, split, options)
            assert skipped == {k: v for k, v in manifest["bad"].items() if k in expected}
            assert list(out) == manifest["order"][pair][split]
            for key, ex in out.items():
                smi = manifest["smiles"][key]
                # the record's molecule is the one its file / LMDB position holds
                assert ex["smiles"] == canonical_smiles(smi), key
                if "text" in ex:
                    assert f"Its SMILES is {smi}" in ex["text"], key
                if "graph_node_feat" in ex:
                    np.testing.assert_array_equal(ex["graph_edge_index"], smiles_to_graph(smi)["graph_edge_index"])
    assert not (root / m4_release.MARKER).exists()


def test_graph_text_fields(release_master):
    root, manifest = release_master
    out, _ = _all("graph_text", "validation", {"manual_dir": str(root)})
    ex = out["m4/graph_text/validation/2"]
    smi = manifest["smiles"]["m4/graph_text/validation/2"]
    for key, value in smiles_to_graph(smi).items():
        np.testing.assert_array_equal(ex[key], value)
        assert ex[key].dtype == np.int32
    name = m4_release.molecule(SMALL["pretrain"] + 2)[0]
    assert ex["text"] == normalize(m4_release.describe(name, smi))
    assert ex["text"].startswith(f"The molecule is {name}. It has the formula")


def test_conformer_and_pocket_fields(release_master):
    root, manifest = release_master
    options = {"manual_dir": str(root), "seed": 3}
    folder = root / "3D-Text" / "test"
    entry = read_lmdb(str(folder / "unimol_mol.lmdb"))["2"]  # third text in int order: text_7
    out, _ = _all("conformer_text", "test", options)
    ex = out["m4/conformer_text/test/7"]
    expected = unimol_input(entry["atoms"], np.stack(entry["coordinates"]), seed=record_seed(3, ex["id"]))
    np.testing.assert_array_equal(ex["conformer_tokens"], expected["conformer_tokens"])
    np.testing.assert_allclose(ex["conformer_coords"], expected["conformer_coords"])
    assert ex["conformer_coords"].shape[0] == 2  # both stored conformers kept
    raw = dict(m4.raw_records("conformer_text", "test", options))["m4/conformer_text/test/7"]
    assert m4.featurize("conformer_text", raw, {**options, "max_conformers": 1})["conformer_coords"].shape[0] == 1

    pocket = read_lmdb(str(root / "3D-Protein" / "valid" / "pocket.lmdb"))["1"]
    out, _ = _all("conformer_pocket", "validation", options)
    ex = out["m4/conformer_pocket/validation/1"]
    site = unimol_pocket_input(pocket["atoms"], pocket["coordinates"][0], pocket["residue"], seed=record_seed(3, ex["id"]))
    np.testing.assert_array_equal(ex["pocket_tokens"], site["pocket_tokens"])
    np.testing.assert_allclose(ex["pocket_coords"], site["pocket_coords"], atol=1e-6)
    assert ex["target"] == "target1" and 8 not in ex["pocket_tokens"]  # H atoms dropped


def test_max_records(release_master):
    root, manifest = release_master
    keys = [k for k, _ in m4.raw_records("graph_text", "train", {"manual_dir": str(root), "max_records": 3})]
    assert keys == manifest["order"]["graph_text"]["train_raw"][:3]


# ----------------------------------------------------------------------------- graph files

def test_real_pyg_files_load_without_running_pyg_code(tmp_path):
    import torch_geometric

    assert torch_geometric.__version__ == "2.8.1"
    path = tmp_path / "graph_0.pt"
    m4_release.save_graph(path, "CC(=O)Oc1ccccc1C(=O)O", "pyg")
    for file, smiles in ((path, "CC(=O)Oc1ccccc1C(=O)O"), (PYG230_FILE, "CC(=O)Nc1ccc(O)cc1")):
        got = pyg_files.load_graph(str(file))
        for key, value in smiles_to_graph(smiles).items():
            np.testing.assert_array_equal(got[key], value)
    # without the allow-list, torch refuses these files even with PyG installed
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_pyg_files_read_through_the_stand_ins_without_torch_geometric(tmp_path):
    """A child process where `import torch_geometric` fails reads PyG 2.3 and 2.8 files."""
    path = tmp_path / "graph_1.pt"
    m4_release.save_graph(path, "c1ccc2[nH]ccc2c1", "pyg")
    code = ("import sys, json; sys.modules['torch_geometric'] = None\n"
            "from molbind_data.sources import pyg_files\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "    obj = pyg_files.load_pt(p)\n"
            "    g = pyg_files.load_graph(p)\n"
            "    out[p] = [type(obj).__name__, type(obj.__dict__['_store']).__name__,\n"
            "              g['graph_node_feat'].tolist(), g['graph_edge_index'].tolist(), g['graph_edge_feat'].tolist()]\n"
            "assert not any(m.startswith('torch_geometric.') for m in sys.modules)\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), PYG230_FILE], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(HERE)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for p, smiles in ((str(path), "c1ccc2[nH]ccc2c1"), (PYG230_FILE, "CC(=O)Nc1ccc(O)cc1")):
        kind, store, nodes, edges, bonds = out[p]
        assert (kind, store) == ("PygData", "PygGlobalStorage")
        g = smiles_to_graph(smiles)
        assert nodes == g["graph_node_feat"].tolist() and edges == g["graph_edge_index"].tolist()
        assert bonds == g["graph_edge_feat"].tolist()


def test_dict_graph_files_and_old_pyg_layout(tmp_path):
    path = tmp_path / "graph_2.pt"
    m4_release.save_graph(path, "c1ccncc1", "dict")
    np.testing.assert_array_equal(pyg_files.load_graph(str(path))["graph_node_feat"],
                                  smiles_to_graph("c1ccncc1")["graph_node_feat"])
    old = pyg_files.PygData()  # PyG < 2.0 kept the tensors in the Data object's __dict__
    old.__setstate__({"x": torch.tensor([[5, 0], [7, 0]]), "edge_index": torch.tensor([[0, 1], [1, 0]])})
    got = pyg_files.graph_arrays(pyg_files.graph_mapping(old), "old")
    np.testing.assert_array_equal(got["graph_edge_feat"], np.zeros((2, 2), np.int32))


class _WritesFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_graph_pickles_run_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    files = {}
    files["pyg_payload"] = tmp_path / "graph_3.pt"
    m4_release.save_malicious_graph(files["pyg_payload"], marker)
    files["system"] = tmp_path / "graph_4.pt"
    torch.save({"x": m4_release.RunsCommand(f"touch {marker}")}, files["system"])
    files["open"] = tmp_path / "graph_5.pt"
    torch.save(_WritesFile(marker), files["open"])
    for name, path in files.items():
        with pytest.raises(SkipRecord) as err:
            pyg_files.load_graph(str(path))
        assert err.value.reason == UNREADABLE_FILE, name
        assert str(path) in err.value.detail and "GLOBAL" in err.value.detail, err.value.detail
        assert not marker.exists(), name
    # the fixture is really malicious: an unrestricted load runs the command
    torch.load(files["system"], weights_only=False)
    assert marker.exists()


def test_bad_graph_files(tmp_path):
    bad = str(tmp_path / "graph_9.pt")

    def reason(obj=None, raw=None):
        if raw is not None:
            with open(bad, "wb") as f:
                f.write(raw)
        else:
            torch.save(obj, bad)
        with pytest.raises(SkipRecord) as err:
            m4.load_graph(bad)
        return err.value.reason

    assert reason({"x": torch.tensor([[119, 0]]), "edge_index": torch.zeros((2, 0), dtype=torch.long)}) == UNKNOWN_ELEMENT
    assert reason({"x": torch.tensor([[5, 0], [5, 0]]), "edge_index": torch.tensor([[0], [1]]),
                   "edge_attr": torch.tensor([[0, 4]])}) == m4.MALFORMED_GRAPH  # OGB bond stereo
    assert reason({"x": torch.tensor([[5, 0]]), "edge_index": torch.tensor([[0, 0, 0]])}) == m4.MALFORMED_GRAPH
    assert reason({"x": torch.tensor([[0.5, 0.0]]), "edge_index": torch.zeros((2, 0))}) == m4.MALFORMED_GRAPH
    assert reason({"edge_index": torch.zeros((2, 0))}) == m4.MALFORMED_GRAPH
    assert reason([1, 2, 3]) == m4.MALFORMED_GRAPH
    assert reason(raw=b"not a torch file") == UNREADABLE_FILE


# ----------------------------------------------------------------------------- layout

def test_layout_errors(release, tmp_path):
    root, _ = release
    rel = root / "MolBind4M"
    with pytest.raises(m4.LayoutError, match="does not exist") as err:
        list(m4.raw_records("graph_text", "train", {"manual_dir": str(tmp_path / "nowhere")}))
    assert "2D-Text/{pretrain,valid,test}/graph/graph_<id>.pt, text/text_<id>.txt" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(m4.LayoutError, match="holds none of 2D-Text, 3D-Text, 3D-2D, 3D-Protein"):
        list(m4.raw_records("graph_text", "train", {"manual_dir": str(tmp_path / "empty")}))
    with pytest.raises(ValueError, match="manual_dir"):
        list(m4.raw_records("graph_text", "train", {}))

    (rel / "3D-Text" / "valid" / "unimol_mol.lmdb").unlink()
    shutil.rmtree(rel / "3D-2D" / "test")
    with pytest.raises(m4.LayoutError) as err:
        list(m4.raw_records("conformer_text", "train", {"manual_dir": str(root)}))
    message = str(err.value)
    assert "incomplete for conformer_text (3D-Text): 3D-Text/valid/unimol_mol.lmdb missing." in message
    assert "      unimol_mol.lmdb   <- missing" in message and "    test/   <- missing" in message
    assert "      graph/graph_<id>.pt\n      text/text_<id>.txt\n      smiles/smiles_<id>.txt" in message
    assert [k for k, _ in m4.raw_records("graph_text", "test", {"manual_dir": str(root)})]  # other pairs still read

    pocket = rel / "3D-Protein" / "test" / "pocket.lmdb"
    pocket.unlink()
    pocket.mkdir()  # an LMDB environment folder (subdir=True) instead of the release's single file
    with pytest.raises(m4.LayoutError, match=r"3D-Protein/test/pocket.lmdb is a folder; the release's LMDBs are single files"):
        list(m4.raw_records("conformer_pocket", "validation", {"manual_dir": str(root)}))


def test_listing_errors(release):
    root, _ = release
    rel = root / "MolBind4M"
    options = {"manual_dir": str(root)}
    (rel / "3D-Text" / "test" / "text" / ".DS_Store").write_text("")  # hidden files are ignored
    assert len(list(m4.raw_records("conformer_text", "test", options))) == SMALL["test"]
    (rel / "3D-Text" / "test" / "text" / "text_99.txt").write_text("one text too many")
    with pytest.raises(ValueError, match=r"3D-Text/test/text \(text_<k> files\) holds 5 records but .*unimol_mol.lmdb holds 4"):
        list(m4.raw_records("conformer_text", "test", options))
    os.rename(rel / "3D-Text" / "test" / "text" / "text_99.txt", rel / "3D-Text" / "test" / "text" / "text_x.txt")
    with pytest.raises(ValueError, match=r"text_x.txt: the number k of <prefix>_<k> must be an integer"):
        list(m4.raw_records("conformer_text", "test", options))
    os.rename(rel / "3D-Text" / "test" / "text" / "text_x.txt", rel / "3D-Text" / "test" / "text" / "text_04.txt")
    with pytest.raises(ValueError, match=r"have the same number 4"):
        list(m4.raw_records("conformer_text", "test", options))
    (rel / "2D-Text" / "test" / "graph" / "README").write_text("")
    with pytest.raises(ValueError, match=r"2D-Text/test/graph/README: unexpected file"):
        list(m4.raw_records("graph_text", "test", options))
    (rel / "3D-Protein" / "test" / "pocket.lmdb").unlink()
    write_lmdb(str(rel / "3D-Protein" / "test" / "pocket.lmdb"), [{"atoms": ["C"], "coordinates": [np.zeros((1, 3))]}])
    with pytest.raises(ValueError, match=r"ligand.lmdb holds 4 records but .*pocket.lmdb holds 1"):
        list(m4.raw_records("conformer_pocket", "test", options))
    (rel / "unimol_dict_mol.txt").write_text("[PAD]\n[CLS]\n[SEP]\n[UNK]\nN\nC\n")
    with pytest.raises(ValueError, match="differs"):
        list(m4.raw_records("graph_conformer", "test", options))


def test_lmdb_record_problems_are_counted_skips(release):
    root, _ = release
    folder = root / "MolBind4M" / "3D-Text" / "test"
    marker = root / "PWNED_LMDB"
    entries = read_lmdb(str(folder / "unimol_mol.lmdb"))
    entries["1"] = {"atoms": m4_release.RunsCommand(f"touch {marker}"), "coordinates": []}
    (folder / "unimol_mol.lmdb").unlink()
    write_lmdb(str(folder / "unimol_mol.lmdb"), [(k, v) for k, v in entries.items() if k != "3"] + [("x", {})])
    (folder / "text" / "text_1.txt").write_text("\n  \n")
    out, skipped = _all("conformer_text", "test", {"manual_dir": str(root)})
    assert skipped == {"m4/conformer_text/test/1": EMPTY_TEXT, "m4/conformer_text/test/4": UNREADABLE_FILE,
                       "m4/conformer_text/test/10": m4.MISSING_PARTNER}
    assert list(out) == ["m4/conformer_text/test/7"] and not marker.exists()


# ----------------------------------------------------------------------------- built datasets (slow)

def _build(manual_dir, data_dir, pairs, **download):
    import tensorflow_datasets as tfds

    from molbind_data.molbind_pairs.builder import MolbindM4

    reports = {}
    for pair in pairs:
        b = MolbindM4(config=pair, data_dir=str(data_dir), workers=0)
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir), **download))
        reports[pair] = b.read_report()
    return reports


@pytest.mark.slow
def test_built_splits_read_back_in_file_order(release_master, tmp_path):
    """Stored over several shards, a split reads back in the release's order (what the
    original's in-batch evaluation batches depend on)."""
    from molbind_jax.data.pipeline import load_records

    root, manifest = release_master
    _build(root, tmp_path, ["graph_text", "conformer_text"], num_shards=3)
    for pair in ("graph_text", "conformer_text"):
        for split in m4.SPLITS:
            ids = [r["id"].decode() for r in load_records(pair, split, dataset="molbind_m4", data_dir=str(tmp_path))]
            assert ids == manifest["order"][pair][split], (pair, split)
    shards = [f for f in os.listdir(tmp_path / "molbind_m4" / "graph_text" / "1.3.0") if "train.tfrecord" in f]
    assert len(shards) == 3

    from molbind_data import build  # a wrong manual_dir stops the build command before TFDS starts

    with pytest.raises(m4.LayoutError, match="holds none of"):
        build.build("m4", str(tmp_path / "other"), ["conformer_pocket"], manual_dir=str(root / "2D-Text"), verbose=False)
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_build_train_export_evaluate(tmp_path):
    """The miniature release through the whole chain: molbind_data.build (m4), a few training
    steps of tiny towers on it, export, and the evaluation command's Python entry."""
    import importlib.util

    from molbind_data import build
    from molbind_jax.evaluation import evaluate
    from molbind_jax.training import export, train
    from molbind_jax.data.pipeline import load_records
    from molbind_jax.training.metric_writer import read_metrics

    manual = tmp_path / "manual"
    manifest = m4_release.write_release(manual / "MolBind4M", {"pretrain": 24, "valid": 16, "test": 20}, bad=True)
    data_dir = tmp_path / "tfds"
    reports = build.build("m4", str(data_dir), manual_dir=str(manual), workers=0, verbose=False)
    for pair in m4.PROVIDES:
        splits = reports[pair]["splits"]
        assert {s: splits[s]["written"] for s in splits} == {"train": 24, "validation": 16, "test": 20}, pair
    assert reports["graph_text"]["skipped"] == {"unreadable_file": 1, "missing_partner": 1}
    for pair in m4.PROVIDES:  # the leakage audit ran over the four pair types
        assert reports[pair]["leakage"]["against"] == sorted(m4.PROVIDES), pair
        assert reports[pair]["leakage"]["records"]["test"]["records"] == 20, pair
    assert not (manual / "MolBind4M" / m4_release.MARKER).exists()
    for pair in m4.PROVIDES:
        ids = [r["id"].decode() for r in load_records(pair, "test", dataset="molbind_m4", data_dir=str(data_dir))]
        assert ids == manifest["order"][pair]["test"], pair

    spec = importlib.util.spec_from_file_location(
        "m4_cfg", os.path.join(os.path.dirname(os.path.dirname(HERE)), "experiments", "configs", "m4.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("smoke")
    cfg.data.source = "tfds"
    cfg.data.data_dir = str(data_dir)
    # a tiny text tower that accepts the build's MiniLM token ids (max 256 tokens)
    cfg.model.overrides = dict(embed_dim=16, bert=dict(vocab_size=30522, max_position_embeddings=512))
    cfg.num_devices, cfg.progress_bar, cfg.tensorboard = 2, False, False
    cfg.total_steps, cfg.steps_per_epoch, cfg.eval_every, cfg.checkpoint_every = 2, 2, 2, 2
    cfg.data.max_shapes = 2  # few padded shapes: few compilations
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(cfg, workdir)
    logged = read_metrics(workdir)
    losses = [r["loss"] for r in logged if not r.get("eval")]
    assert len(losses) == 2 and np.isfinite(losses).all()
    evals = [r for r in logged if r.get("eval")]  # in-training validation on the valid split
    assert [r["step"] for r in evals] == [2] and all(np.isfinite(evals[0][f"r1/{p}"]) for p in m4.PROVIDES)

    exported = export.export_run(workdir, str(tmp_path / "export"))
    results = evaluate.run(exported, str(tmp_path / "eval"), data_dir=str(data_dir), dataset="molbind_m4",
                           split="test", classification=False)
    assert set(results["retrieval"]) == set(m4.PROVIDES) and not results["skipped"]
    for pair, res in results["retrieval"].items():
        assert res["n"] == 20, pair
        for scope in ("full", "in_batch"):
            for direction in ("a2b", "b2a"):
                summary = res[scope][direction]
                assert summary["n"] == 20 and set(summary) >= {"R@1", "R@20", "MRR"}, (pair, scope)
                # point values and their bootstrap intervals (ci95: {metric: [lo, hi]})
                points = [v for k, v in summary.items() if k != "ci95"]
                assert np.isfinite(points).all(), (pair, scope, direction)
                assert set(summary["ci95"]) >= {"R@1", "R@20", "MRR"}, (pair, scope)
                assert all(lo <= summary[k] <= hi for k, (lo, hi) in summary["ci95"].items()), (pair, scope)
    assert os.path.exists(os.path.join(str(tmp_path / "eval"), "metrics.json"))
