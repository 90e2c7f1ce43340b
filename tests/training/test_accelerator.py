"""experiments/benchmarks/accelerator.{sh,py} and what it measures, on the CPU at the tiny size:
the script's CPU path (all four variants, finite numbers), the real MolBind step in bf16 close
to float32, and the fused step equal to the split step over all four pair types.

tests/training/test_train.py checks split == fused == a hand-written update on a toy model
with the MolBind interface; here the same holds for the real (tiny) MolBind towers, whose
scanned Uni-Mol stacks, custom-gradient attention, hash dropout and GIN BatchNorm the toy lacks.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "experiments", "benchmarks", "accelerator.sh")


def _bench():
    spec = importlib.util.spec_from_file_location(
        "accelerator_bench", os.path.join(REPO, "experiments", "benchmarks", "accelerator.py"))
    mod = sys.modules.get("accelerator_bench")
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules["accelerator_bench"] = mod
        spec.loader.exec_module(mod)
    return mod


def test_peak_table_by_device_kind():
    b = _bench()
    assert b.peak_tflops("NVIDIA H100 80GB HBM3", "gpu", "bfloat16")[0] == 989.4
    assert b.peak_tflops("NVIDIA H200", "gpu", "float32")[0] == 494.7  # TF32, XLA's default for f32
    assert b.peak_tflops("NVIDIA H100 PCIe", "gpu", "bfloat16")[0] == 756.0
    assert b.peak_tflops("NVIDIA A100-SXM4-40GB", "gpu", "float32")[0] == 156.0
    assert b.peak_tflops("NVIDIA L4", "gpu", "bfloat16")[0] == 121.0
    assert b.peak_tflops("TPU v5 lite", "tpu", "bfloat16")[0] == 197.0
    assert b.peak_tflops("TPU v5p", "tpu", "bfloat16")[0] == 459.0
    assert b.peak_tflops("TPU v6 lite", "tpu", "bfloat16")[0] == 918.0
    assert b.peak_tflops("TPU v4", "tpu", "float32")[0] == 275.0
    peak, note = b.peak_tflops("NVIDIA L40S", "gpu", "bfloat16")  # not an L4
    assert peak is None and "unknown device_kind" in note
    assert b.peak_tflops("cpu", "cpu", "float32") == (None, "CPU: no MFU")


@pytest.mark.slow  # four tiny-model compiles in their own processes (minutes on 2 cores)
def test_accelerator_script_cpu_path(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, XLA_FLAGS="", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, ".pyshim"), REPO]))
    # three of the four variants (bf16_split is f32_split's path with bf16_fused's dtype): each
    # runs in its own process and compiles the tiny model, about 2 minutes apiece in CI
    res = subprocess.run(["bash", SCRIPT, "--size=tiny", "--steps=2", "--warmup=1",
                          "--variants=f32_split,f32_fused,bf16_fused"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "devices: [CpuDevice(id=0)]" in res.stdout
    data = json.loads((tmp_path / "accelerator.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["f32_split", "f32_fused", "bf16_fused"]
    for name, r in rows.items():
        assert "error" not in r, (name, r)
        assert r["dtype"] == ("bfloat16" if name.startswith("bf16") else "float32") and r["fused"] == name.endswith("fused")
        for key in ("first_call_s", "step_ms", "examples_per_s", "tflop_per_step", "tflops", "peak_memory_gib", "loss"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
        assert r["finite"] and len(r["step_ms_all"]) == 2 and r["examples_per_step"] == 32
        assert r["mfu"] is None and r["mfu_note"] == "CPU: no MFU"  # no peak for a CPU
        assert r["memory_source"] == "compiled memory_analysis" and r["notes"] == []
        assert r["shapes"]["conformer_pocket"]["y"] == [8, 32]  # tiny: pockets padded to 32 tokens
    # The same step in both layouts: the same FLOPs within what the separate programs add.
    assert rows["f32_fused"]["tflop_per_step"] == pytest.approx(rows["f32_split"]["tflop_per_step"], rel=0.05)
    assert data["meta"]["backend"] == "cpu" and data["meta"]["size"] == "tiny"
    table = (tmp_path / "accelerator.txt").read_text()
    assert "| bf16_fused |" in table and "| variant | step ms |" in table and "devices: [CpuDevice(id=0)]" in table


# ----------------------------------------------------------------------------- the step itself
def _steps(dtype: str, fused: bool, n: int):
    """States (as numpy) before and after each of `n` steps of the tiny MolBind, plain SGD so
    that parameters compare gradients (Adam's first step g/|g| would amplify round-off)."""
    from molbind_jax.training import sharding

    b = _bench()
    mesh = sharding.make_mesh(1)
    cfg = b.model_config("tiny", dtype)
    model, ts = b.build_step(cfg, mesh, fused=fused, tx=optax.sgd(0.1))
    state = ts.init_state(model)
    micro = b.make_batches(cfg, mesh, b.settings("tiny"))
    out, losses = [jax.tree.map(np.asarray, state)], []
    for _ in range(n):
        state, m = ts(state, [micro])
        assert bool(m["finite"])
        out.append(jax.tree.map(np.asarray, state))
        losses.append({k: float(v) for k, v in m.items() if k.startswith("loss")})
    return out, losses


@pytest.fixture(scope="module")
def f32_split():
    return _steps("float32", fused=False, n=2)


def _rel(a, b) -> float:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    diff = math.sqrt(sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(la, lb)))
    return diff / math.sqrt(sum(float(np.sum(y.astype(np.float64) ** 2)) for y in lb))


@pytest.mark.slow
def test_fused_step_equals_split_step_real_molbind(f32_split):
    (split_states, split_losses), (fused_states, fused_losses) = f32_split, _steps("float32", fused=True, n=2)
    for a, b in zip(split_losses, fused_losses):
        assert set(a) == {"loss", *(f"loss/{p}" for p in _bench().PAIRS)}
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5)
    for sa, sb in zip(split_states[1:], fused_states[1:]):
        assert int(sa["step"]) == int(sb["step"])
        for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)
    # Not vacuous: two SGD steps moved the parameters and the GIN BatchNorm statistics.
    moved = _rel(split_states[2]["trainable"], split_states[0]["trainable"])
    assert moved > 1e-3
    assert _rel(split_states[2]["batch_stats"], split_states[0]["batch_stats"]) > 1e-3


@pytest.mark.slow
def test_bf16_step_close_to_float32(f32_split):
    (f32_states, f32_losses), (b16_states, b16_losses) = f32_split, _steps("bfloat16", fused=False, n=1)
    for k, v in f32_losses[0].items():
        assert abs(b16_losses[0][k] - v) <= 0.03 * abs(v), (k, v, b16_losses[0][k])
    # The update (params after - before, = -lr * gradient) in bf16 against float32.
    before = f32_states[0]["trainable"]
    d32 = jax.tree.map(lambda a, b: a - b, f32_states[1]["trainable"], before)
    d16 = jax.tree.map(lambda a, b: a - b, b16_states[1]["trainable"], before)
    assert np.all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), b16_states[0]["trainable"], before)))
    err = _rel(d16, d32)
    assert 0 < err < 0.1, err  # bf16 matmuls differ (not 0) yet stay close
    assert _rel(b16_states[1]["trainable"], f32_states[1]["trainable"]) < 1e-3
