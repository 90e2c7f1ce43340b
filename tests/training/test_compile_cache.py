"""The launcher's persistent compilation cache (training/compile_cache.py, `--compile_cache`).

A plumbing check, not a timing one: a second launcher process with the same cache directory
reads every program the first one compiled and writes no new entry."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from molbind_jax.training import compile_cache

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_resolve_settings(tmp_path, monkeypatch):
    import jax

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    if jax.config.jax_compilation_cache_dir is None:  # "auto" keeps a cache directory JAX already has
        assert compile_cache.resolve("auto") == str(tmp_path / "xdg" / "molbind_jax" / "jax_cache")
        assert compile_cache.resolve(None) == compile_cache.resolve("auto")
    assert compile_cache.resolve("off") is None and compile_cache.resolve("OFF") is None
    assert compile_cache.resolve(str(tmp_path / "c")) == str(tmp_path / "c")
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.resolve(None) is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    assert compile_cache.resolve(None) == str(tmp_path / "env")
    assert compile_cache.resolve("off") is None  # the flag wins over the environment


def test_counter_describes_nothing_without_cache_events():
    c = compile_cache.CacheCounter()
    assert c.describe() == "" and c.snapshot()["requests"] == 0


def _train(workdir, cache):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               OPENBLAS_NUM_THREADS="1")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    # One pair type keeps the first compile short; the plumbing is the same for four.
    cmd = [sys.executable, "-m", "molbind_jax.training.train", f"--workdir={workdir}", f"--compile_cache={cache}",
           "--config=experiments/configs/mini.py:smoke", "--config.pairs=('graph_conformer',)",
           "--config.total_steps=2", "--config.checkpoint_every=100", "--config.eval_every=0",
           "--config.log_every=1", "--config.tensorboard=False", "--config.progress_bar=False",
           "--config.num_devices=2"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(workdir, "train_summary.json"), encoding="utf-8") as f:
        return r.stderr, json.load(f)["compilation_cache"]


@pytest.mark.slow
def test_second_run_reads_every_program_from_the_cache(tmp_path):
    cache = str(tmp_path / "cache")
    err1, first = _train(str(tmp_path / "a"), cache)
    assert first["dir"] == cache and first["compiled"] > 0 and first["written"] > 0, first
    entries = sorted(os.listdir(cache))
    assert entries

    err2, second = _train(str(tmp_path / "b"), cache)  # a fresh run of the same programs
    assert second["requests"] > 0 and second["hits"] == second["requests"], second
    assert second["compiled"] == 0 and second["written"] == 0, second
    assert sorted(os.listdir(cache)) == entries  # nothing new written
    line = [ln for ln in err2.splitlines() if ln.startswith("compiled and ran step 1")]
    assert line and "from the compilation cache, 0 compiled" in line[0], err2[-2000:]
    assert "0 programs from the compilation cache" in [ln for ln in err1.splitlines()
                                                       if ln.startswith("compiled and ran step 1")][0]
