"""Imports a Uni-Mol `.pt` (state dict under `model`) plus its dictionary into `models.unimol`.

Importer protocol shared with `compare.py`:
  load(checkpoint, dictionary=None, **config_overrides) -> (UniMolEncoder, KeyReport)
  assign(module, state, source) -> KeyReport
  run_flax(module, inputs) -> {"encoder_rep"}
  run_torch(checkpoint, inputs, dictionary=None) -> {"encoder_rep"}
Inputs: src_tokens [B,N], src_distance [B,N,N], src_edge_type [B,N,N] (the collater's arrays).

Sizes (layers, width, FFN, heads, kernels, vocabulary) are read off the checkpoint. The
dictionary file (Uni-Mol `dict.txt`, `[MASK]` appended as the original) must have exactly as
many symbols as `embed_tokens` has rows, or the token ids would silently index the wrong rows.
Pre-training heads (lm_head, dist_head, pair2coord_proj, final_head_layer_norm,
classification heads) are ignored and reported; any other unknown key is an error.
"""
from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from molbind_data.featurize.dictionaries import Dictionary
from molbind_jax.convert.common import CheckpointError, KeyReport, check_keys, load_state_dict, strip_prefix
from molbind_jax.models.unimol import UniMolConfig, UniMolEncoder

IGNORE_PATTERNS = (
    r"lm_head\.",
    r"dist_head\.",
    r"pair2coord_proj\.",
    r"(encoder\.)?final_head_layer_norm\.",
    r"classification_heads?\.",
)


# Per-layer parameters: torch sub-key under `encoder.layers.<l>.` -> (path in the stacked
# EncoderLayer, transpose?). The Flax arrays carry a leading layer axis.
LAYER_PARAMS = {
    "self_attn.in_proj.weight": (("in_proj", "kernel"), True),
    "self_attn.in_proj.bias": (("in_proj", "bias"), False),
    "self_attn.out_proj.weight": (("out_proj", "kernel"), True),
    "self_attn.out_proj.bias": (("out_proj", "bias"), False),
    "fc1.weight": (("fc1", "kernel"), True),
    "fc1.bias": (("fc1", "bias"), False),
    "fc2.weight": (("fc2", "kernel"), True),
    "fc2.bias": (("fc2", "bias"), False),
    "self_attn_layer_norm.weight": (("self_attn_layer_norm", "weight"), False),
    "self_attn_layer_norm.bias": (("self_attn_layer_norm", "bias"), False),
    "final_layer_norm.weight": (("final_layer_norm", "weight"), False),
    "final_layer_norm.bias": (("final_layer_norm", "bias"), False),
}


def _targets(module: UniMolEncoder) -> dict[str, tuple[nnx.Variable, bool, int | None]]:
    """Original key -> (Flax variable, transpose?, layer index or None) for every parameter of
    the encoder. Per-layer keys point into the stacked variables of `module.layers`."""
    t: dict[str, tuple[nnx.Variable, bool, int | None]] = {
        "embed_tokens.weight": (module.embed_tokens, False, None),
        "gbf.means.weight": (module.gbf.means, False, None),
        "gbf.stds.weight": (module.gbf.stds, False, None),
        "gbf.mul.weight": (module.gbf.mul, False, None),
        "gbf.bias.weight": (module.gbf.bias, False, None),
        "gbf_proj.linear1.weight": (module.gbf_proj_linear1.kernel, True, None),
        "gbf_proj.linear1.bias": (module.gbf_proj_linear1.bias, False, None),
        "gbf_proj.linear2.weight": (module.gbf_proj_linear2.kernel, True, None),
        "gbf_proj.linear2.bias": (module.gbf_proj_linear2.bias, False, None),
    }
    for name in ("emb_layer_norm", "final_layer_norm"):
        ln = getattr(module, name)
        t[f"encoder.{name}.weight"] = (ln.weight, False, None)
        t[f"encoder.{name}.bias"] = (ln.bias, False, None)
    for i in range(module.config.num_layers):
        for sub, ((child, leaf), transpose) in LAYER_PARAMS.items():
            t[f"encoder.layers.{i}.{sub}"] = (getattr(getattr(module.layers, child), leaf), transpose, i)
    return t


def _torch_shape(var: nnx.Variable, transpose: bool, layer: int | None) -> tuple[int, ...]:
    shape = tuple(var[...].shape)[(0 if layer is None else 1):]
    return shape[::-1] if transpose else shape


def torch_arrays(module: UniMolEncoder) -> dict[str, np.ndarray]:
    """Every parameter under its original key, float32 in torch's orientation (the exporter's view)."""
    out = {}
    for key, (var, transpose, layer) in _targets(module).items():
        a = np.asarray(var[...], np.float32)
        a = a if layer is None else a[layer]
        out[key] = np.array(a.T if transpose else a, dtype=np.float32, order="C")
    return out


def assign(module: UniMolEncoder, state, source: str) -> KeyReport:
    """Copies a state dict in the original key layout into `module` (checked strictly first)."""
    targets = _targets(module)
    report = check_keys(state, {k: _torch_shape(*v) for k, v in targets.items()},
                        source=source, ignore_patterns=IGNORE_PATTERNS)
    stacked: dict[int, tuple[nnx.Variable, list]] = {}
    for k, (var, transpose, layer) in targets.items():
        a = np.asarray(state[k], np.float32)
        a = a.T if transpose else a
        if layer is None:
            var.set_value(jnp.asarray(a))
        else:
            stacked.setdefault(id(var), (var, []))[1].append(a)  # keys are in layer order
    for var, per_layer in stacked.values():
        var.set_value(jnp.asarray(np.stack(per_layer)))
    return report


