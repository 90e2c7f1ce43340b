"""Shared pieces of the PyTorch -> Flax importers: safe file loading and strict key checks.

Loading an untrusted checkpoint must run no code: `.safetensors` files are read with
safetensors, everything else with `torch.load(weights_only=True)` whose unpickler accepts
tensors, plain containers and the one class of `SAFE_GLOBALS`: `argparse.Namespace`, the
hyper-parameters of every Lightning `.ckpt` of MolBind and the `args` of Uni-Mol's `.pt`
files (a Namespace is rebuilt from its attribute dict; nothing is executed). Every importer
(BERT, GIN, Uni-Mol, the whole MolBind) loads through `load_state_dict` and then runs
`check_keys`, which is strict about what the encoder needs and lists what it ignores.
HF `config.json` files are read by `read_hf_config`, which names the file when it does not
parse and the key when a value has the wrong type.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported; the message names every offending key."""


# The only classes torch.load(weights_only=True) may rebuild besides tensors and containers.
SAFE_GLOBALS = (argparse.Namespace,)

# Types of the HF BERT config.json keys the importers read (a float key accepts an integer).
HF_CONFIG_TYPES: dict[str, type] = {
    "vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
    "intermediate_size": int, "max_position_embeddings": int, "type_vocab_size": int,
    "layer_norm_eps": float, "hidden_dropout_prob": float, "attention_probs_dropout_prob": float,
    "hidden_act": str, "position_embedding_type": str,
}


def read_hf_config(path: str) -> dict[str, Any]:
    """An HF `config.json` (the file, or the directory holding it) as a dict, with the types
    of the keys in HF_CONFIG_TYPES checked. A file that does not parse (truncated) or a value
    of the wrong type (a string where a number belongs) is a CheckpointError naming the file
    and the key."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no HF config at {path}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); is it truncated?") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    bad = []
    for key, kind in HF_CONFIG_TYPES.items():
        if key not in config:
            continue
        v = config[key]
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float
              else isinstance(v, kind) and not isinstance(v, bool))
        if not ok:
            bad.append(f"{key}={v!r} (expected {kind.__name__})")
    if bad:
        raise CheckpointError(f"{path}: wrong value type for " + ", ".join(bad))
    return config


@dataclasses.dataclass
class KeyReport:
    """What an importer did with each key of a checkpoint."""

    source: str
    used: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.used)} keys used, {len(self.ignored)} ignored"]
        if self.ignored:
            lines.append("ignored (parts the encoder does not use):")
            lines.extend(f"  {k}" for k in sorted(self.ignored))
        return "\n".join(lines)


def load_state_dict(path: str, *, subkey: str | None = None, extras: dict | None = None) -> dict[str, np.ndarray]:
    """Reads a PyTorch checkpoint into float32/int numpy arrays without running its code.

    Args:
      path: a `.safetensors` file, or a torch file (`.pt`, `.pth`, `.bin`, `.ckpt`).
      subkey: for torch files that wrap the state dict (Uni-Mol's `model`, Lightning's
        `state_dict`), the key to descend into when present.
      extras: when given, receives the wrapper's other top-level entries (e.g. Lightning's
        `hyper_parameters`, or the `molbind_jax` entry our PyTorch export writes).
    """
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {path} as safetensors ({e}); is it truncated?") from e

    import torch  # only importers touch torch

    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint with weights_only=True ({type(e).__name__}: {e}); "
            "the file may be truncated, or hold objects other than tensors"
        ) from e
    if subkey is not None and isinstance(obj, Mapping) and subkey in obj:
        if extras is not None:
            extras.update({k: v for k, v in obj.items() if k != subkey})
        obj = obj[subkey]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            t = v.detach()
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.float()
            out[k] = t.numpy()
    return out


def check_keys(
    state: Mapping[str, np.ndarray],
    expected: Mapping[str, Sequence[int]],
    *,
    source: str,
    ignore_patterns: Iterable[str] = (),
) -> KeyReport:
    """Strict key check.

    Args:
      state: the checkpoint's arrays.
      expected: every key the encoder needs, with its shape.
      source: a name for messages (usually the file path).
      ignore_patterns: regular expressions (`re.match` on the key) of parts the encoder does
        not use, such as pre-training heads; such keys are reported and skipped.

    Raises:
      CheckpointError listing every missing key, every key of the wrong shape and every
      unexpected key that matches no ignore pattern.
    """
    patterns = [re.compile(p) for p in ignore_patterns]
    report = KeyReport(source=source)
    missing = [k for k in expected if k not in state]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} != expected {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    unexpected = []
    for k in state:
        if k in expected:
            report.used.append(k)
        elif any(p.match(k) for p in patterns):
            report.ignored.append(k)
        else:
            unexpected.append(k)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s):\n" + "\n".join(f"  {k}" for k in missing))
    if wrong:
        problems.append(f"{len(wrong)} key(s) with the wrong shape:\n" + "\n".join(f"  {k}" for k in wrong))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s):\n" + "\n".join(f"  {k}" for k in sorted(unexpected)))
    if problems:
        raise CheckpointError(f"{source} does not fit the encoder:\n" + "\n".join(problems))
    return report


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Keeps only the keys under `prefix` (e.g. `model.graph_encoder.`), without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
