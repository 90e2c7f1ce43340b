"""MolBindModel.encode and the failure paths of the inference API on the tiny export: every
input form gives one row per input with its id, and what cannot be embedded (token ids beyond
the text tower, a non-finite output row, a bad record) is a NaN row with an exact failure."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from molbind_jax.inference.api import MolBindModel

from test_readers import write_bad_sdf

# Uses the session's tiny export (conftest): ~15-30 s to build, then seconds per compile.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fails(emb):
    return [(f["index"], f["id"], f["reason"]) for f in emb.failures]


def _finite_rows(emb):
    return [i for i, ok in enumerate(np.all(np.isfinite(emb.vectors), axis=1)) if ok]


def test_single_string_is_one_input(mb):
    emb = mb.embed_texts("a penicillin")
    assert emb.vectors.shape == (1, 16) and emb.ids == ["0"] and not emb.failures
    v = mb.encode("a penicillin", modality="text")
    assert v.shape == (16,)
    np.testing.assert_allclose(v, emb.vectors[0], atol=1e-6)
    assert mb.embed_smiles("CCO").vectors.shape == (1, 16)
    many = mb.encode(["a penicillin", "", "an acid"], modality="text", return_failures=True, batch_size=2)
    assert _fails(many) == [(1, "1", "empty_text")] and _finite_rows(many) == [0, 2]
    np.testing.assert_allclose(many.vectors[0], v, atol=1e-5)
    raw = mb.encode("a penicillin", modality="text", normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3  # the raw projection, not the unit vector
    np.testing.assert_allclose(raw / np.linalg.norm(raw), v, atol=1e-5)


def test_mols_graph_and_conformer(mb):
    from rdkit import Chem
    from rdkit.Chem import AllChem
    flat = Chem.MolFromSmiles("c1ccccc1O")
    np.testing.assert_allclose(mb.encode(flat, modality="graph"), mb.encode("c1ccccc1O", modality="graph"),
                               atol=1e-5)
    with3d = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(with3d, randomSeed=0)
    emb = mb.encode([with3d, flat, "CCO", 42], modality="conformer", return_failures=True)
    assert _fails(emb) == [(1, "1", "no_conformer"), (3, "3", "invalid_input")]
    assert _finite_rows(emb) == [0, 2]
    # the Mol's own coordinates, as an SDF record of it would give
    from molbind_data.featurize import conformer as conf
    atoms, coords = conf.mol_conformer(with3d)
    direct = mb.embed_records("conformer", [conf.unimol_input(atoms, coords, seed=mb.seed)])[0]
    np.testing.assert_allclose(emb.vectors[0], direct, atol=1e-5)


def test_dataframe_column_ids(mb):
    import pandas as pd
    df = pd.DataFrame({"cid": ["m1", "m2", "m3"], "SMILES": ["CCO", None, "C1CC"]})
    emb = mb.encode(df, modality="graph", smiles_column="SMILES", id_column="cid", return_failures=True)
    assert emb.ids == ["m1", "m2", "m3"]
    assert _fails(emb) == [(1, "m2", "missing_value"), (2, "m3", "invalid_smiles")]
    np.testing.assert_allclose(emb.vectors[0], mb.encode("CCO", modality="graph"), atol=1e-5)


def test_sdf_gz_missing_terminator_keeps_three_rows(mb, tmp_path):
    p = write_bad_sdf(tmp_path / "bad.sdf.gz", gz=True)
    emb = mb.encode(p, modality="conformer", return_failures=True)
    assert emb.vectors.shape == (3, 16) and emb.ids == ["eth", "phe", "ace"]
    assert _fails(emb) == [(1, "phe", "sdf_missing_terminator")]
    assert _finite_rows(emb) == [0, 2]
    same = mb.embed_sdf(str(write_bad_sdf(tmp_path / "bad.sdf")), id_property="ID")
    assert same.ids == ["Xeth", "phe", "Xace"]
    np.testing.assert_allclose(same.vectors[[0, 2]], emb.vectors[[0, 2]], atol=1e-5)
    graph = mb.encode(p, modality="graph", return_failures=True)  # the same records, 2D tower
    np.testing.assert_allclose(graph.vectors[0], mb.encode("CCO", modality="graph"), atol=1e-5)


def test_out_of_vocabulary_ids_fail(mb):
    import dataclasses
    # the same weights, told that the text table has 2000 rows: "a" (1037) and "the" (1996)
    # fit, "acid" (5648) does not; the gather would clamp it silently
    small = mb.config.replace(bert=dataclasses.replace(mb.config.bert, vocab_size=2000))
    narrow = MolBindModel(mb.model, small, mb.tokenizer, batch_size=4)
    emb = narrow.encode(["a the", "an acid", "the"], modality="text", return_failures=True)
    assert _fails(emb) == [(1, "1", "out_of_vocabulary")]
    assert "5648" in emb.failures[0]["detail"]
    np.testing.assert_allclose(emb.vectors[[0, 2]], mb.encode(["a the", "the"], modality="text"), atol=1e-5)
    with pytest.raises(ValueError, match="5648 >= the text tower's vocab_size 2000"):  # records: no clamping
        narrow.embed_records("text", [mb.featurize_text("an acid")])


def test_nonfinite_output_row_is_a_failure(mb, monkeypatch):
    real = mb._fn("graph", True)

    def poisoned(tower, normalize=True):
        def fn(model, batch):
            out = np.array(real(model, batch))
            out[1, 3] = np.nan  # the batch's second row
            return out
        return fn
    monkeypatch.setattr(mb, "_fn", poisoned)
    emb = mb.encode(["CCO", "CC", "xx", "CCC", "CCCC", "CO", "OCO"], modality="graph", batch_size=4,
                    ids=list("abcdefg"), return_failures=True)
    # batches of the valid records: [CCO, CC, CCC, CCCC], [CO, OCO, pad, pad]: the second row
    # of each is input 1 (CC) and input 6 (OCO)
    assert _fails(emb) == [(1, "b", "nonfinite_output"), (2, "c", "invalid_smiles"),
                           (6, "g", "nonfinite_output")]
    assert np.all(np.isnan(emb.vectors[[1, 2, 6]])) and _finite_rows(emb) == [0, 3, 4, 5]

def test_embed_cli_ids_and_counts(export_dir, tmp_path):
    inp = tmp_path / "lib.csv"
    inp.write_bytes(b"name,smiles\nethanol,CCO\nbad,not_a_smiles\nlatin,CC\xe9\n,c1ccccc1O\nempty,\n")
    out = tmp_path / "lib.npy"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "molbind_jax.inference.embed", f"--checkpoint={export_dir}",
           "--modality=smiles", f"--input={inp}", f"--output={out}", "--id_column=name"]
    res = subprocess.run(cmd + ["--smiles_column=SMILES"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2
    assert "error:" in res.stderr and "'SMILES'" in res.stderr and "['name', 'smiles']" in res.stderr
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert np.load(out).shape == (5, 16)
    ids = (tmp_path / "lib.ids.txt").read_text().splitlines()
    assert ids == ["ethanol", "bad", "2", "3", "empty"]
    fails = json.loads((tmp_path / "lib.failures.json").read_text())
    assert [(f["index"], f["id"], f["reason"]) for f in fails] == [
        (1, "bad", "invalid_smiles"), (2, "2", "undecodable_line"), (4, "empty", "empty_molecule")]
    assert f"{len(fails)} failed" in res.stdout and "5 rows" in res.stdout