def config_from_state(state, **overrides) -> UniMolConfig:
    """Sizes read off the checkpoint; overrides (dtype, dropouts, ...) win."""
    need = ("embed_tokens.weight", "gbf.means.weight", "gbf_proj.linear2.weight",
            "encoder.layers.0.fc1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"not a Uni-Mol encoder state dict: missing {missing}")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    sizes = dict(
        vocab_size=state["embed_tokens.weight"].shape[0],
        embed_dim=state["embed_tokens.weight"].shape[1],
        num_kernels=state["gbf.means.weight"].shape[-1],
        num_heads=state["gbf_proj.linear2.weight"].shape[0],
        ffn_dim=state["encoder.layers.0.fc1.weight"].shape[0],
        num_layers=max(layers) + 1,
    )
    sizes.update(overrides)
    try:
        return UniMolConfig(**sizes)
    except ValueError as e:
        raise CheckpointError(f"inconsistent Uni-Mol sizes {sizes}: {e}") from e


def _find_prefix(raw, checkpoint: str) -> str:
    """'' for a plain Uni-Mol state dict; else the unique prefix before `embed_tokens.weight`."""
    if "embed_tokens.weight" in raw:
        return ""
    cands = sorted(k[: -len("embed_tokens.weight")] for k in raw if k.endswith(".embed_tokens.weight"))
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise CheckpointError(f"{checkpoint}: no embed_tokens.weight; not a Uni-Mol encoder state dict")
    raise CheckpointError(f"{checkpoint} holds several Uni-Mol encoders ({', '.join(cands)}); pass prefix=")


def _read(checkpoint: str, dictionary: str | None, prefix: str | None):
    raw = load_state_dict(checkpoint, subkey="model")  # Uni-Mol .pt: {'model': state, 'args': ...}
    if not raw:  # a Lightning .ckpt: {'state_dict': {'model.conf_encoder.embed_tokens.weight': ...}}
        raw = load_state_dict(checkpoint, subkey="state_dict")
    if prefix is None:
        prefix = _find_prefix(raw, checkpoint)
    state = strip_prefix(raw, prefix) if prefix else raw
    if not state:
        raise CheckpointError(f"{checkpoint}: no keys under prefix {prefix!r}")
    if dictionary is not None:
        vocab = len(Dictionary.load(dictionary))
        rows = state["embed_tokens.weight"].shape[0]
        if vocab != rows:
            raise CheckpointError(
                f"dictionary {dictionary} has {vocab} symbols ([MASK] included) but "
                f"{checkpoint} embed_tokens.weight has {rows} rows; use the dictionary the model was trained with")
    return raw, state, prefix


def load(checkpoint: str, dictionary: str | None = None, *, prefix: str | None = None, seed: int = 0,
         **config_overrides):
    """Builds a UniMolEncoder sized from `checkpoint` and loads it.

    `prefix` selects an encoder inside a larger state dict (e.g. `model.conf_encoder.` of a
    MolBind `.ckpt`, which holds two); by default a plain state dict is expected, or the one
    prefix is found. Keys outside it are reported as ignored. `config_overrides` go to
    UniMolConfig (dtype, dropouts).
    """
    raw, state, prefix = _read(checkpoint, dictionary, prefix)
    cfg = config_from_state(state, **config_overrides)
    module = UniMolEncoder(cfg, rngs=nnx.Rngs(seed))
    report = assign(module, state, checkpoint)
    if prefix:
        report.ignored.extend(k for k in raw if not k.startswith(prefix))
    return module, report


@nnx.jit
def _eval_forward(module: UniMolEncoder, tokens, distance, edge_type):
    return module(tokens, distance, edge_type, train=False)


def run_flax(module: UniMolEncoder, inputs) -> dict[str, np.ndarray]:
    """Eval-mode forward (no dropout) on the collater's arrays; encoder_rep [B,N,D] float32."""
    rep = _eval_forward(module, np.asarray(inputs["src_tokens"], np.int32),
                        np.asarray(inputs["src_distance"], np.float32),
                        np.asarray(inputs["src_edge_type"], np.int32))
    return {"encoder_rep": np.asarray(rep, np.float32)}


def run_torch(checkpoint: str, inputs, dictionary: str | None = None, *, prefix: str | None = None,
              **flax_only) -> dict[str, np.ndarray]:
    """The same forward with the PyTorch reference (`torch_reference.unimol`), eval mode, float32.

    `flax_only` takes the Flax-side options a caller passes to both (dtype, dropouts); the
    float32 eval-mode reference has no use for them.
    """
    del flax_only
    import torch

    from molbind_jax.torch_reference.unimol import UniMolEncoder as TorchUniMol

    _, state, _ = _read(checkpoint, dictionary, prefix)
    cfg = config_from_state(state)
    model = TorchUniMol(cfg.vocab_size, cfg.num_layers, cfg.embed_dim, cfg.ffn_dim, cfg.num_heads, cfg.num_kernels)
    patterns = [re.compile(p) for p in IGNORE_PATTERNS]
    kept = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items() if not any(p.match(k) for p in patterns)}
    try:
        model.load_state_dict(kept, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint} does not fit the torch reference: {e}") from e
    model.eval()
    with torch.no_grad():
        rep = model(torch.tensor(np.array(inputs["src_tokens"]), dtype=torch.long),
                    torch.tensor(np.array(inputs["src_distance"]), dtype=torch.float32),
                    torch.tensor(np.array(inputs["src_edge_type"]), dtype=torch.long))
    return {"encoder_rep": rep.numpy()}
