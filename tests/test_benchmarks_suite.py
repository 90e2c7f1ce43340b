"""The performance suite's plumbing (experiments/benchmarks/suite.py) and the breakdown's product
inventory (breakdown.py): counts and FLOPs of the products a program runs, a scan's body once
per iteration. No timing is asserted."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.benchmarks import breakdown  # noqa: E402


def test_dot_inventory_counts_scan_bodies_and_gradients():
    import jax
    import jax.numpy as jnp

    w = jnp.ones((5, 16, 16))  # five stacked layers

    def f(x, w):
        y = x @ jnp.ones((8, 16))  # one product outside the scan: [4, 8] x [8, 16]

        def body(h, wl):
            return jnp.tanh(h @ wl), None

        h, _ = jax.lax.scan(body, y, w)
        return jnp.sum(h)

    x = jnp.ones((4, 8))
    inv = breakdown.dot_inventory(f, x, w)
    by_shape = {(lhs, rhs): c for (lhs, rhs, _, _), c in inv.items()}
    assert by_shape == {((4, 8), (8, 16)): 1, ((4, 16), (16, 16)): 5}
    # the gradient w.r.t. the stacked weights adds two products per layer (h^T g and g w^T) and
    # one for the first product's input gradient (w.r.t. x): [4, 16] x [8, 16]^T
    grad_inv = breakdown.dot_inventory(jax.grad(f, argnums=(0, 1)), x, w)
    assert sum(grad_inv.values()) == 1 + 5 + 5 * 2 + 1


def test_dot_flops():
    # [2, 3, 4] x [2, 4, 5], batch 0, contract 2 x 1: 2 * (2 * 3 * 5) * 4
    assert breakdown.dot_flops((2, 3, 4), (2, 4, 5), (((2,), (1,)), ((0,), (0,)))) == 2 * 2 * 3 * 5 * 4
    assert breakdown.dot_flops((64, 32), (32, 16), (((1,), (0,)), ((), ()))) == 2 * 64 * 32 * 16


def test_product_breakdown_adds_up():
    import jax.numpy as jnp

    a, b = jnp.ones((256, 256)), jnp.ones((256, 256))
    fn = lambda a, b: (a @ b) @ b
    out = breakdown.product_breakdown(fn, (a, b), step_s=0.05, peak_gflops=50.0, repeats=2)
    assert out["dot_calls"] == 2 and out["distinct_dots"] == 1
    assert out["dot_gflop"] == pytest.approx(2 * 2 * 256 ** 3 / 1e9)
    assert out["dots_ms"] + out["outside_dots_ms"] == pytest.approx(50.0)
    assert out["largest"][0]["count"] == 2 and math.isfinite(out["dots_gflops"])


@pytest.mark.slow  # compiles three tiny towers, a tiny loss on 8 devices and the breakdown: ~1-2 min
def test_suite_runs_every_part_at_tiny_size(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "suite.json"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=REPO)
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "benchmarks", "suite.py"), "--parts=gemm,towers,scale,profile",
         "--sizes=tiny", "--towers=gin", "--repeats=1", "--nocompile", "--gemm_size=128", "--scale_batch=512",
         "--scale_candidates=4096", f"--output={out}"], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["parts"]) == {"gemm", "towers", "scale", "profile"}
    for part in report["parts"].values():
        assert len(part["load_before"]) == 3 and part["wall_s"] >= 0
    gemm = report["parts"]["gemm"]["result"]
    assert gemm["jax_gflops"] > 0 and gemm["torch_gflops"] > 0
    (row,) = report["parts"]["towers"]["result"]
    assert row["tower"] == "gin" and row["jax_ms"] > 0 and row["gemm_pct"] is not None
    loss, retrieval = report["parts"]["scale"]["result"]
    assert loss["global_batch"] == 512 and np.isfinite(loss["loss_chunked"])
    assert loss["loss_chunked"] == pytest.approx(loss["loss_dense"], rel=1e-5)
    assert retrieval["candidates"] == 4096 and retrieval["streamed_equal"]
    (prof,) = report["parts"]["profile"]["result"]
    assert prof["ours"]["dot_calls"] > 0 and prof["torch_reference"]["step_ms"] > 0
    assert "| gin | tiny |" in res.stdout  # the printed tables
