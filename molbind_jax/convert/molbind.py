"""Imports a MolBind Lightning `.ckpt` (spec sections 0 and 2) into `models.molbind.MolBind`.

Key layout of the original (`MolbindTrainer.model = Model(...)`, so every key starts with
`model.`), and where each part goes:

    model.graph_encoder.*   -> graph_encoder      (convert.gin.assign)
    model.Qformer.*         -> text_encoder       (convert.bert.assign: bert.* used; cls.*,
                                                   crossattention.*, *_query.* reported, ignored)
    model.conf_encoder.*    -> conformer_encoder  (convert.unimol.assign)
    model.pro_encoder.*     -> pocket_encoder     (convert.unimol.assign)
    model.ln_graph.*, model.graph_proj.*  -> graph_proj (norm, proj)
    model.text_proj.*                     -> text_proj  (proj; no LayerNorm)
    model.ln_conf.*,  model.conf_proj.*   -> conf_proj
    model.ln_pro.*,   model.pro_proj.*    -> pro_proj

Strict: every part is checked by `common.check_keys` (through the per-encoder `assign`), so a
missing, mis-shaped or unexpected key raises a `CheckpointError` naming it; any key outside
these prefixes is an error too.

BatchNorm statistics (spec section 0 quirk): the original's `on_save_checkpoint` drops every
buffer, so a MolBind `.ckpt` has no GIN `running_mean`/`running_var`; at run time the original
keeps the statistics of `./backbone/graph_pretrain.pth`, loaded before the ckpt. Pass that
file as `gin_backbone` to reproduce it. Without it the statistics stay as initialised
(mean 0, variance 1) and eval-mode graph embeddings will NOT match the original: that is
warned about loudly and recorded in the report (`bn_stats`). Statistics present in the ckpt
itself win over the backbone's (as the original's load order implies).

Lightning checkpoints carry `hyper_parameters` (an argparse Namespace in MolBind); loading uses
`torch.load(weights_only=True)` with only `argparse.Namespace` allowed besides tensors (convert/common.py).

For the tools (`evaluate`, `embed`, `search`, `api.MolBindModel.load`), `load_for_inference`
adds what a `.ckpt` does not hold: the tokenizer (required), the GIN backbone and a check of
the Uni-Mol dictionaries. Converting once into a standalone export:

    python -m molbind_jax.convert.molbind --checkpoint=molbind.ckpt \
        --gin_backbone=graph_pretrain.pth --dictionaries=DICT_DIR --tokenizer=SCIBERT_DIR \
        --output=EXPORT
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import warnings
from typing import Mapping

import numpy as np

from molbind_jax.convert import bert as bert_convert
from molbind_jax.convert import gin as gin_convert
from molbind_jax.convert import unimol as unimol_convert
from molbind_jax.convert.common import CheckpointError, KeyReport, check_keys, load_state_dict, strip_prefix
from molbind_jax.models.bert import BertConfig
from molbind_jax.models.molbind import MolBind, MolBindConfig

ENCODER_PREFIXES = {
    "graph_encoder": "model.graph_encoder.",
    "text_encoder": "model.Qformer.",
    "conformer_encoder": "model.conf_encoder.",
    "pocket_encoder": "model.pro_encoder.",
}
# Flax head -> (LayerNorm key prefix or None, Linear key prefix).
HEADS = {
    "graph_proj": ("model.ln_graph.", "model.graph_proj."),
    "text_proj": (None, "model.text_proj."),
    "conf_proj": ("model.ln_conf.", "model.conf_proj."),
    "pro_proj": ("model.ln_pro.", "model.pro_proj."),
}
_BN_STAT = re.compile(r"batch_norms\.(\d+)\.(running_mean|running_var)$")


@dataclasses.dataclass
class MolBindImportReport:
    """Per-part key reports plus where the GIN BatchNorm statistics came from."""

    source: str
    parts: dict[str, KeyReport] = dataclasses.field(default_factory=dict)
    bn_stats: str = ""
    tokenizer: str = ""

    def summary(self) -> str:
        lines = [f"{self.source}: MolBind checkpoint import", f"GIN BatchNorm statistics: {self.bn_stats}"]
        if self.tokenizer:
            lines.append(f"tokenizer: {self.tokenizer}")
        for name, rep in self.parts.items():
            lines.append(f"[{name}] " + rep.summary())
        return "\n".join(lines)


def read_checkpoint(path: str, extras: dict | None = None) -> dict[str, np.ndarray]:
    """The `state_dict` of a Lightning `.ckpt` (or a plain state dict file) as numpy arrays;
    `extras` (a dict) receives the checkpoint's other top-level entries."""
    return load_state_dict(path, subkey="state_dict", extras=extras)  # Namespace allowed: common.SAFE_GLOBALS


