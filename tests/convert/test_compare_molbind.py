"""The whole-model harness (`compare --encoder=molbind`): parity with the torch reference of the
original `Model`, what it refuses, and the Q-Former reference against transformers' BertModel."""
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from molbind_jax.convert import compare_molbind
from molbind_jax.convert import molbind as molbind_convert
from molbind_jax.convert.common import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(ns, inputs_path, **kw):
    return compare_molbind.run(ns.ckpt, str(inputs_path), dictionaries=ns.dictionaries, gin_backbone=ns.backbone,
                               text_heads=ns.text_heads, **kw)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_qformer_text_path_matches_transformers_bert():
    """The reference's text forward (written from the original's bert.py) against an
    independent implementation: transformers' BertModel with a zero token-type table."""
    import transformers

    from molbind_jax.torch_reference.qformer import QFormer

    torch.manual_seed(0)
    q = QFormer(vocab_size=64, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64,
                max_position_embeddings=64, encoder_width=16).eval()
    with torch.no_grad():
        for p in q.parameters():
            p.normal_(0.0, 0.5)
    keys = set(q.state_dict())
    assert {"bert.encoder.layer.0.crossattention.self.key.weight", "bert.encoder.layer.2.crossattention.output.dense.bias",
            "bert.encoder.layer.1.output_query.LayerNorm.weight", "cls.predictions.decoder.weight",
            "cls.predictions.decoder.bias", "bert.embeddings.position_ids"} <= keys
    assert not any("layer.1.crossattention" in k or "token_type" in k or "pooler" in k for k in keys)
    assert q.state_dict()["bert.encoder.layer.0.crossattention.self.key.weight"].shape == (32, 16)
    assert q.cls.predictions.decoder.weight is q.bert.embeddings.word_embeddings.weight

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    cfg._attn_implementation = "eager"
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    sd = {k[len("bert."):]: v for k, v in q.state_dict().items()
          if k.startswith("bert.") and "crossattention" not in k and "_query" not in k and "position_ids" not in k}
    sd["embeddings.token_type_embeddings.weight"] = torch.zeros(2, 32)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing), missing
    rng = np.random.default_rng(0)
    mask = torch.tensor((np.arange(12)[None] < np.array([[12], [5], [1]])).astype(np.int64))
    ids = torch.tensor(rng.integers(1, 64, (3, 12))) * mask
    with torch.no_grad():
        ours = q.bert(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    real = mask.bool()
    err = (ours - theirs)[real].abs().max() / theirs[real].abs().max()
    assert err <= 1e-6, float(err)


@pytest.mark.slow  # ~15 s: jit-compiles four tiny towers
def test_harness_passes_on_an_original_ckpt(original_ckpt, molbind_inputs, tmp_path, capsys, monkeypatch):
    inputs = molbind_inputs(seed=1)
    path = tmp_path / "in.npz"
    np.savez(path, **inputs)
    results = []
    compare = compare_molbind.compare
    monkeypatch.setattr(compare_molbind, "compare", lambda *a, **k: results.append(compare(*a, **k)) or results[-1])
    assert _run(original_ckpt, path) == 0
    out = capsys.readouterr().out
    # The buffers the original's ckpt drops were added back, and said so.
    assert "graph_encoder.batch_norms.1.running_var from " + original_ckpt.backbone in out
    assert "graph_encoder.batch_norms.0.num_batches_tracked from" in out
    assert "Qformer.bert.embeddings.position_ids = arange" in out
    assert "GIN BatchNorm statistics: from the GIN backbone" in out
    for name in ("graph", "text", "conformer", "pocket"):
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert row.split()[-1] == "ok" and float(row.split()[2]) <= 1e-5, row
    assert "flax and torch metrics: identical" in out and "conformer_pocket (molpro)" in out

    # The torch side is the module the ckpt was written from (statistics from the backbone),
    # and the original-protocol metrics agree between the two sides.
    result = results[0]
    ref = original_ckpt.ref
    with torch.no_grad():
        g = ref.embed_graph(*(torch.as_tensor(inputs[k]) for k in compare_molbind.MODALITY_KEYS["graph"]),
                            normalize=False)
    np.testing.assert_array_equal(result["torch"]["graph"], g.numpy())
    for pair, sides in result["metrics"].items():
        for split in ("in_batch", "full"):
            assert sides["flax"][split] == sides["torch"][split], (pair, split)
    assert set(result["metrics"]) == set(compare_molbind.PAIRS)
    for name, e in result["errors"].items():
        assert e["rel"] <= 1e-5, name


@pytest.mark.slow  # ~15 s
def test_a_perturbed_weight_fails_the_harness(original_ckpt, molbind_inputs, tmp_path, capsys, monkeypatch):
    """One LayerNorm bias of the Flax conformer head moved by 1e-3: exit status 1, and only the
    conformer row fails."""
    path = tmp_path / "in.npz"
    np.savez(path, **molbind_inputs(seed=2))
    assign = molbind_convert.assign

    def perturbed(model, *a, **kw):
        report = assign(model, *a, **kw)
        model.conf_proj.norm.bias.value = model.conf_proj.norm.bias.value.at[3].add(1e-3)
        return report

    monkeypatch.setattr(molbind_convert, "assign", perturbed)
    assert _run(original_ckpt, path) == 1
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in ("graph", "text", "conformer", "pocket")}
    assert "FAIL" in rows["conformer"]
    assert all(rows[m].split()[-1] == "ok" for m in ("graph", "text", "pocket"))


