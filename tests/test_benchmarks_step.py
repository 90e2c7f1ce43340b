"""experiments/benchmarks/step.py and scale.py at tiny sizes: the rows carry the documented keys
and finite numbers, the PyTorch step trains (and keeps a locked tower fixed), and the chunked
loss at scale equals an independent dense reference."""
import importlib.util
import math
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "experiments", "benchmarks")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def step():
    return _load("step")


@pytest.fixture(scope="module")
def scale():
    return _load("scale")


def _finite_positive(v):
    return v is not None and math.isfinite(v) and v > 0


def test_torch_step_trains_and_keeps_a_locked_tower(step):
    import torch

    from molbind_jax.torch_reference.qformer import BertModel

    torch.set_num_threads(1)
    batch = dict(step.DEFAULT_BATCH)
    cfg = step.model_config("tiny")
    records = {p: step.step_inputs.pair_records(p, batch[p], step.LENGTHS["tiny"], cfg) for p in step.PAIRS}
    towers, source = step.torch_towers("tiny", records, batch)
    assert source == "torch_reference" and set(towers) == {
        "graph_text/graph", "graph_text/text", "conformer_text/conformer", "conformer_text/text",
        "graph_conformer/graph", "graph_conformer/conformer", "conformer_pocket/conformer", "conformer_pocket/pocket"}
    # one conformer tower serves its three pairs
    assert towers["conformer_text/conformer"].module is towers["conformer_pocket/conformer"].module
    text = towers["graph_text/text"].module
    assert isinstance(text, BertModel)
    before = {k: v.detach().clone() for k, v in text.state_dict().items()}
    graph_before = [p.detach().clone() for p in towers["graph_text/graph"].module.parameters()]
    fn = step.torch_step(towers, cfg.embed_dim, lr=3e-3, frozen=("text",))
    losses = [fn() for _ in range(4)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1e-3, losses
    assert all(torch.equal(before[k], v) for k, v in text.state_dict().items())  # locked: untouched
    assert any(not torch.equal(a, b) for a, b in zip(graph_before, towers["graph_text/graph"].module.parameters()))


def test_rows_reject_bad_input(step):
    with pytest.raises(ValueError, match="unknown"):
        step.rows(("huge",), 1)
    with pytest.raises(ValueError, match="unknown"):
        step.rows(("tiny",), 1, pairs=("graph_smiles",))


@pytest.mark.slow  # compiles one pair's gradient program and the update: 20-80 s on 2 shared cores
def test_step_rows_one_pair_tiny(step):
    rows = step.rows(("tiny",), 1, text=("trainable",), pairs=("graph_conformer",), batch={"graph_conformer": 8},
                     fused=False, flops=False, devices=1, progress=False)
    assert len(rows) == 1
    r = rows[0]
    assert r["size"] == "tiny" and r["text"] == "trainable" and r["examples"] == 8
    assert r["anchor_source"] == "torch_reference" and len(r["load"]) == 3
    for k in ("split_ms", "torch_ms", "ratio_split", "split_examples_per_s", "split_first_call_s", "peak_rss_mib"):
        assert _finite_positive(r[k]), k
    assert math.isfinite(r["loss_split"]) and math.isfinite(r["loss_torch"])
    assert "fused_ms" not in r and "split_gflop" not in r
    assert "| tiny | trainable | 8 |" in step.table(rows)


@pytest.mark.slow  # four pairs, split + fused, FLOP counting: minutes of compiling on 2 cores
def test_step_rows_whole_step_tiny(step):
    # the locked text mode only (as the mini config trains): the trainable mode is the same code
    # path with one more backward pass, and doubles the compiling (about 7 minutes in all)
    rows = step.rows(("tiny",), 1, text=("locked",), devices=1, progress=False)
    assert [(r["size"], r["text"]) for r in rows] == [("tiny", "locked")]
    for r in rows:
        assert r["examples"] == sum(step.DEFAULT_BATCH.values())
        for k in ("split_ms", "fused_ms", "torch_ms", "ratio_split", "ratio_fused", "split_gflop", "fused_gflop",
                  "split_gflops", "fused_compile_s"):
            assert _finite_positive(r[k]), (r["text"], k)
        # the fused program holds the update too; the split count is the per-pair programs only
        assert r["fused_gflop"] >= r["split_gflop"] * 0.99


def _reference_infonce(x, y, tau):
    """Symmetric InfoNCE in float64 numpy over the whole batch (no sharding, no chunks)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    logits = x @ y.T / tau

    def ce(lg):
        m = lg.max(1, keepdims=True)
        lse = (m + np.log(np.exp(lg - m).sum(1, keepdims=True)))[:, 0]
        return np.mean(lse - np.diag(lg))

    return 0.5 * (ce(logits) + ce(logits.T))


def test_scale_rows_tiny_chunked_equals_dense(scale):
    rows = scale.rows(global_batch=512, dim=16, chunk_size=48, candidates=10_000, queries=20, block=3000,
                      timeout=600)
    loss, retrieval = rows
    assert loss["part"] == "loss" and loss["devices"] == 8 and loss["per_device_rows"] == 64
    x, y = scale.embeddings(512, 16)
    ref = _reference_infonce(x, y, 0.1)
    assert ref > 0.5  # not a degenerate batch
    assert abs(loss["loss_chunked"] - ref) <= 1e-5 * ref
    assert loss["dense_ran"] and abs(loss["loss_dense"] - ref) <= 1e-5 * ref
    assert loss["grad_rel_err"] <= 1e-5
    for k in ("chunked_compile_s", "chunked_run_s", "chunked_peak_rss_mib", "peak_rss_mib"):
        assert _finite_positive(loss[k]), k
    assert loss["chunked_mib"]["argument"] > 0 and loss["dense_mib"]["temp"] > 0
    assert retrieval["part"] == "retrieval" and retrieval["candidates"] == 10_000
    assert retrieval["streamed_equal"] and retrieval["exact_check"]
    assert _finite_positive(retrieval["resident_s"]) and _finite_positive(retrieval["resident_peak_rss_mib"])
    assert "over 8 devices" in scale.table(rows)


def test_streamed_top_k_merges_blocks(scale):
    from molbind_jax.inference.index import top_k_batch

    rng = np.random.default_rng(3)
    cand = scale.unit_rows(rng, 1000, 8)
    cand[500] = cand[10]  # a tie across blocks: the lower row first
    q = np.stack([cand[10], scale.unit_rows(rng, 1, 8)[0]])
    blocks = [(s, cand[s:s + 300]) for s in range(0, 1000, 300)]
    rows, scores = scale.streamed_top_k(blocks, q, 5)
    want_rows, want_scores = top_k_batch(cand, q, 5)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores)
    assert rows[0, 0] == 10 and rows[0, 1] == 500


def test_torch_towers_use_anchors_when_importable(step, monkeypatch):
    import sys
    import types

    calls = []

    def build_anchor(tower, size, batch, length, *, seed=0):
        calls.append((tower, size, batch, length))
        if tower == "gin":
            raise ImportError("No module named 'torch_geometric'")
        return step.reference_anchor(tower, size, batch, length, seed=seed)

    monkeypatch.setitem(sys.modules, "anchors", types.SimpleNamespace(build_anchor=build_anchor))
    cfg = step.model_config("mini")
    records = {"graph_conformer": step.step_inputs.pair_records("graph_conformer", 4, step.LENGTHS["mini"], cfg)}
    towers, source = step.torch_towers("mini", records, {"graph_conformer": 4})
    assert calls == [("gin", "mini", 4, 24), ("conformer", "mini", 4, 32)]
    assert source == "graph: torch_reference, conformer: anchors"
    assert towers["graph_conformer/conformer"].inputs[0].shape == (4, 32)
    # tiny has no anchors: the fallback without asking
    calls.clear()
    cfg = step.model_config("tiny")
    records = {"graph_conformer": step.step_inputs.pair_records("graph_conformer", 4, step.LENGTHS["tiny"], cfg)}
    assert step.torch_towers("tiny", records, {"graph_conformer": 4})[1] == "torch_reference" and not calls