def embedded_config(extras: Mapping) -> MolBindConfig | None:
    """The exact MolBindConfig that `export --format=lightning` stores beside the weights
    (head counts and options a state dict cannot tell); None for the original's own files."""
    import json

    entry = extras.get("molbind_jax")
    if not isinstance(entry, Mapping) or not isinstance(entry.get("config"), str):
        return None
    try:
        return MolBindConfig.from_dict(json.loads(entry["config"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"the molbind_jax config stored in the checkpoint is unreadable: {e}") from e


def _bert_config_from_state(state: Mapping[str, np.ndarray], **overrides) -> BertConfig:
    """Sizes of the text tower from `model.Qformer.bert.*` (heads: hidden/64, BERT's rule)."""
    p = "model.Qformer.bert."
    try:
        vocab, hidden = state[p + "embeddings.word_embeddings.weight"].shape
        max_pos = state[p + "embeddings.position_embeddings.weight"].shape[0]
        inter = state[p + "encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"no text tower under {p} (missing {e})") from e
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(re.escape(p) + r"encoder\.layer\.(\d+)\.", k)))
    kw = dict(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=max(hidden // 64, 1),
              intermediate_size=inter, max_position_embeddings=max_pos,
              use_token_type=(p + "embeddings.token_type_embeddings.weight") in state)
    kw.update(overrides)
    return BertConfig.scibert(**kw)


def config_from_state(state: Mapping[str, np.ndarray], **overrides) -> MolBindConfig:
    """`MolBindConfig.original()` with every size read from the checkpoint.

    overrides: MolBindConfig fields; sub-configs may be given as dicts of field overrides,
    e.g. `bert={"num_heads": 4}` (heads cannot be read from a state dict).
    """
    overrides = dict(overrides)
    sub = {k: overrides.pop(k) for k in ("bert", "gin", "conformer", "pocket") if isinstance(overrides.get(k), Mapping)}
    gin = gin_convert.config_from_state(strip_prefix(state, ENCODER_PREFIXES["graph_encoder"]), **sub.get("gin", {}))
    conf = unimol_convert.config_from_state(strip_prefix(state, ENCODER_PREFIXES["conformer_encoder"]),
                                            **sub.get("conformer", {}))
    pocket = unimol_convert.config_from_state(strip_prefix(state, ENCODER_PREFIXES["pocket_encoder"]),
                                              **sub.get("pocket", {}))
    bert = _bert_config_from_state(state, **sub.get("bert", {}))
    embed_dim = state["model.text_proj.weight"].shape[0] if "model.text_proj.weight" in state else 512
    kw = dict(bert=bert, gin=gin, conformer=conf, pocket=pocket, embed_dim=embed_dim)
    kw.update(overrides)
    return MolBindConfig.original(**kw)


def _bn_stats_from_backbone(path: str, num_layers: int) -> dict[str, np.ndarray]:
    state = load_state_dict(path)
    prefix = gin_convert._find_prefix(state) if "x_embedding1.weight" not in state else ""
    state = strip_prefix(state, prefix) if prefix else state
    stats = {k: v for k, v in state.items() if _BN_STAT.match(k)}
    want = {f"batch_norms.{i}.{s}" for i in range(num_layers) for s in ("running_mean", "running_var")}
    missing = sorted(want - set(stats))
    if missing:
        raise CheckpointError(f"GIN backbone {path} lacks BatchNorm statistics: {missing}")
    return {k: stats[k] for k in want}


def assign(model: MolBind, state: Mapping[str, np.ndarray], source: str, *,
           gin_backbone: str | None = None) -> MolBindImportReport:
    """Copies a MolBind state dict (keys `model.*`) into an existing `MolBind`, strictly."""
    report = MolBindImportReport(source=source)
    known = tuple(ENCODER_PREFIXES.values()) + tuple(p for h in HEADS.values() for p in h if p)
    stray = sorted(k for k in state if not k.startswith(known))
    if stray:
        raise CheckpointError(f"{source}: {len(stray)} key(s) belong to no MolBind part:\n"
                              + "\n".join(f"  {k}" for k in stray))

    # GIN, with the BatchNorm statistics from the checkpoint, else the backbone, else none.
    gin_state = strip_prefix(state, ENCODER_PREFIXES["graph_encoder"])
    n_layers = model.graph_encoder.config.num_layers
    has_stats = any(_BN_STAT.match(k) for k in gin_state)
    if has_stats:
        report.bn_stats = "from the checkpoint"
        if gin_backbone:
            logging.warning("%s has its own GIN BatchNorm statistics; %s is not used for them", source, gin_backbone)
    elif gin_backbone:
        gin_state.update(_bn_stats_from_backbone(gin_backbone, n_layers))
        report.bn_stats = f"from the GIN backbone {gin_backbone}"
    else:
        report.bn_stats = "MISSING: kept as initialised (mean 0, var 1); eval-mode graph embeddings differ from the original"
        msg = (f"{source} has no GIN BatchNorm running statistics (the original drops them when saving) "
               "and no gin_backbone was given: they stay as initialised (mean 0, var 1), so eval-mode "
               "graph embeddings will NOT match the original. Pass the backbone graph_pretrain.pth.")
        warnings.warn(msg, stacklevel=2)
        logging.warning(msg)
    with warnings.catch_warnings():
        # Our own, louder warning above covers the missing statistics.
        warnings.simplefilter("ignore")
        report.parts["graph_encoder"] = gin_convert.assign(
            model.graph_encoder, gin_state, f"{source} [{ENCODER_PREFIXES['graph_encoder']}]",
            allow_missing_bn_stats=not has_stats and not gin_backbone)

    text_state = strip_prefix(state, ENCODER_PREFIXES["text_encoder"])
    report.parts["text_encoder"] = bert_convert.assign(
        model.text_encoder, text_state, f"{source} [{ENCODER_PREFIXES['text_encoder']}]")
    for name in ("conformer_encoder", "pocket_encoder"):
        sub = strip_prefix(state, ENCODER_PREFIXES[name])
        report.parts[name] = unimol_convert.assign(getattr(model, name), sub, f"{source} [{ENCODER_PREFIXES[name]}]")

    heads_state = {k: v for k, v in state.items() if k.startswith(tuple(p for h in HEADS.values() for p in h if p))}
    expected = {}
    for name, (ln, lin) in HEADS.items():
        head = getattr(model, name)
        out_dim, in_dim = head.proj.kernel.value.shape[::-1]
        expected[lin + "weight"] = (out_dim, in_dim)
        expected[lin + "bias"] = (out_dim,)
        if ln:
            expected[ln + "weight"] = (in_dim,)
            expected[ln + "bias"] = (in_dim,)
    report.parts["heads"] = check_keys(heads_state, expected, source=f"{source} [heads]")
    for name, (ln, lin) in HEADS.items():
        getattr(model, name).set_from_torch(
            state[lin + "weight"], state[lin + "bias"],
            state[ln + "weight"] if ln else None, state[ln + "bias"] if ln else None)
    return report


def load(checkpoint: str, *, gin_backbone: str | None = None, seed: int = 0, **config_overrides):
    """Builds a MolBind sized from `checkpoint` and imports it: the config stored by our own
    PyTorch export when there is one, else `config_from_state` (sizes read from the weights).

    Returns (model, MolBindImportReport). `config_overrides` replace fields of either (a
    sub-config given as a dict replaces only the fields it names).
    """
    from flax import nnx

    extras: dict = {}
    state = read_checkpoint(checkpoint, extras)
    stored = embedded_config(extras)
    if stored is not None:
        config = MolBindConfig.from_dict(dict(config_overrides), base=stored) if config_overrides else stored
    else:
        config = config_from_state(state, **config_overrides)
    model = MolBind(config, rngs=nnx.Rngs(seed))
    return model, assign(model, state, checkpoint, gin_backbone=gin_backbone)


# ----------------------------------------------------------------------------- for the tools

# Accepted file names of the two Uni-Mol dictionaries in a --dictionaries directory: the
# original's (`data/unimol_dict_{mol,pro}.txt`), our export's, and Uni-Mol's own.
DICTIONARY_FILES = {
    "mol": ("unimol_dict_mol.txt", "mol_dict.txt", "dict.txt"),
    "pocket": ("unimol_dict_pro.txt", "pocket_dict.txt", "dict_coarse.txt"),
}


def check_dictionaries(directory: str) -> dict[str, str]:
    """Checks the Uni-Mol dictionaries in `directory` against the built-in order
    (`molbind_data.featurize.dictionaries`), which the featurizers use for token ids.

    Returns {"mol": path, "pocket": path}. Raises FileNotFoundError when a dictionary is
    missing and CheckpointError naming the file and the first differing line when the order
    differs (the model's embedding rows would be read with the wrong ids).
    """
    from molbind_data.featurize.dictionaries import MOL_DICTIONARY, POCKET_DICTIONARY, Dictionary

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--dictionaries {directory} is not a directory")
    builtin = {"mol": MOL_DICTIONARY, "pocket": POCKET_DICTIONARY}
    found = {}
    for kind, names in DICTIONARY_FILES.items():
        paths = [os.path.join(directory, n) for n in names if os.path.isfile(os.path.join(directory, n))]
        if not paths:
            raise FileNotFoundError(f"no {kind} dictionary in {directory} (expected one of {', '.join(names)})")
        path = paths[0]
        try:
            symbols = Dictionary.load(path).symbols
        except (ValueError, IndexError) as e:
            raise CheckpointError(f"{path}: not a Uni-Mol dictionary ({e})") from e
        want = builtin[kind].symbols
        if symbols != want:
            i = next((i for i, (a, b) in enumerate(zip(symbols, want)) if a != b), min(len(symbols), len(want)))
            got = symbols[i] if i < len(symbols) else "<end of file>"
            exp = want[i] if i < len(want) else "<end>"
            raise CheckpointError(
                f"{path}: the {kind} dictionary differs from the built-in order at id {i} "
                f"({got!r}, expected {exp!r}; {len(symbols)} vs {len(want)} symbols, [MASK] included). "
                "The featurizers use the built-in order, so token ids would not match this model's rows.")
        found[kind] = path
    return found


def check_inputs(checkpoint: str, *, tokenizer: str | None, gin_backbone: str | None = None,
                 dictionaries: str | None = None) -> None:
    """What `load_for_inference` checks before reading any weights: a tokenizer is given,
    every file exists, the dictionaries are in the built-in order. Raises ValueError /
    FileNotFoundError / CheckpointError naming the file; a missing checkpoint first."""
    if checkpoint and not os.path.exists(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file or directory")
    if not tokenizer:
        raise ValueError(f"{checkpoint} is a MolBind .ckpt, which holds no tokenizer: pass the tokenizer "
                         "directory the model was trained with (--tokenizer=DIR, the SciBERT one for the "
                         "original)")
    for name, path in (("checkpoint", checkpoint), ("gin_backbone", gin_backbone)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"--{name} {path} not found")
    if not os.path.isdir(tokenizer):
        raise FileNotFoundError(f"--tokenizer {tokenizer} is not a directory")
    if dictionaries:
        check_dictionaries(dictionaries)


def load_for_inference(checkpoint: str, *, tokenizer: str | None, gin_backbone: str | None = None,
                       dictionaries: str | None = None, config_overrides: Mapping | None = None, seed: int = 0):
    """A `.ckpt` ready for the tools -> (model, MolBindConfig, tokenizer, MolBindImportReport).

    tokenizer: the tokenizer directory the model was trained with (SciBERT's for the
      original); required, since a `.ckpt` holds none.
    gin_backbone: the GIN backbone `.pth` whose BatchNorm statistics the original kept
      (without it: the loud warning of `assign`).
    dictionaries: a directory with the Uni-Mol dictionaries (`check_dictionaries`); without
      it the built-in order is assumed (logged).
    config_overrides: MolBindConfig fields a state dict cannot tell (`config_from_state`).
    """
    check_inputs(checkpoint, tokenizer=tokenizer, gin_backbone=gin_backbone, dictionaries=dictionaries)
    if not dictionaries:
        logging.warning("no --dictionaries given for %s: assuming the built-in Uni-Mol dictionary order "
                        "(data_pipeline/featurize/dictionaries.py)", checkpoint)
    model, report = load(checkpoint, gin_backbone=gin_backbone, seed=seed, **dict(config_overrides or {}))
    config = model.config
    from molbind_data.featurize.dictionaries import MOL_DICTIONARY, POCKET_DICTIONARY

    for name, sub, d in (("conformer", config.conformer, MOL_DICTIONARY), ("pocket", config.pocket, POCKET_DICTIONARY)):
        if sub.vocab_size != len(d):
            raise CheckpointError(f"{checkpoint}: the {name} tower has {sub.vocab_size} token rows but the "
                                  f"built-in dictionary has {len(d)} symbols")
    from molbind_jax.convert.bert import load_tokenizer

    tok = load_tokenizer(tokenizer)
    if len(tok) > config.bert.vocab_size:
        raise CheckpointError(f"tokenizer {tokenizer} has {len(tok)} tokens but the text tower of {checkpoint} "
                              f"has {config.bert.vocab_size} rows: not the tokenizer it was trained with")
    report.tokenizer = os.path.abspath(tokenizer)
    return model, config, tok, report


def to_export(checkpoint: str, output: str, *, tokenizer: str | None, gin_backbone: str | None = None,
              dictionaries: str | None = None, config_overrides: Mapping | None = None):
    """Converts a `.ckpt` once into a standalone export (`export.write_export`) -> (path, report)."""
    from molbind_jax.training.export import write_export

    model, config, _, report = load_for_inference(checkpoint, tokenizer=tokenizer, gin_backbone=gin_backbone,
                                                  dictionaries=dictionaries, config_overrides=config_overrides)
    source = {"checkpoint": os.path.abspath(checkpoint), "gin_backbone": gin_backbone and os.path.abspath(gin_backbone),
              "bn_stats": report.bn_stats, "dictionaries": dictionaries and os.path.abspath(dictionaries),
              "config_overrides": dict(config_overrides or {})}
    return write_export(model, config, output, tokenizer_dir=tokenizer, source=source), report


def parse_config_overrides(text: str | None) -> dict:
    """--ckpt_config: a JSON object of MolBindConfig overrides (e.g. '{"bert": {"num_heads": 4}}')."""
    if not text:
        return {}
    try:
        out = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--ckpt_config is not JSON ({e}): {text!r}") from e
    if not isinstance(out, dict):
        raise ValueError(f"--ckpt_config must be a JSON object, got {text!r}")
    return out


def define_ckpt_flags(with_checkpoint: bool = False) -> None:
    """The .ckpt flags shared by convert.molbind, evaluate, embed and search (defined only when
    one of them runs as a program)."""
    from absl import flags

    if with_checkpoint:
        flags.DEFINE_string("checkpoint", None, "MolBind Lightning .ckpt")
    flags.DEFINE_string("gin_backbone", None, "for a .ckpt: the GIN backbone .pth holding the BatchNorm "
                        "statistics the .ckpt lacks (graph_pretrain.pth)")
    flags.DEFINE_string("dictionaries", None, "for a .ckpt: directory with the Uni-Mol dictionaries "
                        f"({' / '.join(DICTIONARY_FILES['mol'])} and {' / '.join(DICTIONARY_FILES['pocket'])}), "
                        "checked against the built-in order")
    flags.DEFINE_string("tokenizer", None, "for a .ckpt (required): the tokenizer directory it was trained "
                        "with (SciBERT's)")
    flags.DEFINE_string("ckpt_config", None, "for a .ckpt: JSON of MolBindConfig overrides a state dict cannot "
                        "tell, e.g. '{\"bert\": {\"num_heads\": 12}}' (default: hidden/64 heads)")


def ckpt_kwargs(flag_values) -> dict:
    """MolBindModel.load keyword arguments from the flags of define_ckpt_flags."""
    return dict(gin_backbone=flag_values.gin_backbone, dictionaries=flag_values.dictionaries,
                tokenizer=flag_values.tokenizer,
                ckpt_config=parse_config_overrides(flag_values.ckpt_config) or None)


def checked_ckpt_kwargs(flag_values, path: str) -> dict:
    """ckpt_kwargs, after checking that `path` (an export or an original .ckpt) loads with them:
    what cannot (a missing file, a .ckpt without its tokenizer, a bad --ckpt_config) is the
    user's input error, one line and exit status 2 from every command (molbind_jax/cli.py)."""
    from molbind_jax.cli import InputError
    from molbind_jax.inference.api import MolBindModel

    if path and not os.path.exists(path):  # named before what else it would need (a tokenizer)
        raise FileNotFoundError(f"--checkpoint {path}: no such file or directory")
    try:
        kwargs = ckpt_kwargs(flag_values)
        MolBindModel.check_loadable(path, **kwargs)
    except FileNotFoundError:
        raise
    except ValueError as err:  # CheckpointError is a ValueError
        raise InputError(str(err)) from err
    return kwargs


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint or not FLAGS.output:
        raise app.UsageError("--checkpoint and --output are required")
    try:
        check_inputs(FLAGS.checkpoint, tokenizer=FLAGS.tokenizer, gin_backbone=FLAGS.gin_backbone,
                     dictionaries=FLAGS.dictionaries)
    except (FileNotFoundError, ValueError) as err:  # CheckpointError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    path, report = to_export(FLAGS.checkpoint, FLAGS.output, tokenizer=FLAGS.tokenizer,
                             gin_backbone=FLAGS.gin_backbone, dictionaries=FLAGS.dictionaries,
                             config_overrides=parse_config_overrides(FLAGS.ckpt_config))
    print(report.summary())
    print(f"exported to {path}")
    return 0


def cli():
    """The `molbind-convert` console script (pyproject.toml); `python -m` runs the same."""
    from absl import flags

    from molbind_jax.cli import run as cli_run

    define_ckpt_flags(with_checkpoint=True)
    flags.DEFINE_string("output", None, "export directory to write")
    sys.exit(cli_run(main))


if __name__ == "__main__":
    cli()