def test_inputs_dictionaries_and_buffers_are_checked(original_ckpt, molbind_inputs, tmp_path):
    inputs = molbind_inputs()
    # Dictionaries: another order is an error naming the file and the symbol.
    bad = tmp_path / "dicts"
    bad.mkdir()
    (bad / "unimol_dict_mol.txt").write_text("[PAD]\n[CLS]\n[SEP]\n[UNK]\nN\nC\n")
    (bad / "unimol_dict_pro.txt").write_text("[PAD]\n[CLS]\n[SEP]\n[UNK]\nC\nN\nO\nS\nH\n")
    with pytest.raises(ValueError, match=r"unimol_dict_mol.txt: symbol 4 is 'N' where ours is 'C'"):
        compare_molbind.check_dictionaries(str(bad))
    os.remove(bad / "unimol_dict_mol.txt")
    with pytest.raises(FileNotFoundError, match="no mol dictionary"):
        compare_molbind.check_dictionaries(str(bad))
    assert set(compare_molbind.check_dictionaries(original_ckpt.dictionaries)) == {"mol", "pocket"}

    # Inputs: unknown keys, incomplete modalities, tokens that are not a prefix.
    def saved(name, **arrays):
        p = tmp_path / name
        np.savez(p, **arrays)
        return str(p)

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['graph_pos'\]"):
        compare_molbind.load_inputs(saved("a.npz", **inputs, graph_pos=np.zeros(3)))
    partial = {k: v for k, v in inputs.items() if k != "text_attention_mask"}
    with pytest.raises(ValueError, match=r"modality text is incomplete, missing \['text_attention_mask'\]"):
        compare_molbind.load_inputs(saved("b.npz", **partial))
    holes = dict(inputs)
    holes["pocket_tokens"] = inputs["pocket_tokens"].copy()
    holes["pocket_tokens"][1, 1] = 0
    with pytest.raises(ValueError, match=r"pocket_tokens rows \[1\]"):
        compare_molbind.load_inputs(saved("c.npz", **holes))
    only_text = {k: inputs[k] for k in ("text_input_ids", "text_attention_mask")}
    assert compare_molbind.modalities(compare_molbind.load_inputs(saved("d.npz", **only_text))) == ["text"]

    big = dict(inputs, conformer_tokens=np.where(inputs["conformer_tokens"] > 0, 31, 0))
    with pytest.raises(ValueError, match=r"conformer_tokens holds ids in \[0, 31\], outside the checkpoint's table of 31"):
        compare_molbind.compare(original_ckpt.ckpt, big, gin_backbone=original_ckpt.backbone)
    # A ckpt without BatchNorm statistics and no backbone: no parity with the original possible.
    with pytest.raises(CheckpointError, match="pass --gin_backbone"):
        compare_molbind.compare(original_ckpt.ckpt, inputs, text_heads=original_ckpt.text_heads)
    with pytest.raises(ValueError, match="needs --dictionaries"):
        compare_molbind.run(original_ckpt.ckpt, saved("e.npz", **inputs), dictionaries=None)


class _Payload:
    """Pickles as a call to os.system: what a malicious checkpoint does on an unsafe load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_ckpt_runs_nothing_and_is_refused(original_ckpt, molbind_inputs, tmp_path):
    marker = tmp_path / "pwned"
    state = torch.load(original_ckpt.ckpt, weights_only=False)  # our own file (argparse.Namespace inside)
    state["callbacks"] = _Payload(str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **molbind_inputs())
    with pytest.raises(CheckpointError, match="weights_only=True"):
        compare_molbind.run(str(evil), str(inputs), dictionaries=original_ckpt.dictionaries,
                            gin_backbone=original_ckpt.backbone, text_heads=original_ckpt.text_heads)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.slow  # subprocesses: imports and compiles, ~60 s on a loaded machine
def test_cli(original_ckpt, molbind_inputs, tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, **molbind_inputs(seed=3, batch=3))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "molbind_jax.convert.compare", "--encoder=molbind", f"--checkpoint={original_ckpt.ckpt}",
           f"--gin_backbone={original_ckpt.backbone}", f"--dictionaries={original_ckpt.dictionaries}",
           f"--inputs={path}", f"--text_heads={original_ckpt.text_heads}", "--bf16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "bf16 scores" in proc.stdout and "graph_text (2dtext)" in proc.stdout
    proc = subprocess.run(cmd[:-2] + ["--prefix=model."], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900)
    assert proc.returncode != 0 and "per-encoder options" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_full_size_harness(write_original_ckpt, molbind_inputs, tmp_path, capsys):
    """The original's default sizes (SciBERT Q-Former with [DEC], GIN 5 x 300, Uni-Mol 15 x 512,
    embed_dim 512) with random weights, written as the original saves them."""
    t0 = time.time()
    ns = write_original_ckpt(tmp_path, sizes={}, seed=7)
    ns.ref = None  # free the module: the harness builds its own
    t1 = time.time()
    path = tmp_path / "in.npz"
    np.savez(path, **molbind_inputs(seed=4, batch=4, text_len=48, conf_len=30, pocket_len=45, text_vocab=31090))
    assert _run(ns, path) == 0
    t2 = time.time()
    out = capsys.readouterr().out
    print(out[out.index("raw embeddings"):])
    print(f"full-size harness: writing the ckpt {t1 - t0:.0f} s, harness {t2 - t1:.0f} s")
    assert "Qformer.bert.embeddings.position_ids = arange" in out
