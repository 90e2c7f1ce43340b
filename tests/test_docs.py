"""The docs match the code: every command in README.md, docs/*.md and the docstrings of the
configs and command modules names a module that exists, flags that module defines, config
fields that exist and files that are in the repository; every `from X import Y` of a Python
example resolves; no path of a development machine or outside the repository appears.

The commands themselves are run elsewhere: the smoke/export/embed/search path and the
build-pairs -> train -> evaluate -> embed how-to by the end-to-end tests, `make demo` by
experiments/demo.sh. This test catches the drift between what the docs say and what the code
accepts (a renamed flag, a moved module, a config field that no longer exists)."""
from __future__ import annotations

import ast
import functools
import glob
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Flags every absl program has; the commands may pass them.
ABSL_FLAGS = {"verbosity", "v", "logtostderr", "alsologtostderr", "log_dir", "helpfull", "help"}
# Placeholders the docs use for the reader's own paths (never checked for existence).
PLACEHOLDER = re.compile(r"^[A-Z_]+$|^(gs|s3)://|DIR|RUN|EXPORT|PATH|BUCKET|<|\.\.\.")


def doc_files() -> list[str]:
    return [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def docstring_files() -> list[str]:
    """Configs and command modules: their docstrings give commands to copy."""
    files = sorted(glob.glob(os.path.join(REPO, "experiments", "configs", "*.py")))
    for path in sorted(glob.glob(os.path.join(REPO, "molbind_jax", "**", "*.py"), recursive=True)
                       + glob.glob(os.path.join(REPO, "data_pipeline", "**", "*.py"), recursive=True)):
        if "def cli(" in open(path, encoding="utf-8").read():
            files.append(path)
    return files


def _text_blocks(path: str) -> list[str]:
    """Fenced blocks of a Markdown file; the module docstring of a Python file."""
    text = open(path, encoding="utf-8").read()
    if path.endswith(".py"):
        return [ast.get_docstring(ast.parse(text)) or ""]
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def commands() -> list[tuple[str, str]]:
    """(where, command) for every `python -m MODULE ...` line (continuations joined)."""
    out = []
    for path in doc_files() + docstring_files():
        for block in _text_blocks(path):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split(" #")[0].strip()
                if re.search(r"python3? -m (molbind_jax|molbind_data)\.", line):
                    out.append((os.path.relpath(path, REPO), line))
    return out


def parse(command: str) -> tuple[str, list[tuple[str, str | None]]]:
    """-> (module, [(flag, value)]) of one command line; optional [--x=y] parts included."""
    command = command.replace("[", " ").replace("]", " ")
    words = shlex.split(command, posix=True)
    module = words[words.index("-m") + 1]
    flags = []
    for w in words[words.index("-m") + 2:]:
        if w.startswith("--"):
            name, _, value = w[2:].partition("=")
            flags.append((name, value if _ else None))
    return module, flags


@functools.lru_cache(maxsize=None)
def defined_flags(module: str) -> frozenset[str]:
    """The flags `python -m MODULE --helpfull` (absl) or `--help` (argparse) lists."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", module, "--helpfull"], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=300)
    names = re.findall(r"^\s+--(?:\[no\])?([\w.]+)", run.stdout + run.stderr, flags=re.M)
    if not names:  # an argparse program (TFDS's build command): its --help usage lists them
        run = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                             text=True, env=env, cwd=REPO, timeout=300)
        names = [n.replace("-", "_") for n in re.findall(r"--([\w-]+)", run.stdout)]
    assert names, f"python -m {module} --helpfull listed no flags:\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
    return frozenset(names)


def load_config(spec: str):
    path, _, variant = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("doc_cfg", os.path.join(REPO, path))
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(variant or None)


def test_commands_are_found():
    cmds = commands()
    modules = {parse(c)[0] for _, c in cmds}
    # The docs show every kind of command; if the extraction broke, this would be small.
    assert len(cmds) > 40, cmds
    for needed in ("molbind_jax.training.train", "molbind_jax.inference.embed", "molbind_data.build",
                   "molbind_jax.evaluation.evaluate", "molbind_jax.training.export"):
        assert needed in modules


def test_no_machine_paths_or_pointers_outside_the_repository():
    bad = re.compile(r"/work/|\.\./shared|/tmp/bash_jobs|/root/|original-pytorch\.md|\.\./\.library")
    offenders = []
    for path in doc_files() + sorted(glob.glob(os.path.join(REPO, "**", "*.py"), recursive=True)):
        if "/.venv/" in path or "/tests/" in path:
            continue
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            if bad.search(line):
                offenders.append(f"{os.path.relpath(path, REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_python_examples_import():
    """Every `from X import Y` in a Python block of the docs resolves."""
    failures = []
    for path in doc_files():
        for block in _text_blocks(path):
            for mod, names in re.findall(r"^\s*from ((?:molbind_jax|molbind_data)[\w.]*) import ([\w, ]+)",
                                         block, flags=re.M):
                try:
                    module = importlib.import_module(mod)
                except ImportError as err:
                    failures.append(f"{os.path.relpath(path, REPO)}: from {mod}: {err}")
                    continue
                for name in (n.split(" as ")[0].strip() for n in names.split(",")):
                    if name and not hasattr(module, name):
                        try:
                            importlib.import_module(f"{mod}.{name}")
                        except ImportError:
                            failures.append(f"{os.path.relpath(path, REPO)}: {mod} has no {name}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow  # fast tier < 90 s: one --helpfull subprocess per documented command module
def test_documented_commands_match_the_code():
    """Module exists, every flag is defined by it, --config files and fields exist, and the
    repository paths a command names exist."""
    failures = []
    for where, command in commands():
        module, flags = parse(command)
        if importlib.util.find_spec(module) is None:
            failures.append(f"{where}: no module {module}: {command}")
            continue
        known = defined_flags(module) | ABSL_FLAGS
        config = None
        for name, value in flags:
            base = name.split(".")[0]
            flag = base.replace("-", "_")
            if flag not in known and flag.removeprefix("no") not in known:
                failures.append(f"{where}: {module} has no flag --{name}: {command}")
                continue
            if name == "config" and value and ".py" in value and not PLACEHOLDER.search(value):
                path = value.partition(":")[0]
                if not os.path.exists(os.path.join(REPO, path)):
                    failures.append(f"{where}: no config file {path}: {command}")
                    continue
                config = load_config(value)
            elif name.startswith("config.") and config is not None and "*" not in name:
                node = config
                for part in name.split(".")[1:]:
                    if part not in node:
                        failures.append(f"{where}: config has no field {name}: {command}")
                        break
                    node = node[part]
            elif value and (value.startswith("experiments/") or value.startswith("docs/")):
                if not PLACEHOLDER.search(value) and not os.path.exists(os.path.join(REPO, value)):
                    failures.append(f"{where}: --{name}={value} is not in the repository")
    assert not failures, "\n".join(failures)
