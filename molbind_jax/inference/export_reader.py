"""Reads an export written by `molbind_jax.training.export` (see its docstring for the layout):
config.json -> MolBindConfig -> an abstract MolBind filled from the orbax state, plus the
tokenizer. Inference needs nothing else from training.
"""
from __future__ import annotations

import json
import os
from typing import Any

from molbind_jax.training.export import FORMAT_VERSION


def load_export(path: str) -> tuple[Any, Any, Any]:
    """(MolBind, MolBindConfig, tokenizer) from an export directory (see module docstring)."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from molbind_jax.convert.bert import load_tokenizer
    from molbind_jax.models.molbind import MolBind, MolBindConfig

    path = os.path.abspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path} is not a MolBind export (no config.json)")
    with open(cfg_path, encoding="utf-8") as f:
        meta = json.load(f)
    version = meta.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(f"{path}: export format {version} (this version reads 1 and {FORMAT_VERSION})")
    mcfg = MolBindConfig.from_dict(meta["model"])
    files = (meta.get("files") or {}) if version != 1 else format1_files(meta)
    if "text" in mcfg.modalities and not (files.get("text") or {}).get("tokenizer"):
        raise ValueError(f"{cfg_path}: the model has a text tower but `files` names no tokenizer folder for it")
    check_files(path, mcfg, files)
    model = nnx.eval_shape(lambda: MolBind(mcfg, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    stats = nnx.state(model, nnx.BatchStat)
    template = {"params": params.to_pure_dict(), "batch_stats": stats.to_pure_dict()}
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    ckptr = ocp.StandardCheckpointer()
    tree = ckptr.restore(os.path.join(path, "state"), template)
    ckptr.close()
    nnx.replace_by_pure_dict(params, tree["params"])
    nnx.replace_by_pure_dict(stats, tree["batch_stats"])
    nnx.update(model, params, stats)
    # eval_shape left the RNG streams abstract: give them concrete keys (unused in eval mode).
    model = _concretize_rngs(model)
    tokenizer = None
    if "text" in mcfg.modalities:
        tokenizer = load_tokenizer(os.path.join(path, files["text"]["tokenizer"]))
    return model, mcfg, tokenizer


def format1_files(meta) -> dict:
    """The per-modality `files` of a format-1 config.json, which named one tokenizer folder and
    the two Uni-Mol dictionaries ({"mol": ..., "pocket": ...}) at the top level."""
    dictionaries = meta.get("dictionaries") or {}
    files = {"text": {"tokenizer": meta.get("tokenizer", "tokenizer")}}
    for modality, key in (("conformer", "mol"), ("pocket", "pocket")):
        if dictionaries.get(key):
            files[modality] = {"dictionary": dictionaries[key]}
    return files


def check_files(path: str, model_config, files) -> None:
    """The inference files of an export are the ones the model needs: every Uni-Mol dictionary
    it carries must list the built-in symbols in order (the featurizers emit those ids; a model
    trained with another dictionary would be fed wrong tokens)."""
    from molbind_jax.modalities import spec

    for m in model_config.modalities:
        rel = (files.get(m) or {}).get("dictionary")
        if not rel:
            continue
        if not os.path.isfile(os.path.join(path, rel)):
            raise FileNotFoundError(f"{os.path.join(path, rel)}: the export's config.json lists this {m} dictionary "
                                    "but the file is missing")
        with open(os.path.join(path, rel), encoding="utf-8") as f:
            symbols = [line.split()[0] for line in f if line.strip()]
        want = list(spec(m).dictionary().symbols)
        if symbols != want:
            first = next((i for i, (a, b) in enumerate(zip(symbols, want)) if a != b), min(len(symbols), len(want)))
            raise ValueError(f"{os.path.join(path, rel)}: the {m} dictionary differs from the built-in one at "
                             f"symbol {first} ({symbols[first:first + 1]} vs {want[first:first + 1]}); the "
                             "featurizers would feed this model the wrong token ids")


def _concretize_rngs(model):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.RngStream):
            node.key.value = jax.random.key(0)
            node.count.value = jnp.zeros((), jnp.uint32)
    return model
