"""The benchmark anchors (experiments/benchmarks/anchors.py: the PyTorch towers users run) and
the tower rows of experiments/benchmarks/towers.py, at the tiny size: plumbing and numerics,
no timing assertions."""
import math
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("torch_geometric")
if __import__("importlib").util.find_spec("unimol_tools") is None:
    pytest.skip("unimol_tools is not installed (make setup installs requirements-bench.txt)", allow_module_level=True)

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from experiments.benchmarks import anchors, tower_inputs, towers  # noqa: E402

TOWERS = ("bert", "gin", "conformer", "pocket")
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"


@pytest.fixture
def keep_threads(monkeypatch):
    """rows() sets torch's and XLA's threads: keep this test process as it was."""
    monkeypatch.setenv("XLA_FLAGS", (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip())
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("tower", TOWERS)
def test_anchor_forward_backward_finite(tower):
    batch, length = tower_inputs.shape_of(tower, "tiny")
    a = anchors.build_anchor(tower, "tiny", batch, length, seed=1)
    cfg = tower_inputs.tower_configs("tiny")[tower]
    assert a.out_dim == (cfg.hidden_size if tower == "bert" else cfg.emb_dim if tower == "gin" else cfg.embed_dim)
    assert a.module.training and all(isinstance(x, torch.Tensor) for x in a.inputs)
    out = a.forward(a.module, *a.inputs)
    assert out.shape == (batch, a.out_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in a.module.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("tower", TOWERS)
def test_anchor_has_our_towers_parameter_count(tower):
    """Same model on both sides: the anchor holds as many parameters as our tower, but for
    HF BERT's token-type table (ours has none at these sizes)."""
    import jax
    from flax import nnx

    from molbind_jax.models import bert, gin, unimol

    cfg = tower_inputs.tower_configs("tiny")[tower]
    ours = {"bert": bert.BertEncoder, "gin": gin.GIN}.get(tower, unimol.UniMolEncoder)(cfg, rngs=nnx.Rngs(0))
    n_ours = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    a = anchors.build_anchor(tower, "tiny", *tower_inputs.shape_of(tower, "tiny"))
    extra = cfg.type_vocab_size * cfg.hidden_size if tower == "bert" else 0
    assert sum(p.numel() for p in a.module.parameters()) == n_ours + extra


def test_anchor_inputs_come_from_the_seed():
    a, b = (anchors.build_anchor("pocket", "tiny", 2, 12, seed=3) for _ in range(2))
    c = anchors.build_anchor("pocket", "tiny", 2, 12, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.inputs, b.inputs))
    assert not all(torch.equal(x, y) for x, y in zip(a.inputs, c.inputs))
    for m in (a.module, b.module):
        m.eval()
    torch.testing.assert_close(a.forward(a.module, *a.inputs), b.forward(b.module, *b.inputs))


def test_unimol_anchor_ignores_padding():
    """Extra [PAD] positions change nothing in the pooled features (eval mode): the padding mask
    reaches the attention and the mean is over real positions only."""
    a = anchors.build_anchor("conformer", "tiny", 2, 8)
    a.module.eval()
    tokens, dist, et = a.inputs
    pad = 5
    tokens2 = torch.nn.functional.pad(tokens, (0, pad))
    dist2 = torch.nn.functional.pad(dist, (0, pad, 0, pad))
    et2 = torch.nn.functional.pad(et, (0, pad, 0, pad))
    with torch.no_grad():
        torch.testing.assert_close(a.module(tokens2, dist2, et2), a.module(tokens, dist, et), rtol=1e-5, atol=1e-5)


def test_bert_anchor_is_sdpa_cls_and_masks_padding():
    a = anchors.build_anchor("bert", "tiny", 2, 16)
    assert a.module.bert.config._attn_implementation == "sdpa"
    a.module.eval()
    ids, mask = a.inputs
    ids2 = torch.where(mask.bool(), ids, torch.full_like(ids, 7))  # other tokens at masked positions
    with torch.no_grad():
        ref = a.module.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        torch.testing.assert_close(a.module(ids2, mask), ref, rtol=1e-5, atol=1e-5)


def test_build_anchor_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown tower"):
        anchors.build_anchor("smiles", "mini", 2, 8)
    with pytest.raises(ValueError, match="unknown size"):
        anchors.build_anchor("gin", "huge", 2, 8)
    with pytest.raises(ValueError, match="batch"):
        anchors.build_anchor("gin", "tiny", 0, 8)


def test_compile_anchor_wraps_the_module():
    a = anchors.build_anchor("gin", "tiny", 3, 8)
    c = anchors.compile_anchor(a)
    assert c.module is not a.module and c.module._orig_mod is a.module
    assert c.inputs is a.inputs and c.out_dim == a.out_dim and "torch.compile" in c.name


def test_rows_end_to_end_tiny(keep_threads):
    seen = []
    out = towers.rows(["gin"], ["tiny"], repeats=1, threads=1, compile=False, gemm=True, gemm_size=64,
                      progress=seen.append)
    gemm, row = out
    assert gemm["tower"] == "gemm" and gemm["jax_gflops"] > 0 and gemm["torch_gflops"] > 0
    assert set(towers.ROW_KEYS) <= set(row)
    assert (row["tower"], row["size"], row["shape"]) == ("gin", "tiny", list(tower_inputs.shape_of("gin", "tiny")))
    for k in ("jax_ms", "torch_ms", "anchor_eager_ms", "compile_s", "gflop", "gemm_pct"):
        assert row[k] is not None and math.isfinite(row[k]) and row[k] > 0, k
    assert row["anchor_compiled_ms"] is None and row["anchor_compile_s"] is None
    assert row["ratio"] == pytest.approx(row["torch_ms"] / row["jax_ms"])
    assert row["best_anchor_ratio"] == pytest.approx(row["anchor_eager_ms"] / row["jax_ms"])
    assert row["gemm_pct"] == pytest.approx(100 * row["gflops"] / gemm["jax_gflops"])
    assert "torch_geometric" in row["anchor_eager"]
    assert any("gin tiny" in line for line in seen)
    table = towers.table([row])
    assert table.count("\n") == 2 and "| gin | tiny |" in table


def test_rows_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown towers/sizes"):
        towers.rows(["gin", "smiles"], ["tiny"], compile=False)


@pytest.mark.slow
def test_rows_compiled_anchor_tiny(keep_threads):
    """A row with the torch.compile'd anchor (its compile takes tens of seconds on this CPU)."""
    (row,) = towers.rows(["gin"], ["tiny"], repeats=1, threads=1, compile=True, reference=False,
                         progress=lambda s: None)
    assert row["anchor_compile_s"] > 0 and np.isfinite(row["anchor_compiled_ms"])
    assert row["best_anchor_ratio"] == pytest.approx(min(row["anchor_eager_ms"], row["anchor_compiled_ms"])
                                                     / row["jax_ms"])
    assert "torch.compile" in row["anchor_compiled"]
