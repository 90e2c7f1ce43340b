"""The fifth modality, SMILES strings: tokenizer, table entries, collation, tower, training."""
import numpy as np
import pytest

from molbind_data import schema
from molbind_data.featurize import SkipRecord
from molbind_data.featurize import smiles as tok
from molbind_jax.modalities import spec


def test_tokens_are_atom_level_and_lossless():
    s = "CC(=O)Oc1ccccc1C(=O)[O-].[Na+]"
    t = tok.tokens(s)
    assert "".join(t) == s
    assert "[O-]" in t and "[Na+]" in t and "(" in t and "c" in t
    assert tok.tokens("ClC1CCCCC1Br") == ["Cl", "C", "1", "C", "C", "C", "C", "C", "1", "Br"]
    assert tok.tokens("C%12CC%12") == ["C", "%12", "C", "C", "%12"]


def test_encode_ids_unknowns_and_truncation():
    ids = tok.encode("C[Xe]N")
    assert ids == [tok.CLS, tok.INDEX["C"], tok.UNK, tok.INDEX["N"], tok.SEP]
    long = tok.encode("C" * 500, max_len=16)
    assert len(long) == 16 and long[0] == tok.CLS and long[-1] == tok.SEP
    assert len(set(tok.VOCAB)) == len(tok.VOCAB) and tok.VOCAB[:4] == ("[PAD]", "[CLS]", "[SEP]", "[UNK]")


@pytest.mark.parametrize("bad", ["", "   ", "C(C", "C[NH3+", "CC CC"])
def test_invalid_strings_are_skipped_with_a_reason(bad):
    with pytest.raises(SkipRecord) as e:
        tok.encode(bad)
    assert e.value.reason == "invalid_smiles"


def test_table_entries_are_views_of_graph_text():
    for pair, other in (("smiles_text", "text"), ("smiles_graph", "graph")):
        p = schema.pair_type(pair)
        assert p.modalities == ("smiles", other) and p.stored_as == "graph_text"
        assert pair not in schema.stored_pair_types()
        names = {f.name for f in schema.record_features(pair)}
        assert "smiles" in names
    assert schema.size_keys("smiles_text") == ("smiles", "text")


def test_collate_pair_of_a_view():
    from molbind_jax.data.batching import collate_pair

    recs = [{"id": "a", "smiles": b"CCO", "text": b"ethanol", "text_ids": np.array([101, 7, 102])},
            {"id": "b", "smiles": "c1ccccc1O", "text": b"phenol", "text_ids": np.array([101, 8, 9, 102])}]
    b = collate_pair("smiles_text", recs, batch_size=4)
    assert b.x.ids.shape == (4, 16) and b.y.ids.shape == (4, 8)  # rounded up to 8
    np.testing.assert_array_equal(b.x.ids[0, :5], tok.encode("CCO"))
    np.testing.assert_array_equal(b.x.mask.sum(1), [5, 11, 5, 5])
    np.testing.assert_array_equal(b.mask, [True, True, False, False])
    assert spec("smiles").identity(recs[0]) == "CCO" and spec("smiles").sizes(recs[1]) == {"smiles": 11}


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_model_with_five_towers_embeds_smiles():
    from flax import nnx

    from molbind_jax.models.molbind import MolBind, MolBindConfig
    from molbind_jax.modalities.text import pad_text

    cfg = MolBindConfig.tiny(modalities=("text", "graph", "conformer", "pocket", "smiles"))
    assert cfg.smiles.vocab_size == len(tok.VOCAB) and "smiles" in cfg.to_dict()
    assert MolBindConfig.from_dict(cfg.to_dict(), base=MolBindConfig.tiny()) == cfg
    model = MolBind(cfg, rngs=nnx.Rngs(0))
    batch = pad_text([tok.encode("CCO"), tok.encode("CC(=O)O"), tok.encode("CCO")], 16)
    e = np.asarray(nnx.jit(lambda m, b: m.embed("smiles", b))(model, batch))
    assert e.shape == (3, 16) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(e[0], e[2], atol=1e-6)  # the same string, the same row
    assert not np.allclose(e[0], e[1])
    # Padding does not change a row: the mean runs over real tokens only.
    wider = pad_text([tok.encode("CCO")], 32)
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, b: m.embed("smiles", b))(model, wider))[0], e[0],
                               atol=1e-5)
    four = MolBind(MolBindConfig.tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no 'smiles' tower"):
        four.embed("smiles", batch)


def _config(name, variant):
    """experiments/configs/<name>.py:<variant>, loaded by path as --config= does."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs", f"{name}.py")
    s = importlib.util.spec_from_file_location(f"{name}_cfg", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod.get_config(variant)


@pytest.mark.slow  # trains the synthetic smoke variant on the two SMILES pair types
def test_smoke_training_with_the_fifth_modality(tmp_path):
    import json

    from molbind_jax.inference.api import MolBindModel
    from molbind_jax.training import export, train
    cfg = _config("smiles", "smoke")
    cfg.num_devices, cfg.progress_bar = 2, False
    cfg.total_steps, cfg.eval_every, cfg.checkpoint_every, cfg.log_every = 6, 6, 6, 3
    cfg.pairs = ("smiles_text", "smiles_graph")  # the new pair types only: the original four are tested elsewhere
    summary = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert {"r1/smiles_text", "r1/smiles_graph"} <= set(summary["final_eval"])
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert all(np.isfinite(line["loss/smiles_text"]) for line in lines if "loss/smiles_text" in line)
    out = export.export_run(str(tmp_path / "run"), str(tmp_path / "export"))
    meta = json.load(open(f"{out}/config.json"))
    assert meta["files"]["smiles"]["dictionary"] == "dictionaries/smiles_vocab.txt"
    mb = MolBindModel.load(out)
    assert mb.config.modalities[-1] == "smiles"
    # SMILES through the SMILES tower: row i is input i, a bad string is a counted failure.
    emb = mb.embed_smiles(["CCO", "C(C", "c1ccccc1O"], tower="smiles")
    assert emb.vectors.shape == (3, mb.embed_dim) and [f["index"] for f in emb.failures] == [1]
    assert np.isnan(emb.vectors[1]).all() and np.isfinite(emb.vectors[[0, 2]]).all()
    np.testing.assert_allclose(np.linalg.norm(emb.vectors[[0, 2]], axis=1), 1.0, rtol=1e-5)
    alone = mb.embed_smiles(["c1ccccc1O"], tower="smiles").vectors[0]
    np.testing.assert_allclose(alone, emb.vectors[2], atol=1e-5)  # independent of its batch-mates
    # Swapping two tokens of the exported vocabulary is refused on load (wrong ids otherwise).
    path = f"{out}/dictionaries/smiles_vocab.txt"
    lines = open(path).read().split("\n")
    lines[4], lines[5] = lines[5], lines[4]
    open(path, "w").write("\n".join(lines))
    with pytest.raises(ValueError, match="smiles dictionary differs"):
        MolBindModel.load(out)
