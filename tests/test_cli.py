"""The shared command-line wrapper (molbind_jax/cli.py): a user's mistake is one `error:` line
and exit status 2, a bug keeps its traceback, and library logs are quiet by default."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = """
import logging, sys
from molbind_jax import cli
def main(argv):
    logging.getLogger("orbax").info("library chatter")
    kind = argv[1]
    if kind == "missing":
        open("/nonexistent/file.txt")
    if kind == "input":
        raise cli.InputError("--batch_size must be positive\\nsecond line")
    if kind == "bug":
        raise KeyError("internal")
    print("ok")
    return 0
cli.run(main)
"""


def _run(*args):
    return subprocess.run([sys.executable, "-c", PROGRAM, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("kind, needle", [("missing", "/nonexistent/file.txt"),
                                          ("input", "--batch_size must be positive; second line")])
def test_user_errors_are_one_line_and_exit_2(kind, needle):
    res = _run(kind)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and needle in lines[-1]
    assert "Traceback" not in res.stderr


def test_bugs_keep_their_traceback():
    res = _run("bug")
    assert res.returncode == 1 and "Traceback" in res.stderr and "KeyError" in res.stderr


def test_quiet_by_default_and_verbose_on_request():
    loud = _run("fine", "--verbosity=0")
    assert loud.returncode == 0 and "library chatter" in loud.stderr
    quiet = _run("fine")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok" and "library chatter" not in quiet.stderr


def test_one_line_keeps_the_first_lines():
    from molbind_jax.cli import one_line

    assert one_line(ValueError("a\n\n b ")) == "a;  b"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(ValueError("\n".join(map(str, range(20))))).endswith("11 ...")


def test_the_projects_own_messages_stay_visible():
    prog = ("import logging\nfrom molbind_jax import cli\n"
            "cli.run(lambda argv: logging.getLogger('molbind_jax.training.train').info('resumed from step 7'))")
    res = subprocess.run([sys.executable, "-c", prog], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "resumed from step 7" in res.stderr


def _console_modules() -> dict[str, str]:
    """console script name -> module, from pyproject.toml's [project.scripts]."""
    import re
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")).read()
    block = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return {name: target.split(":")[0] for name, target in re.findall(r'^([\w-]+) = "([\w.:]+)"', block, flags=re.M)}


# A missing path given to every command: (script, arguments, the path its error must name).
MISSING = "/nonexistent/molbind"
MISSING_PATH_CASES = [
    ("molbind-build", ["--source=pairs", "--pair=graph_text", f"--input={MISSING}/pairs.csv"], f"{MISSING}/pairs.csv"),
    ("molbind-train", [f"--config={MISSING}/cfg.py"], f"{MISSING}/cfg.py"),
    ("molbind-dryrun", [f"--config={MISSING}/cfg.py"], f"{MISSING}/cfg.py"),
    ("molbind-export", [f"--workdir={MISSING}/run"], f"{MISSING}/run"),
    ("molbind-evaluate", [f"--checkpoint={MISSING}/export"], f"{MISSING}/export"),
    ("molbind-seeds", [f"--workdirs={MISSING}/run", f"--output={MISSING}/seeds"], f"{MISSING}/run"),
    ("molbind-embed", [f"--checkpoint={MISSING}/export", "--modality=text", f"--input={MISSING}/in.txt"],
     f"{MISSING}/in.txt"),
    ("molbind-search", [f"--checkpoint={MISSING}/export", f"--index={MISSING}/x.npy", "--query-text=a"], MISSING),
    ("molbind-index", ["build", f"--embeddings={MISSING}/x.npy"], f"{MISSING}/x.npy"),
    ("molbind-compare", ["--encoder=gin", f"--checkpoint={MISSING}/g.pth", f"--inputs={MISSING}/in.npz"], MISSING),
    ("molbind-convert", [f"--checkpoint={MISSING}/m.ckpt", "--tokenizer=x"], f"{MISSING}/m.ckpt"),
]


def test_every_console_script_has_a_missing_path_case():
    assert sorted(_console_modules()) == sorted(c[0] for c in MISSING_PATH_CASES)


@pytest.mark.slow  # fast tier < 90 s: one interpreter start per command
@pytest.mark.parametrize("script, args, needle", MISSING_PATH_CASES, ids=[c[0] for c in MISSING_PATH_CASES])
def test_every_command_names_a_missing_path_in_one_line(tmp_path, script, args, needle):
    module = _console_modules()[script]
    out = [f"--output={tmp_path / 'out.npy'}"] if script in ("molbind-embed", "molbind-index", "molbind-convert") else []
    work = [f"--workdir={tmp_path / 'run'}"] if script == "molbind-train" else []
    data = [f"--data_dir={tmp_path / 'tfds'}"] if script == "molbind-build" else []
    r = subprocess.run([sys.executable, "-m", module, *args, *out, *work, *data], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0"))
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(errors) == 1 and needle in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "run" / "checkpoints").exists()
