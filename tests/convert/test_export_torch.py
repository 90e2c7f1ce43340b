"""Export back to PyTorch (`convert/to_torch.py`, `export --format=lightning`): strict loading into
the original Model's reference, exact round trips both ways, refusals and warnings."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from molbind_jax.convert import compare_molbind, to_torch
from molbind_jax.convert import molbind as molbind_convert
from molbind_jax.models.molbind import MolBind, MolBindConfig
from molbind_jax.torch_reference.molbind import MolBindModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_FILLED = ("crossattention.", "Qformer.cls.predictions.")  # parts MolBind has no counterpart of


def _leaves(model, kind):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(
        nnx.state(model, kind).to_pure_dict())}


@pytest.mark.slow  # ~30 s: imports, exports and runs the harness on the export
def test_lightning_export_loads_strictly_and_round_trips(original_ckpt, molbind_inputs, tmp_path):
    heads = {"bert": {"num_heads": original_ckpt.text_heads}}
    # A Flax MolBind with random, non-trivial weights: the original-layout ckpt, imported.
    model, _ = molbind_convert.load(original_ckpt.ckpt, gin_backbone=original_ckpt.backbone, **heads)
    with pytest.warns(to_torch.ExportWarning, match="sizes differ from the original's"):
        out = to_torch.write_lightning(model, str(tmp_path / "torch"), source={"step": 11})
    assert sorted(os.listdir(out)) == ["graph_pretrain.pth", "molbind.ckpt", "unimol_dict_mol.txt",
                                       "unimol_dict_pro.txt"]
    obj = torch.load(os.path.join(out, "molbind.ckpt"), weights_only=True)  # plain types only
    assert obj["global_step"] == 11 and obj["hyper_parameters"]["gin_hidden_dim"] == 16
    assert MolBindConfig.from_dict(json.loads(obj["molbind_jax"]["config"])) == model.config
    sd = obj["state_dict"]
    assert all(k.startswith("model.") for k in sd)
    # Tied as in the original (one storage in the file).
    assert (sd["model.Qformer.cls.predictions.decoder.weight"].data_ptr()
            == sd["model.Qformer.bert.embeddings.word_embeddings.weight"].data_ptr())

    # The original Model (our reference) loads it with strict=True once `model.` is stripped.
    fresh = MolBindModel(**original_ckpt.sizes)
    fresh.load_state_dict({k[len("model."):]: v for k, v in sd.items()}, strict=True)
    # torch -> JAX -> torch: every tensor the original module held comes back bit-identical,
    # the *_query copies and the BatchNorm statistics included; the filled parts are BERT's init.
    orig = original_ckpt.ref.state_dict()
    for k, v in fresh.state_dict().items():
        if any(p in k for p in _FILLED) and "decoder.weight" not in k:
            continue
        if k.endswith("num_batches_tracked"):
            assert int(v) == 0
        else:
            assert torch.equal(v, orig[k]), k
    fs = fresh.state_dict()
    assert torch.all(fs["Qformer.bert.encoder.layer.2.crossattention.output.LayerNorm.weight"] == 1)
    assert torch.all(fs["Qformer.cls.predictions.bias"] == 0)
    std = float(fs["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"].std())
    assert 0.01 < std < 0.03
    # Deterministic: a second export writes the same filled parts.
    with pytest.warns(to_torch.ExportWarning):
        again = to_torch.to_reference(model).state_dict()
    assert all(torch.equal(again[k], v) for k, v in fs.items())
    # The backbone file is the GIN alone, with its statistics.
    gin = MolBindModel(**original_ckpt.sizes).graph_encoder
    gin.load_state_dict(torch.load(os.path.join(out, "graph_pretrain.pth"), weights_only=True), strict=True)
    assert torch.equal(gin.batch_norms[1].running_var, orig["graph_encoder.batch_norms.1.running_var"])
    assert set(compare_molbind.check_dictionaries(out)) == {"mol", "pocket"}

    # JAX -> torch -> JAX: identical parameters and BatchNorm statistics.
    # No head count given: the config the export stored beside the weights supplies it.
    back, report = molbind_convert.load(os.path.join(out, "molbind.ckpt"),
                                        gin_backbone=os.path.join(out, "graph_pretrain.pth"))
    assert back.config == model.config
    assert report.bn_stats == "from the checkpoint"
    for kind in (nnx.Param, nnx.BatchStat):
        ours, theirs = _leaves(model, kind), _leaves(back, kind)
        assert ours.keys() == theirs.keys()
        for k in ours:
            np.testing.assert_array_equal(theirs[k], ours[k], err_msg=k)

    # The torch reference run on the exported file gives our embeddings (the harness).
    result = compare_molbind.compare(os.path.join(out, "molbind.ckpt"), molbind_inputs(seed=5),
                                     gin_backbone=os.path.join(out, "graph_pretrain.pth"),
                                     text_heads=original_ckpt.text_heads)
    assert result["added"] == []
    assert set(result["errors"]) == {"graph", "text", "conformer", "pocket"}
    for name, e in result["errors"].items():
        assert e["rel"] <= 1e-5, (name, e)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_refusals_and_warnings():
    assert to_torch.check_exportable(MolBindConfig.original()) == []  # the original's own config
    notes = to_torch.check_exportable(MolBindConfig.tiny())
    assert any(n.startswith("unimol_pooling='atoms'") for n in notes)
    assert any("sizes differ" in n and "bert.hidden_size 32 (original 768)" in n for n in notes)
    orig = MolBindConfig.original()
    notes = to_torch.check_exportable(orig.replace(
        gin=dataclasses.replace(orig.gin, self_loop_attr=(4, 0)),
        pocket=dataclasses.replace(orig.pocket, num_layers=3)))
    assert any("self_loop_attr=(4, 0)" in n for n in notes)
    assert any("one set of args" in n for n in notes)
    assert any("pocket.num_layers 3 (original 15)" in n for n in notes)

    tiny = MolBindConfig.tiny(unimol_pooling="original")
    with pytest.raises(to_torch.ExportError, match=r"exactly the towers \('text', 'graph', 'conformer', 'pocket'\), "
                                                   r"this model has \('text', 'graph'\)"):
        to_torch.check_exportable(tiny.replace(modalities=("text", "graph")))
    with pytest.raises(to_torch.ExportError, match="token-type table"):
        to_torch.check_exportable(tiny.replace(bert=dataclasses.replace(tiny.bert, use_token_type=True)))
    with pytest.raises(to_torch.ExportError, match="GIN has 1 layer"):
        to_torch.check_exportable(tiny.replace(gin=dataclasses.replace(tiny.gin, num_layers=1)))
    with pytest.raises(to_torch.ExportError, match="conformer tower has a vocabulary of 30"):
        to_torch.check_exportable(tiny.replace(conformer=dataclasses.replace(tiny.conformer, vocab_size=30)))
    # write_lightning refuses before writing anything.
    m = MolBind(tiny.replace(bert=dataclasses.replace(tiny.bert, use_token_type=True)), rngs=nnx.Rngs(0))
    with pytest.raises(to_torch.ExportError):
        to_torch.write_lightning(m, "/nonexistent/never/written")


_CLI = """
import sys
from absl import app
from flax import nnx
from molbind_jax.training import export
from molbind_jax.models.molbind import MolBind, MolBindConfig

def restored(workdir, step):  # stands in for a training run's checkpoint
    cfg = MolBindConfig.tiny(unimol_pooling="original")
    return MolBind(cfg, rngs=nnx.Rngs(3)), cfg, {"text_dir": None, "dataset": "mini"}, 7

export._restore_trained = restored
export._define_flags()
app.run(export.main)
"""


@pytest.mark.slow  # a subprocess, ~20 s
def test_export_cli_lightning(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-c", _CLI, f"--workdir={tmp_path}", "--format=lightning"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "export_lightning"
    assert f"exported to {out}" in proc.stdout
    assert "unimol_pooling" not in proc.stderr and "sizes differ" in proc.stderr  # warned, tiny sizes
    assert (out / "tokenizer" / "vocab.txt").exists()
    obj = torch.load(out / "molbind.ckpt", weights_only=True)
    assert obj["global_step"] == 7 and json.loads(obj["molbind_jax"]["source"])["dataset"] == "mini"
    cfg = MolBindConfig.tiny(unimol_pooling="original")
    ref = MolBindModel(**to_torch.reference_sizes(cfg))
    ref.load_state_dict({k[len("model."):]: v for k, v in obj["state_dict"].items()}, strict=True)
