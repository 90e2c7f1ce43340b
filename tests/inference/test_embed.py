"""embed / api on a real (tiny, randomly initialised) exported MolBind: bad records keep
their row (NaN) and are reported by index and reason; good rows do not depend on batching."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest


# Building, exporting and loading even a tiny model takes ~15-30 s on the shared CPU.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POSEBUSTERS = os.path.join(
    os.path.dirname(importlib.util.find_spec("posebusters").origin), "datasets", "pdb", "1ia1")


def _check_rows(emb, bad):
    assert emb.vectors.dtype == np.float32
    for i, row in enumerate(emb.vectors):
        if i in bad:
            assert np.all(np.isnan(row)), i
        else:
            assert np.linalg.norm(row) == pytest.approx(1.0, abs=1e-4), i
    assert [f["index"] for f in emb.failures] == sorted(bad)


def test_texts_empty_lines_fail_in_place(mb):
    texts = ["a carboxylic acid", "", "an aromatic ring", "   ", "x " * 300, "an aromatic ring"]
    emb = mb.embed_texts(texts)
    assert emb.vectors.shape == (6, 16)
    _check_rows(emb, {1, 3})
    assert {f["reason"] for f in emb.failures} == {"empty_text"}
    # the same text gives the same row whatever its batch / position (bucketed padding)
    np.testing.assert_allclose(emb.vectors[2], emb.vectors[5], atol=1e-5)
    alone = mb.embed_texts(["an aromatic ring"]).vectors[0]
    np.testing.assert_allclose(emb.vectors[2], alone, atol=1e-5)


def test_smiles_invalid_and_empty(mb):
    smiles = ["CCO", "not_a_smiles", "", "c1ccccc1", "CC(=O)O", "C1CC"]
    emb = mb.embed_smiles(smiles)
    _check_rows(emb, {1, 2, 5})
    reasons = {f["index"]: f["reason"] for f in emb.failures}
    assert reasons[1] == "invalid_smiles" and reasons[5] == "invalid_smiles"
    np.testing.assert_allclose(emb.vectors[3], mb.embed_smiles(["c1ccccc1"]).vectors[0],
                               atol=1e-5)
    conf = mb.embed_smiles(["CCO", "xx"], tower="conformer")
    _check_rows(conf, {1})


def test_sdf_bad_record_keeps_alignment(mb, tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem
    blocks = []
    for smi in ("CCO", "c1ccccc1O"):
        m = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(m, randomSeed=0)
        blocks.append(Chem.MolToMolBlock(m))
    garbage = "broken\n  nonsense\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nnot an atom line\n"
    path = tmp_path / "mols.sdf"
    path.write_text("$$$$\n".join([blocks[0], garbage, blocks[1]]) + "$$$$\n")
    emb = mb.embed_sdf(str(path))
    assert len(emb) == 3
    _check_rows(emb, {1})
    assert emb.failures[0]["reason"] == "unreadable_file"
    from molbind_data.featurize import SkipRecord
    with pytest.raises(SkipRecord):
        mb.embed_sdf(str(tmp_path / "missing.sdf"))


def test_pockets_unreadable_pdb(mb, tmp_path):
    from molbind_jax.inference.embed import embed_file
    lig = os.path.join(POSEBUSTERS, "1ia1_ligand.sdf")
    pdb = os.path.join(POSEBUSTERS, "1ia1_protein_one_lig_removed.pdb")
    lst = tmp_path / "complexes.txt"
    lst.write_text(f"{lig} {pdb}\n{lig} {tmp_path}/nope.pdb\nonly_one_field\n\n{lig},{pdb}\n")
    emb = embed_file(mb, "pocket", str(lst))
    assert len(emb) == 5
    _check_rows(emb, {1, 2, 3})
    assert {f["reason"] for f in emb.failures} == {"unreadable_file"}
    np.testing.assert_allclose(emb.vectors[0], emb.vectors[4], atol=1e-5)


def test_embed_and_search_cli(export_dir, tmp_path):
    inp = tmp_path / "mols.smi"
    inp.write_text("CCO ethanol\n\nnot_a_smiles\nc1ccccc1O phenol\n")
    out = tmp_path / "mols.npy"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-m", "molbind_jax.inference.embed", f"--checkpoint={export_dir}",
                    "--modality=smiles", f"--input={inp}", f"--output={out}"],
                   check=True, cwd=REPO, env=env, capture_output=True, timeout=300)
    vecs = np.load(out)
    assert vecs.shape == (4, 16)
    fails = json.loads((tmp_path / "mols.failures.json").read_text())
    assert [(f["index"], f["reason"]) for f in fails] == [(1, "empty_molecule"),
                                                          (2, "invalid_smiles")]
    assert [f["id"] for f in fails] == ["1", "2"]  # no name on those lines: the row index
    assert (tmp_path / "mols.ids.txt").read_text().splitlines() == ["ethanol", "1", "2", "phenol"]
    res = subprocess.run([sys.executable, "-m", "molbind_jax.inference.search",
                          f"--checkpoint={export_dir}", f"--index={out}", "--query-smiles=CCO",
                          "--top-k=5", f"--labels={inp}"],
                         check=True, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    lines = [l for l in res.stdout.splitlines() if l.strip()[:1].isdigit()]
    assert len(lines) == 2  # only the two valid rows are ever returned
    assert lines[0].split()[1] == "0" and "ethanol" in lines[0]  # the query molecule itself
