"""Shared pieces of the PyTorch -> Flax importers: safe file loading and strict key checks.

Loading an untrusted checkpoint must run no code: `.safetensors` files are read with
safetensors, everything else with `torch.load(weights_only=True)`. Every importer then runs
`check_keys`, which is strict about what the encoder needs and lists what it ignores.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Mapping, Sequence

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported; the message names every offending key."""


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
