"""Imports PyTorch BERT weights into `models.bert.BertEncoder`, and runs the torch reference.

Accepted checkpoints:

* an HF BERT/SciBERT directory: `config.json` plus `model.safetensors` or `pytorch_model.bin`;
  keys with or without a `bert.` prefix (BertModel, BertForPreTraining, ...);
* a single weights file (`.safetensors`, `.bin`, `.pt`, `.pth`, `.ckpt`), with a
  `config.json` next to it or, failing that, sizes inferred from the weights;
* the original MolBind Lightning checkpoint, or any state dict in the Q-Former layout: the
  text tower lives under `model.Qformer.bert.` (spec 1c). Its cross-attention, `*_query`
  feed-forward and `cls.*` LM head are unused by the text tower: they are reported as
  ignored. The checkpoint has no token-type table, so the encoder is built with
  `use_token_type=False`.

Shared importer protocol (the GIN / Uni-Mol importers expose the same names, compare.py uses
them): `load`, `assign`, `run_flax`, `run_torch`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import numpy as np
from flax import nnx

from molbind_jax.convert.common import CheckpointError, KeyReport, check_keys, load_state_dict, read_hf_config
from molbind_jax.models.bert import BertConfig, BertEncoder

# Parts of a checkpoint the text encoder does not use (reported, never an error).
IGNORE_PATTERNS = (
    r"cls\.",  # pre-training heads (MLM decoder, NSP)
    r"pooler\.",  # BertModel's pooler: the original pools [:,0] without it
    r"embeddings\.position_ids$",  # buffer
    r"embeddings\.token_type_ids$",  # buffer (newer transformers)
    r"encoder\.layer\.\d+\.crossattention\.",  # Q-Former cross-attention to query tokens
    r"encoder\.layer\.\d+\.(intermediate|output)_query\.",  # Q-Former query feed-forward
)
# Prefixes under which the text tower can sit, most specific first.
_TOWER_PREFIXES = ("model.Qformer.", "Qformer.")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OUTPUT = "last_hidden_state"


def normalize_keys(state: Mapping[str, np.ndarray], prefix: str | None = None) -> dict[str, np.ndarray]:
    """Maps the accepted layouts onto BertModel's own key names.

    Selects the subtree under `prefix` (by default the Q-Former of a MolBind checkpoint when
    there is one), drops a `bert.` prefix, and renames TF-era LayerNorm `gamma`/`beta` to
    `weight`/`bias` (as transformers does on load).
    """
    if prefix:
        selected = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not selected:
            raise CheckpointError(f"no keys under prefix {prefix!r}; first keys: {sorted(state)[:5]}")
        state = selected
    else:
        for tower in _TOWER_PREFIXES:
            if any(k.startswith(tower) for k in state):
                state = {k[len(tower):]: v for k, v in state.items() if k.startswith(tower)}
                break
    out = {}
    for k, v in state.items():
        if k.startswith("bert."):
            k = k[len("bert."):]
        k = re.sub(r"(LayerNorm)\.gamma$", r"\1.weight", k)
        k = re.sub(r"(LayerNorm)\.beta$", r"\1.bias", k)
        if k in out:
            raise CheckpointError(f"key {k} appears twice after removing prefixes")
        out[k] = v
    return out


def _param_table(cfg: BertConfig) -> dict[str, tuple[tuple[int, ...], Callable[[BertEncoder], nnx.Param], bool]]:
    """torch key -> (torch shape, accessor of the Flax param, transpose a Linear weight?)."""
    h, f = cfg.hidden_size, cfg.intermediate_size
    table = {
        "embeddings.word_embeddings.weight": ((cfg.vocab_size, h), lambda m: m.embeddings.word_embeddings.embedding, False),
        "embeddings.position_embeddings.weight": (
            (cfg.max_position_embeddings, h), lambda m: m.embeddings.position_embeddings.embedding, False),
        "embeddings.LayerNorm.weight": ((h,), lambda m: m.embeddings.layer_norm.scale, False),
        "embeddings.LayerNorm.bias": ((h,), lambda m: m.embeddings.layer_norm.bias, False),
    }
    if cfg.use_token_type:
        table["embeddings.token_type_embeddings.weight"] = (
            (cfg.type_vocab_size, h), lambda m: m.embeddings.token_type_embeddings.embedding, False)
    linears = {  # torch sub-path -> (flax attribute, out, in)
        "attention.self.query": ("query", h, h),
        "attention.self.key": ("key", h, h),
        "attention.self.value": ("value", h, h),
        "attention.output.dense": ("attention_output", h, h),
        "intermediate.dense": ("intermediate", f, h),
        "output.dense": ("output", h, f),
    }
    norms = {"attention.output.LayerNorm": "attention_layer_norm", "output.LayerNorm": "output_layer_norm"}
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}."
        for tk, (attr, n_out, n_in) in linears.items():
            table[p + tk + ".weight"] = ((n_out, n_in), lambda m, i=i, a=attr: getattr(m.layers[i], a).kernel, True)
            table[p + tk + ".bias"] = ((n_out,), lambda m, i=i, a=attr: getattr(m.layers[i], a).bias, False)
        for tk, attr in norms.items():
            table[p + tk + ".weight"] = ((h,), lambda m, i=i, a=attr: getattr(m.layers[i], a).scale, False)
            table[p + tk + ".bias"] = ((h,), lambda m, i=i, a=attr: getattr(m.layers[i], a).bias, False)
    return table


def _ignore_patterns(cfg: BertConfig) -> tuple[str, ...]:
    if cfg.use_token_type:
        return IGNORE_PATTERNS
    # Dropping token types on purpose (the original's text tower): the table is reported.
    return IGNORE_PATTERNS + (r"embeddings\.token_type_embeddings\.",)


def assign(module: BertEncoder, state: Mapping[str, np.ndarray], source: str, *,
           prefix: str | None = None) -> KeyReport:
    """Copies a torch state dict (any accepted layout) into an existing `BertEncoder`.

    Strict: raises CheckpointError listing every missing, mis-shaped or unexpected key.
    Keys outside the text tower of a larger checkpoint (a MolBind `.ckpt`) are not looked at.
    """
    state = normalize_keys(state, prefix)
    table = _param_table(module.config)
    report = check_keys(state, {k: v[0] for k, v in table.items()}, source=source,
                        ignore_patterns=_ignore_patterns(module.config))
    for key, (_, get, transpose) in table.items():
        value = np.asarray(state[key], dtype=np.float32)
        param = get(module)
        param.value = np.ascontiguousarray(value.T if transpose else value).astype(param.value.dtype)
    return report


def weights_path(checkpoint: str) -> str:
    if os.path.isdir(checkpoint):
        for name in _WEIGHT_FILES:
            path = os.path.join(checkpoint, name)
            if os.path.exists(path):
                return path
        raise CheckpointError(f"{checkpoint} holds none of {', '.join(_WEIGHT_FILES)} "
                              "(sharded checkpoints are not supported)")
    if not os.path.exists(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    return checkpoint


def _hf_config_dict(checkpoint: str) -> dict | None:
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return None
    return read_hf_config(path)


def _infer_config(state: Mapping[str, np.ndarray], hf: dict | None, source: str, overrides: dict) -> BertConfig:
    """Config from config.json when present; vocabulary, positions, layers from the weights.

    The weights win over config.json for the table sizes because the MolBind checkpoint
    resized the vocabulary (31090 -> 31091 for `[DEC]`) after the config was written.
    """
    word = state.get("embeddings.word_embeddings.weight")
    if word is None:
        raise CheckpointError(f"{source}: no embeddings.word_embeddings.weight; is this a BERT checkpoint? "
                              f"first keys: {sorted(state)[:5]}")
    kw: dict[str, Any] = {}
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    kw["vocab_size"], hidden = word.shape
    if "embeddings.position_embeddings.weight" in state:
        kw["max_position_embeddings"] = state["embeddings.position_embeddings.weight"].shape[0]
    tt = state.get("embeddings.token_type_embeddings.weight")
    if tt is None:
        kw["use_token_type"] = False  # the Q-Former layout has no token-type table
    else:
        kw["type_vocab_size"] = tt.shape[0]
    if hf is not None:
        cfg = BertConfig.from_hf_config(hf, **kw)
    else:
        inter = state.get("encoder.layer.0.intermediate.dense.weight")
        kw.update(hidden_size=hidden, num_layers=len(layer_ids),
                  intermediate_size=inter.shape[0] if inter is not None else 4 * hidden,
                  num_heads=max(1, hidden // 64))  # heads cannot be read off weights: BERT's 64-wide heads
        cfg = BertConfig(**kw)
    unknown = sorted(set(overrides) - set(cfg.__dict__))
    if unknown:
        raise ValueError(f"unknown BertConfig field(s) {unknown}; fields: {sorted(cfg.__dict__)}")
    return BertConfig(**{**cfg.__dict__, **overrides})


def load(checkpoint: str, dictionary: str | None = None, *, prefix: str | None = None,
         **config_overrides) -> tuple[BertEncoder, KeyReport]:
    """Builds a `BertEncoder` from a checkpoint (see the module docstring for layouts).

    Args:
      checkpoint: an HF directory or a weights file.
      dictionary: unused for BERT (the protocol's Uni-Mol dictionary); must be None.
      prefix: the text tower's key prefix inside a larger state dict; by default
        `model.Qformer.` / `Qformer.` when present, else the whole state dict.
      **config_overrides: BertConfig fields, e.g. `use_token_type=False`, `dtype=jnp.bfloat16`.
    """
    if dictionary is not None:
        raise ValueError("BERT takes no dictionary; its vocabulary is the tokenizer's (load_tokenizer)")
    path = weights_path(checkpoint)
    state = load_state_dict(path, subkey="state_dict")
    norm = normalize_keys(state, prefix)
    cfg = _infer_config(norm, _hf_config_dict(checkpoint), path, config_overrides)
    module = BertEncoder(cfg, rngs=nnx.Rngs(0))
    return module, assign(module, state, path, prefix=prefix)


@nnx.jit
def _eval_forward(module: BertEncoder, input_ids, attention_mask):
    return module(input_ids, attention_mask, train=False)


def run_flax(module: BertEncoder, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the encoder in eval mode (jitted, one compile per shape) on `input_ids`,
    `attention_mask` [B,L]; returns `last_hidden_state` [B,L,H] float32."""
    out = _eval_forward(module, np.asarray(inputs["input_ids"], np.int32),
                        np.asarray(inputs["attention_mask"], np.int32))
    return {OUTPUT: np.asarray(out, np.float32)}


def _torch_config(cfg: BertConfig):
    import transformers

    return transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.hidden_act,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def run_torch(checkpoint: str, inputs: Mapping[str, np.ndarray], dictionary: str | None = None, *,
              prefix: str | None = None, **config_overrides) -> dict[str, np.ndarray]:
    """The reference: transformers' torch `BertModel`, eval, float32, eager attention.

    With `use_token_type=False` (given, or implied by a Q-Former checkpoint) its token-type
    table is zeroed, which is exactly the original's embedding without token types.
    """
    import torch
    import transformers

    if dictionary is not None:
        raise ValueError("BERT takes no dictionary")
    path = weights_path(checkpoint)
    state = normalize_keys(load_state_dict(path, subkey="state_dict"), prefix)
    cfg = _infer_config(state, _hf_config_dict(checkpoint), path, config_overrides)
    check_keys(state, {k: v[0] for k, v in _param_table(cfg).items()}, source=path,
               ignore_patterns=_ignore_patterns(cfg))
    tcfg = _torch_config(cfg)
    tcfg._attn_implementation = "eager"
    model = transformers.BertModel(tcfg, add_pooling_layer=False).eval()
    own = model.state_dict()
    table = _param_table(cfg)
    with torch.no_grad():
        for key in table:
            own[key].copy_(torch.from_numpy(np.asarray(state[key], np.float32)))
        if not cfg.use_token_type:
            own["embeddings.token_type_embeddings.weight"].zero_()
    ids = torch.from_numpy(np.asarray(inputs["input_ids"], np.int64))
    mask = torch.from_numpy(np.asarray(inputs["attention_mask"], np.int64))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    return {OUTPUT: out.last_hidden_state.float().numpy()}


def load_tokenizer(path: str):
    """A transformers tokenizer from a local directory (never the hub)."""
    import transformers

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    try:
        return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        from molbind_jax.convert.common import CheckpointError

        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read a tokenizer from {path} ({first}); an HF tokenizer folder has tokenizer.json, "
            "or vocab.txt with a tokenizer_config.json naming its class (e.g. BertTokenizer)") from err
