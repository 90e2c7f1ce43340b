"""A run directory met again: damaged checkpoints and a changed config.

One real smoke run (launcher process, mini.py:smoke, checkpoints at steps 2, 4, 6) is copied
and damaged in the ways a disk or a copy damages files: the newest checkpoint's data files
truncated or garbled, every byte of a checkpoint zeroed, its JSON record missing. The resumed
run reports each damaged step on one line, moves it to checkpoints/damaged/ and continues from
the newest intact step; with every step damaged it stops with one error line (exit 2) and moves
nothing. The same run re-started with a changed config is refused with the changed keys, or
continued when only safe keys changed (a longer total_steps extends it).
"""
from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pytest

from molbind_jax.training.metric_writer import read_metrics
from test_resume import _run


def _data_files(step_dir):
    return [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True) if os.path.isfile(f)]


def truncate(step_dir):
    files = _data_files(step_dir)
    assert files
    for f in files:
        with open(f, "rb") as fh:
            b = fh.read()
        with open(f, "wb") as fh:
            fh.write(b[: len(b) // 2])


def garble(step_dir):
    files = _data_files(step_dir)
    assert files
    rng = np.random.default_rng(0)
    for f in files:
        with open(f, "rb") as fh:
            b = bytearray(fh.read())
        i = len(b) // 3
        b[i:i + 16] = rng.bytes(16)
        with open(f, "wb") as fh:
            fh.write(bytes(b))


def zero(step_dir):
    for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True):
        if os.path.isfile(f):
            n = os.path.getsize(f)
            with open(f, "wb") as fh:
                fh.write(b"\0" * n)


def drop_record(step_dir):
    shutil.rmtree(os.path.join(step_dir, "meta"))  # the JSON record (step, input position, model)


def _steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    base = str(root / "base")
    r = _run(base)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _steps(base) == [2, 4, 6]
    return root, base


def _copy(base_run, name):
    root, base = base_run
    dst = str(root / name)
    shutil.copytree(base, dst)
    return dst


def _damage_lines(stderr):
    return [line for line in stderr.splitlines() if "is damaged (" in line]


@pytest.mark.slow
@pytest.mark.parametrize("newest, older", [(truncate, garble), (zero, drop_record)],
                         ids=["truncated+garbled", "zeroed+no-record"])
def test_resume_skips_damaged_checkpoints(base_run, newest, older):
    w = _copy(base_run, f"{newest.__name__}_{older.__name__}")
    ck = os.path.join(w, "checkpoints")
    newest(os.path.join(ck, "6"))
    older(os.path.join(ck, "4"))
    r = _run(w, "--config.total_steps=8")  # a longer run: a safe config change, resumes
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _damage_lines(r.stderr)
    assert len(lines) == 2, r.stderr[-3000:]
    assert "checkpoint step 6 in" in lines[0] and "checkpoint step 4 in" in lines[1]
    assert all(f"moved to {os.path.join(ck, 'damaged')}" in line for line in lines)
    assert "resumed from step 2" in r.stderr
    assert "total_steps: 6 -> 8" in r.stderr  # the config change is reported
    assert "Event loop is closed" not in r.stderr and "Traceback" not in r.stderr
    assert sorted(os.listdir(os.path.join(ck, "damaged"))) == ["4", "6"]
    assert _steps(w) == [2, 4, 6, 8]  # 4 and 6 saved again by the resumed run
    steps = [rec["step"] for rec in read_metrics(w)]
    assert steps == list(range(1, 9))  # one consistent run: 3..8 re-trained after the fallback


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_error_and_moves_nothing(base_run):
    w = _copy(base_run, "all_damaged")
    ck = os.path.join(w, "checkpoints")
    for s in (2, 4, 6):
        truncate(os.path.join(ck, str(s)))
    r = _run(w, "--config.total_steps=8")
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no intact checkpoint in" in errors[0], r.stderr[-3000:]
    assert all(f"step {s}: OUT_OF_RANGE" in errors[0] for s in (2, 4, 6))
    assert "Traceback" not in r.stderr
    assert _steps(w) == [2, 4, 6] and not os.path.exists(os.path.join(ck, "damaged"))


@pytest.mark.slow
def test_changed_model_on_a_finished_run_is_refused_with_the_changes(base_run):
    w = _copy(base_run, "changed")
    r = _run(w, "--config.model.overrides.embed_dim=32", "--config.lr.peak=0.002")
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert "model.overrides.embed_dim: 16 -> 32" in errors[0] and "lr.peak: 0.001 -> 0.002" in errors[0]
    assert "--allow_config_change" in errors[0] and "new --workdir" in errors[0]
    # Allowed and extended, the changed embedding size still cannot continue: the arrays do not fit.
    r = _run(w, "--config.model.overrides.embed_dim=32", "--config.total_steps=8", "--allow_config_change")
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "other shapes" in errors[0] and "embed_dim: 16 -> 32" in errors[0], r.stderr[-3000:]
    assert _steps(w) == [2, 4, 6] and not os.path.exists(os.path.join(w, "checkpoints", "damaged"))


@pytest.mark.slow
def test_export_of_a_damaged_step_is_one_error_naming_it(base_run):
    import subprocess
    import sys
    w = _copy(base_run, "export_damaged")
    truncate(os.path.join(w, "checkpoints", "6"))
    out = os.path.join(w, "export")
    r = subprocess.run([sys.executable, "-m", "molbind_jax.training.export", f"--workdir={w}", f"--output={out}"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "checkpoint step 6 in" in errors[0] and "OUT_OF_RANGE" in errors[0], r.stderr[-3000:]
    assert "--step" in errors[0] and "Traceback" not in r.stderr and "Event loop is closed" not in r.stderr
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")
    assert _steps(w) == [2, 4, 6]  # an export moves nothing
