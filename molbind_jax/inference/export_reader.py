"""Reads an export written by `molbind_jax.training.export` (see its docstring for the layout):
config.json -> MolBindConfig -> an abstract MolBind filled from the orbax state, plus the
tokenizer. Inference needs nothing else from training.

Every file is checked before it is used, and a damaged export is ONE `CheckpointError` naming
the file (the command-line wrapper prints it as one `error:` line): a missing or truncated
config.json, a model config it cannot build, a missing or damaged `state/` (orbax metadata,
manifest or array data), a missing tokenizer folder or one with more ids than the text
tower's table, and a Uni-Mol / SMILES dictionary that differs from the order the featurizers
emit (the first differing line is named: a model would be fed wrong token ids).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

from molbind_jax.convert.common import CheckpointError
from molbind_jax.training.export import FORMAT_VERSION


def read_config(path: str) -> dict:
    """The parsed config.json of export `path` (CheckpointError when missing or damaged)."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{cfg_path}: missing; {path} is not a complete MolBind export")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({err}); the export is damaged or truncated") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{cfg_path}: no `model` section; not a MolBind export config")
    version = meta.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise CheckpointError(f"{cfg_path}: export format {version} (this version reads 1 and {FORMAT_VERSION})")
    return meta


def load_export(path: str) -> tuple[Any, Any, Any]:
    """(MolBind, MolBindConfig, tokenizer) from an export directory (see module docstring)."""
    from flax import nnx

    from molbind_jax.models.molbind import MolBind, MolBindConfig

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such export directory")
    meta = read_config(path)
    cfg_path = os.path.join(path, "config.json")
    try:
        mcfg = MolBindConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: its `model` section does not describe a MolBind "
                              f"({type(err).__name__}: {err})") from None
    files = (meta.get("files") or {}) if meta["format_version"] != 1 else format1_files(meta)
    if "text" in mcfg.modalities and not (files.get("text") or {}).get("tokenizer"):
        raise CheckpointError(f"{cfg_path}: the model has a text tower but `files` names no tokenizer folder for it")
    check_files(path, mcfg, files)
    tokenizer = None
    if "text" in mcfg.modalities:
        tokenizer = _load_tokenizer(os.path.join(path, files["text"]["tokenizer"]), mcfg.bert.vocab_size)
    model = nnx.eval_shape(lambda: MolBind(mcfg, rngs=nnx.Rngs(0)))
    restore_state(os.path.join(path, "state"), model)
    # eval_shape left the RNG streams abstract: give them concrete keys (unused in eval mode).
    model = _concretize_rngs(model)
    return model, mcfg, tokenizer


def _load_tokenizer(directory: str, vocab_size: int):
    from molbind_jax.convert.bert import load_tokenizer

    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: the export's tokenizer folder is missing")
    tokenizer = load_tokenizer(directory)  # CheckpointError naming the folder when unreadable
    if len(tokenizer) > vocab_size:
        raise CheckpointError(f"{directory}: the export's tokenizer has {len(tokenizer)} ids but the text tower's "
                              f"table has {vocab_size} rows; this export was written with a tokenizer its "
                              "text tower was not trained on")
    return tokenizer


