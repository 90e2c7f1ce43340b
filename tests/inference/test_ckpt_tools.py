"""An original MolBind `.ckpt` (tiny, written in the original's key layout) used as a model by
api / embed / search / evaluate and converted once by `python -m molbind_jax.convert.molbind`;
the files a `.ckpt` does not hold are checked with clear errors."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ckpt_fixtures import CKPT_CONFIG, write_dictionaries, write_tiny_checkpoint, write_tokenizer
from molbind_jax.inference.api import MolBindModel
from molbind_jax.convert.common import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = ["an aromatic acid", "the small molecule is an ester", "a ring with two carbon"]
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1"]


def _cli(module, *args):
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_missing_files_and_wrong_dictionaries_are_clear_errors(tmp_path):
    # Every check here runs before the .ckpt is read, so placeholder files do.
    ckpt, backbone = tmp_path / "molbind.ckpt", tmp_path / "graph_pretrain.pth"
    ckpt.write_bytes(b"not read")
    backbone.write_bytes(b"not read")
    kw = dict(gin_backbone=str(backbone), tokenizer=write_tokenizer(str(tmp_path / "tok")),
              dictionaries=write_dictionaries(str(tmp_path / "dicts")))
    ckpt = str(ckpt)
    with pytest.raises(ValueError, match="holds no tokenizer: pass the tokenizer directory"):
        MolBindModel.load(ckpt, **dict(kw, tokenizer=None))
    with pytest.raises(FileNotFoundError, match="no exported model or MolBind .ckpt at .*nope.ckpt"):
        MolBindModel.load(str(tmp_path / "nope.ckpt"), **kw)
    with pytest.raises(FileNotFoundError, match="--gin_backbone .*missing.pth not found"):
        MolBindModel.load(ckpt, **dict(kw, gin_backbone=str(tmp_path / "missing.pth")))
    with pytest.raises(FileNotFoundError, match="--tokenizer .*no_tok is not a directory"):
        MolBindModel.load(ckpt, **dict(kw, tokenizer=str(tmp_path / "no_tok")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no mol dictionary in .*empty"):
        MolBindModel.load(ckpt, **dict(kw, dictionaries=str(empty)))
    from molbind_data.featurize.dictionaries import MOL_SYMBOLS
    swapped = list(MOL_SYMBOLS)
    swapped[4], swapped[5] = swapped[5], swapped[4]  # N before C
    bad = write_dictionaries(str(tmp_path / "bad"), mol_symbols=swapped)
    with pytest.raises(CheckpointError, match=r"bad/unimol_dict_mol.txt: the mol dictionary differs from the "
                                              r"built-in order at id 4 \('N', expected 'C'"):
        MolBindModel.load(ckpt, **dict(kw, dictionaries=bad))


@pytest.mark.slow  # torch + tiny model builds, one subprocess: ~40 s
def test_convert_cli_export_embeds_as_the_ckpt(tiny, tmp_path):
    out = str(tmp_path / "export")
    res = _cli("molbind_jax.convert.molbind", *tiny.flags(), f"--output={out}")
    assert "GIN BatchNorm statistics: from the GIN backbone" in res.stdout
    assert "[text_encoder]" in res.stdout and f"exported to {out}" in res.stdout
    meta = json.load(open(os.path.join(out, "config.json")))
    assert meta["source"]["bn_stats"].startswith("from the GIN backbone")
    assert meta["model"]["bert"]["num_heads"] == 4 and meta["model"]["unimol_pooling"] == "original"
    direct = MolBindModel.load(tiny.ckpt, **tiny.load_kwargs(), batch_size=4)
    assert direct.import_report.bn_stats.startswith("from the GIN backbone")
    exported = MolBindModel.load(out, batch_size=4)
    assert exported.import_report is None
    for a, b in ((direct.embed_texts(TEXTS), exported.embed_texts(TEXTS)),
                 (direct.embed_smiles(SMILES), exported.embed_smiles(SMILES)),
                 (direct.embed_smiles(SMILES, tower="conformer"), exported.embed_smiles(SMILES, tower="conformer"))):
        assert not a.failures and np.all(np.isfinite(a.vectors))
        np.testing.assert_array_equal(a.vectors, b.vectors)
    # An export carries its own tokenizer and dictionaries: .ckpt options are an error there.
    with pytest.raises(ValueError, match="tokenizer apply to a .ckpt only"):
        MolBindModel.load(out, tokenizer=tiny.tokenizer)
    # A tokenizer larger than the text tower's table is not the model's.
    from molbind_data.featurize.text import default_tokenizer_dir
    with pytest.raises(CheckpointError, match="30522 tokens but the text tower of .* has 64 rows"):
        MolBindModel.load(tiny.ckpt, **dict(tiny.load_kwargs(), tokenizer=default_tokenizer_dir()))
    # Without the backbone: the importer's loud warning, and other graph rows.
    with pytest.warns(UserWarning, match="no GIN BatchNorm running statistics"):
        no_bn = MolBindModel.load(tiny.ckpt, tokenizer=tiny.tokenizer, ckpt_config=CKPT_CONFIG, batch_size=4)
    assert no_bn.import_report.bn_stats.startswith("MISSING")
    assert not np.allclose(no_bn.embed_smiles(SMILES).vectors, direct.embed_smiles(SMILES).vectors, atol=1e-3)


@pytest.mark.slow  # a tiny dataset build and three CLI subprocesses: ~2 min
def test_embed_search_evaluate_clis_take_a_ckpt(tiny, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    npy = str(tmp_path / "texts.npy")
    _cli("molbind_jax.inference.embed", *tiny.flags(), "--modality=text", f"--input={texts}", f"--output={npy}")
    mb = MolBindModel.load(tiny.ckpt, **tiny.load_kwargs())
    np.testing.assert_allclose(np.load(npy), mb.embed_texts(TEXTS).vectors, atol=1e-6)
    res = _cli("molbind_jax.inference.search", *tiny.flags(), f"--index={npy}", "--query-text=an aromatic acid", "--top_k=2")
    assert "top 2 of 3 rows" in res.stdout
    # A .ckpt without its tokenizer: a one-line error and exit status 2, nothing written.
    bad = subprocess.run([sys.executable, "-m", "molbind_jax.inference.embed", f"--checkpoint={tiny.ckpt}",
                          "--modality=text", f"--input={texts}", f"--output={tmp_path / 'x.npy'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "holds no tokenizer" in bad.stderr.splitlines()[-1]
    assert not (tmp_path / "x.npy").exists()

    # evaluate on a tiny built split (graph_text from a CSV, every row in test).
    from molbind_data.build import build
    csv_path = tmp_path / "pairs.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["smiles", "text", "split"])
        for i, s in enumerate(SMILES + ["ClCCl", "CCN(CC)CC", "OC(=O)CS", "CCCC"]):
            w.writerow([s, f"the molecule {i} is an aromatic acid", "test"])
    data_dir = str(tmp_path / "tfds")
    build("pairs", data_dir, "graph_text", input_path=str(csv_path), workers=1, verbose=False)
    out = tmp_path / "eval"
    res = _cli("molbind_jax.evaluation.evaluate", *tiny.flags(), "--dataset=molbind_pairs", f"--data_dir={data_dir}",
               "--pairs=graph_text", "--noclassification", "--noprobes", f"--output_dir={out}")
    assert "Original protocol next to ours" in res.stdout and "From the original protocol to ours" in res.stdout
    saved = json.load(open(out / "metrics.json"))
    assert saved["model"]["kind"] == "ckpt" and saved["model"]["bn_stats"].startswith("from the GIN backbone")
    # The split was tokenised by MiniLM; the ckpt's own tokenizer re-tokenised every text.
    assert saved["model"]["text_ids_differ_from_stored"] == {"graph_text": 7}
    assert saved["original"]["graph_text"]["n"] == 7 and saved["retrieval"]["graph_text"]["n"] == 7
    assert len(saved["ladder"]["graph_text"]["rungs"]) == 6
