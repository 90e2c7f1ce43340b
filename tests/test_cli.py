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
