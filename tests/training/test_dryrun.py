"""`python -m molbind_jax.training.dryrun` and the launch recipes' DRYRUN=1 mode.

The dry run traces and compiles the real train step on abstract inputs; here at reduced size
(the m4 recipe's `smoke` variant: tiny towers, same code path), on the CPU devices of the test
session (tests/conftest.py simulates 8). One slow test runs the full-size m4 recipe (about 2-3
minutes here); the measured full-size numbers and their commands are in docs/training.md.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from molbind_jax.training import dryrun
from smoke_configs import REPO, load_config, m4_config

LAUNCHERS = ("tpu_pod.sh", "slurm_gpu.sbatch", "multinode_env.sh")


def test_batch_shapes_follow_the_design_layout():
    from molbind_jax.modalities.atoms import AtomsBatch
    from molbind_jax.modalities.graph import GraphBatch
    from molbind_jax.modalities.text import TextBatch

    def sd(a):
        return tuple(a.shape), a.dtype.name

    dims = dict(text_len=256, mol_atoms=64, pocket_atoms=264, graph_nodes=62, graph_edges=136)
    gt = dryrun.batch_shapes("graph_text", 384, 4, dims)
    assert isinstance(gt.x, GraphBatch) and isinstance(gt.y, TextBatch)
    assert sd(gt.y.ids) == ((384, 256), "int32") and sd(gt.y.mask) == ((384, 256), "int32")
    assert sd(gt.mask) == ((384,), "bool")
    # 96 graphs per device: 96 x 62 + 1 padding node -> 5960 (a multiple of 8); 96 x 136 edges.
    assert sd(gt.x.nodes) == ((4, 5960, 2), "int32") and sd(gt.x.senders) == ((4, 13056), "int32")
    assert sd(gt.x.edges) == ((4, 13056, 2), "int32") and sd(gt.x.receivers) == ((4, 13056), "int32")
    assert sd(gt.x.n_node) == ((4, 97), "int32") and sd(gt.x.n_edge) == ((4, 97), "int32")
    cp = dryrun.batch_shapes("conformer_pocket", 384, 4, dims)
    assert isinstance(cp.x, AtomsBatch) and isinstance(cp.y, AtomsBatch)
    assert sd(cp.x.coords) == ((384, 64, 3), "float32") and sd(cp.y.tokens) == ((384, 264), "int32")
    assert dryrun.flat_shapes("conformer_pocket", cp) == {
        "conformer.tokens": [384, 64], "conformer.coords": [384, 64, 3],
        "pocket.tokens": [384, 264], "pocket.coords": [384, 264, 3], "mask": [384],
        "x_key": [384], "y_key": [384]}
    with pytest.raises(ValueError, match="not divisible by 5 devices"):
        dryrun.batch_shapes("graph_text", 384, 5, dims)
    with pytest.raises(ValueError, match="config.dryrun has no 'pocket_atoms'"):
        dryrun.batch_shapes("conformer_pocket", 384, 4, {k: v for k, v in dims.items() if k != "pocket_atoms"})


def test_simulate_devices_sets_or_replaces_the_flag(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8")
    dryrun.simulate_devices(4)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=4"
    monkeypatch.delenv("XLA_FLAGS")
    dryrun.simulate_devices(2)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    assert os.environ["JAX_PLATFORMS"] == "cpu"


def test_dry_run_sizes_the_text_tower_from_init_text_without_reading_weights():
    mcfg, note = dryrun._model_config(load_config("mini"))  # init.text="minilm": 6 x 384
    assert (mcfg.bert.hidden_size, mcfg.bert.num_layers, mcfg.bert.vocab_size, note) == (384, 6, 30522, "")
    c = m4_config()
    c.init.text = "/pod/ckpts/scibert"  # a path of the pod, not of this machine: the preset's size
    mcfg, note = dryrun._model_config(c)
    assert (mcfg.bert.hidden_size, mcfg.bert.vocab_size) == (768, 31091) and "/pod/ckpts/scibert" in note


def _small(accumulate, pairs=("graph_conformer",), fused=False):
    c = m4_config("smoke")
    c.accumulate_steps = accumulate
    c.pairs = pairs
    c.fused_step = fused
    return c


@pytest.mark.slow  # three compiles of the tiny step
def test_dry_run_compiles_the_real_step_and_reports_memory_and_flops():
    one = dryrun.dry_run(_small(1), devices=2)
    two = dryrun.dry_run(_small(2), devices=2)
    fused = dryrun.dry_run(_small(2, fused=True), devices=2)
    assert one["devices"] == 2 and one["per_device_batch"]["graph_conformer"] == 8
    assert two["micro_batches"] == [["graph_conformer"], ["graph_conformer"]]
    # The split step compiles a pair's program once and calls it per micro-batch.
    assert two["program_calls"] == {"grad graph_conformer": 2, "add": 1, "update": 1}
    assert set(one["program_calls"]) == {"grad graph_conformer", "update"}
    n = one["parameters"]
    assert n == sum(one["parameters_per_tower"].values()) > 10_000
    mem = two["memory_bytes_per_device"]
    # The state: float32 parameters and Adam's two moments (and the BN statistics, the counts).
    assert 12 * n <= mem["state"] < 12 * n + 20_000 and mem["gradient_sum"] == 4 * n
    update = mem["programs"]["update"]
    assert update["arguments"] >= mem["state"] + mem["gradient_sum"] and update["aliased"] >= 12 * n
    grad = mem["programs"]["grad graph_conformer"]
    assert grad["outputs"] >= 4 * n and grad["temporaries"] > 0
    assert mem["total"] == max(p["live"] for p in mem["programs"].values()) >= mem["state"] + mem["gradient_sum"]
    fm = fused["memory_bytes_per_device"]
    assert fm["total"] == fm["programs"]["step"]["arguments"] + fm["programs"]["step"]["outputs"] \
        - fm["programs"]["step"]["aliased"] + fm["programs"]["step"]["temporaries"]
    assert fm["programs"]["step"]["aliased"] >= 12 * n  # the donated state
    # FLOPs: the second micro-batch doubles the forward/backward work; the fused program
    # holds the same work as the pieces.
    assert one["flops_per_device"] > 0 and one["flops_all_devices"] == 2 * one["flops_per_device"]
    assert 1.6 < two["flops_per_device"] / one["flops_per_device"] < 2.05
    assert fused["flops_per_device"] == pytest.approx(two["flops_per_device"], rel=0.05)
    text = dryrun.format_report(two)
    assert "per-device memory: total" in text and "FLOPs per step:" in text
    assert "program grad graph_conformer (x2)" in text
    assert "batch per device and micro-step: graph_conformer 8; accumulate_steps 2" in text


@pytest.mark.slow  # every pair type of the tiny recipe
def test_dry_run_of_the_whole_recipe_at_reduced_size():
    r = dryrun.dry_run(m4_config("smoke"), devices=8)
    pairs = ["graph_text", "conformer_text", "graph_conformer", "conformer_pocket"]
    assert r["micro_batches"] == [sorted(pairs)] * 2
    assert r["program_calls"] == {**{f"grad {p}": 2 for p in pairs}, "add": 7, "update": 1}
    assert r["per_device_batch"] == {p: 2 for p in r["per_device_batch"]} and np.isfinite(r["flops_per_device"])
    assert r["batch_shapes"]["conformer_pocket"]["pocket.tokens"] == [16, 24]
    assert r["memory_bytes_per_device"]["peak_program"].startswith("grad ")


@pytest.mark.slow  # the full-size recipe: about 2-3 minutes of compile on 2 CPU cores
def test_dry_run_of_the_full_size_m4_recipe():
    r = dryrun.dry_run(m4_config(), devices=8)
    towers = r["parameters_per_tower"]
    # SciBERT-sized text tower (31091 token rows), two 15 x 512 Uni-Mol towers, a 5 x 300 GIN.
    assert 109e6 < towers["text_encoder"] < 110e6
    # The two Uni-Mol towers differ only in their vocabularies (31 and 10 tokens).
    assert 47e6 < towers["pocket_encoder"] < towers["conformer_encoder"] < 48e6
    assert 1.8e6 < towers["graph_encoder"] < 2.0e6 and r["model_dtype"] == "bfloat16"
    assert r["per_device_batch"] == {p: 48 for p in r["per_device_batch"]} and r["accumulate_steps"] == 4
    mem = r["memory_bytes_per_device"]
    assert 12 * r["parameters"] <= mem["state"] < 12 * r["parameters"] + 1e6
    assert mem["peak_program"] == "grad conformer_pocket" and mem["total"] > mem["state"] + mem["gradient_sum"]
    assert r["flops_per_device"] > 5e13


# ---------------------------------------------------------------------- launch recipes


def _launch(script, *args, **env):
    full = dict(os.environ, **env)
    return subprocess.run(["bash", f"experiments/launch/{script}", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script", LAUNCHERS)
def test_launchers_pass_the_backbones(script, tmp_path):
    env = dict(PY="echo", GCLOUD="echo", SRUN="echo", BACKBONE_DIR="/ckpts", POCKET_DICT="",
               JAX_COORDINATOR_ADDRESS="127.0.0.1:1", JAX_NUM_PROCESSES="1", JAX_PROCESS_ID="0")
    args = ["my-tpu", "zone", "gs://b/run"] if script == "tpu_pod.sh" else ["/shared/run"]
    out = _launch(script, *args, "--config.log_every=5", GRAPH_INIT="/other/gin.pth", **env)
    assert out.returncode == 0, out.stderr
    cmd = out.stdout
    assert "-m molbind_jax.training.train" in cmd and "--config=experiments/configs/m4.py" in cmd
    for flag in ("--config.init.text=/ckpts/scibert_scivocab_uncased", "--config.init.graph=/other/gin.pth",
                 "--config.init.conformer=/ckpts/mol_pretrain.pt", "--config.init.pocket=/ckpts/protein_pretrain.pt",
                 "--config.init.conformer_dictionary=/ckpts/unimol_dict_mol.txt", "--config.log_every=5"):
        assert flag in cmd, (flag, cmd)
    assert "pocket_dictionary" not in cmd  # POCKET_DICT= turns the check off
    # DRYRUN=1: the dry run, here, with the --config.* flags and without the positionals.
    out = _launch(script, *args, "--config.log_every=5", DRYRUN="1", DEVICES="4", **env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["-m", "molbind_jax.training.dryrun", "--config=experiments/configs/m4.py", "--devices=4",
                                  "--config.log_every=5"]


@pytest.mark.slow  # three CLI dry runs of the tiny step
@pytest.mark.parametrize("script", LAUNCHERS)
def test_launcher_dryrun_prints_memory_and_flops(script):
    args = ["my-tpu", "zone", "gs://b/run"] if script == "tpu_pod.sh" else ["/shared/run"]
    out = _launch(script, *args, "--config.accumulate_steps=1", "--config.pairs=('graph_conformer',)",
                  DRYRUN="1", DEVICES="2", CONFIG="experiments/configs/m4.py:smoke", XLA_FLAGS="", PY=sys.executable)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("dry run: one train step on 2 simulated cpu devices")
    mem = [ln for ln in lines if ln.startswith("per-device memory: total ")]
    flops = [ln for ln in lines if ln.startswith("FLOPs per step: ")]
    assert len(mem) == 1 and len(flops) == 1 and "on 2 devices" in flops[0]
    assert any(ln.startswith("  program grad graph_conformer (x1): arguments ") for ln in lines)
    assert float(flops[0].split()[3]) > 0
