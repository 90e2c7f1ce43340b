"""The runtime side of every modality, one module each, found through the table.

`data_pipeline/schema.py` lists the modalities and names each one's runtime module here
(`Modality.runtime`); `spec(name)` imports that module and returns its `SPEC`, a
`ModalitySpec` (base.py) that knows how to size, collate and synthesise the modality's records
(numpy only) and how to build, initialise, run and export its tower (JAX, imported only when
used). Everything else asks this registry instead of naming modalities.
"""
from __future__ import annotations

import functools
import importlib

from molbind_data import schema
from molbind_jax.modalities.base import ModalitySpec, PairBatch

__all__ = ["ModalitySpec", "PairBatch", "spec", "pair_specs", "known"]


@functools.lru_cache(maxsize=None)
def spec(name: str) -> ModalitySpec:
    """The runtime spec of modality `name` (unknown names list the known ones)."""
    entry = schema.modality(name)
    module = importlib.import_module(entry.runtime)
    out = getattr(module, "SPEC", None)
    if not isinstance(out, ModalitySpec) or out.name != name:
        raise TypeError(f"{entry.runtime}.SPEC must be the ModalitySpec of {name!r}")
    return out


def pair_specs(pair: str) -> tuple[ModalitySpec, ModalitySpec]:
    """(x spec, y spec) of a pair type, in the loss's orientation."""
    p = schema.pair_type(pair)
    return spec(p.x), spec(p.y)


def known() -> tuple[str, ...]:
    return tuple(schema.MODALITIES)