def restore_state(state_dir: str, model) -> None:
    """Fills `model` (abstract or concrete) from the orbax state in `state_dir`; any failure of
    orbax/TensorStore becomes one CheckpointError naming the damaged file where it can tell."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    if not os.path.isdir(state_dir):
        raise CheckpointError(f"{state_dir}: the export's weights folder is missing")
    metadata = os.path.join(state_dir, "_METADATA")
    if not os.path.isfile(metadata):
        raise CheckpointError(f"{metadata}: missing; the orbax state of the export is incomplete")
    params = nnx.state(model, nnx.Param)
    stats = nnx.state(model, nnx.BatchStat)
    template = {"params": params.to_pure_dict(), "batch_stats": stats.to_pure_dict()}
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    # A damaged state fails while TensorStore's reads are still in flight: they print "Event
    # loop is closed" tracebacks from their threads. fd 2 is held during the read (replayed when
    # it succeeds), as for a damaged training checkpoint; the one-line error replaces them.
    from molbind_jax.training.checkpoints import drop_failed_read_reports, held_stderr, quiet_orbax
    error = None
    try:
        with quiet_orbax(), held_stderr():
            ckptr = ocp.StandardCheckpointer()
            try:
                tree = ckptr.restore(state_dir, template)
            finally:
                ckptr.close()
    except Exception as err:  # noqa: BLE001 - orbax/TensorStore raise many types for one cause
        error = _state_error(state_dir, err)
        drop_failed_read_reports()
        import gc
        with held_stderr(replay=False):  # the failed read's stragglers
            gc.collect()
    if error is not None:
        raise CheckpointError(error)
    nnx.replace_by_pure_dict(params, tree["params"])
    nnx.replace_by_pure_dict(stats, tree["batch_stats"])
    nnx.update(model, params, stats)


def _state_error(state_dir: str, err: BaseException) -> str:
    """One line for a failed restore: the file TensorStore names (else the state folder), and
    the parameter whose array could not be read."""
    text = str(err)
    where = state_dir
    files = [f for f in re.findall(r'local file "([^"]+)"', text) if not f.endswith("/")]
    if files:
        where = files[-1]
    elif isinstance(err, json.JSONDecodeError):
        where = os.path.join(state_dir, "_METADATA")
    keys = re.findall(r'Error reading "([^"/]+)', text) + re.findall(r"'path': '([^'/][^']*?)/?'", text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    first = first.split(" See full TensorStore details")[0]
    detail = f"{type(err).__name__}: {first[:160]}" + (f"; parameter {keys[0]}" if keys else "")
    return f"{where}: the export's orbax state is damaged or truncated ({detail}); export the run again"


def format1_files(meta) -> dict:
    """The per-modality `files` of a format-1 config.json, which named one tokenizer folder and
    the two Uni-Mol dictionaries ({"mol": ..., "pocket": ...}) at the top level."""
    dictionaries = meta.get("dictionaries") or {}
    files = {"text": {"tokenizer": meta.get("tokenizer", "tokenizer")}}
    for modality, key in (("conformer", "mol"), ("pocket", "pocket")):
        if dictionaries.get(key):
            files[modality] = {"dictionary": dictionaries[key]}
            if dictionaries.get(f"{key}_symbols"):
                files[modality]["symbols"] = dictionaries[f"{key}_symbols"]
    return files


def _first_difference(got, want) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


def _show(symbols, i) -> str:
    return repr(symbols[i]) if i < len(symbols) else "the end of the list"


def check_files(path: str, model_config, files) -> None:
    """The inference files of an export are the ones the model needs: every dictionary it
    carries (Uni-Mol atoms, SMILES tokens) must list the built-in symbols in the built-in order,
    as must the `symbols` config.json records for it. The featurizers emit the built-in ids and
    the towers' tables were trained on them, so an export whose dictionary differs (two symbols
    swapped, one missing) is refused with a CheckpointError naming the file and the first
    differing line, instead of feeding the model wrong tokens."""
    from molbind_jax.modalities import spec

    for m in model_config.modalities:
        entry = files.get(m) or {}
        rel = entry.get("dictionary")
        if not rel:
            continue
        file = os.path.join(path, rel)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: the export's config.json lists this {m} dictionary but the file is missing")
        try:
            with open(file, encoding="utf-8") as f:
                lines = [(n, line.split()[0]) for n, line in enumerate(f, start=1) if line.strip()]
        except UnicodeDecodeError as err:
            raise CheckpointError(f"{file}: not a text dictionary ({err})") from None
        symbols = [s for _, s in lines]
        want = list(spec(m).dictionary().symbols)
        if symbols != want:
            i = _first_difference(symbols, want)
            line = lines[i][0] if i < len(lines) else (lines[-1][0] + 1 if lines else 1)
            raise CheckpointError(
                f"{file}: the {m} dictionary differs from the built-in one at line {line} (symbol {i}: "
                f"{_show(symbols, i)} where the built-in order has {_show(want, i)}); the featurizers would "
                "feed this model the wrong token ids")
        recorded = entry.get("symbols")
        if recorded is not None and list(recorded) != want:
            i = _first_difference(list(recorded), want)
            raise CheckpointError(
                f"{os.path.join(path, 'config.json')}: files.{m}.symbols differs from the built-in {m} dictionary at "
                f"symbol {i} ({_show(list(recorded), i)} where the built-in order has {_show(want, i)})")


def _concretize_rngs(model):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.RngStream):
            node.key.value = jax.random.key(0)
            node.count.value = jnp.zeros((), jnp.uint32)
    return model
