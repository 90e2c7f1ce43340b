"""Imports a Hu et al.-style GIN `.pth` (plain state dict, original key layout) into `models.gin.GIN`.

Importer protocol shared with `compare.py`:
  load(checkpoint, dictionary=None, **config_overrides) -> (GIN, KeyReport)
  assign(module, state, source) -> KeyReport
  run_flax(module, inputs) -> {"node_rep", "graph_rep"}
  run_torch(checkpoint, inputs) -> {"node_rep", "graph_rep"}
Inputs are PyG-style numpy arrays: x [n,2], edge_index [2,e], edge_attr [e,2], batch [n]
(optionally num_graphs). Outputs are eval-mode (BatchNorm running statistics).

A MolBind Lightning `.ckpt` has no BatchNorm running statistics (spec section 0): they come
from the GIN backbone checkpoint. `assign(..., allow_missing_bn_stats=True)` accepts such a
state and keeps the module's current running stats (load the backbone first).
"""
from __future__ import annotations

import re
import warnings

import jax.numpy as jnp
import numpy as np
from flax import nnx

from molbind_jax.convert.common import CheckpointError, KeyReport, check_keys, load_state_dict, strip_prefix
from molbind_jax.models.gin import GIN, GINConfig, graphs_from_pyg

# Buffers the Flax module does not need (BatchNorm with a fixed momentum ignores the counter).
IGNORE_PATTERNS = (r"batch_norms\.\d+\.num_batches_tracked$",)
_BN_STATS = ("running_mean", "running_var")


def expected_keys(cfg: GINConfig) -> dict[str, tuple[int, ...]]:
    d = cfg.emb_dim
    keys = {
        "x_embedding1.weight": (cfg.num_atom_type, d),
        "x_embedding2.weight": (cfg.num_chirality, d),
    }
    for i in range(cfg.num_layers):
        keys.update({
            f"gnns.{i}.mlp.0.weight": (2 * d, d),
            f"gnns.{i}.mlp.0.bias": (2 * d,),
            f"gnns.{i}.mlp.2.weight": (d, 2 * d),
            f"gnns.{i}.mlp.2.bias": (d,),
            f"gnns.{i}.edge_embedding1.weight": (cfg.num_bond_type, d),
            f"gnns.{i}.edge_embedding2.weight": (cfg.num_bond_dir, d),
        })
        for name in ("weight", "bias") + _BN_STATS:
            keys[f"batch_norms.{i}.{name}"] = (d,)
    return keys


def config_from_state(state, **overrides) -> GINConfig:
    """Sizes read off the checkpoint (layers, emb_dim, table sizes); overrides win."""
    for k in ("x_embedding1.weight", "x_embedding2.weight", "gnns.0.edge_embedding1.weight",
              "gnns.0.edge_embedding2.weight"):
        if k not in state:
            raise CheckpointError(f"not a GIN state dict: missing key {k}")
        if np.ndim(state[k]) != 2:
            raise CheckpointError(f"{k}: expected a 2-D table, got shape {tuple(np.shape(state[k]))}")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"gnns\.(\d+)\.", k))}
    sizes = dict(
        num_layers=max(layers) + 1,
        emb_dim=state["x_embedding1.weight"].shape[1],
        num_atom_type=state["x_embedding1.weight"].shape[0],
        num_chirality=state["x_embedding2.weight"].shape[0],
        num_bond_type=state["gnns.0.edge_embedding1.weight"].shape[0],
        num_bond_dir=state["gnns.0.edge_embedding2.weight"].shape[0],
    )
    sizes.update(overrides)
    return GINConfig(**sizes)


def _find_prefix(state) -> str:
    """'' for a plain Hu state dict; otherwise the unique prefix before `x_embedding1.weight`."""
    if "x_embedding1.weight" in state:
        return ""
    cands = sorted(k[: -len("x_embedding1.weight")] for k in state if k.endswith(".x_embedding1.weight"))
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise CheckpointError("no GIN found: no key x_embedding1.weight (under any prefix)")
    raise CheckpointError(f"several GINs in the checkpoint ({cands}); pass prefix=")


def assign(module: GIN, state, source: str, *, allow_missing_bn_stats: bool = False) -> KeyReport:
    """Copies a state dict in the original key layout into `module` (checked strictly first)."""
    cfg = module.config
    expected = expected_keys(cfg)
    kept = []
    if allow_missing_bn_stats:
        kept = [k for k in expected if k.rsplit(".", 1)[-1] in _BN_STATS and k not in state]
        for k in kept:
            del expected[k]
    report = check_keys(state, expected, source=source, ignore_patterns=IGNORE_PATTERNS)
    if kept:
        warnings.warn(f"{source}: {len(kept)} BatchNorm running-stat keys absent; keeping the module's "
                      "(load the GIN backbone checkpoint first)", stacklevel=2)

    def arr(k, transpose=False):
        a = np.asarray(state[k], np.float32)
        return jnp.asarray(a.T if transpose else a)

    module.x_embedding1.embedding.set_value(arr("x_embedding1.weight"))
    module.x_embedding2.embedding.set_value(arr("x_embedding2.weight"))
    for i, (conv, bn) in enumerate(zip(module.gnns, module.batch_norms)):
        conv.mlp_0.kernel.set_value(arr(f"gnns.{i}.mlp.0.weight", transpose=True))
        conv.mlp_0.bias.set_value(arr(f"gnns.{i}.mlp.0.bias"))
        conv.mlp_2.kernel.set_value(arr(f"gnns.{i}.mlp.2.weight", transpose=True))
        conv.mlp_2.bias.set_value(arr(f"gnns.{i}.mlp.2.bias"))
        conv.edge_embedding1.embedding.set_value(arr(f"gnns.{i}.edge_embedding1.weight"))
        conv.edge_embedding2.embedding.set_value(arr(f"gnns.{i}.edge_embedding2.weight"))
        bn.weight.set_value(arr(f"batch_norms.{i}.weight"))
        bn.bias.set_value(arr(f"batch_norms.{i}.bias"))
        for name in _BN_STATS:
            k = f"batch_norms.{i}.{name}"
            if k in state:
                getattr(bn, name).set_value(arr(k))
    return report


def load(checkpoint: str, dictionary: str | None = None, *, prefix: str | None = None,
         allow_missing_bn_stats: bool = False, seed: int = 0, **config_overrides):
    """Builds a GIN sized from `checkpoint` and loads it. `dictionary` is unused (protocol).

    `prefix` selects a GIN inside a larger state dict (e.g. `model.graph_encoder.` in a MolBind
    `.ckpt`); by default a plain state dict is expected, or the unique prefix is found. Keys
    outside the prefix are listed as ignored. `config_overrides` go to GINConfig
    (e.g. self_loop_attr=(4, 0), dtype=jnp.bfloat16).
    """
    del dictionary
    raw = load_state_dict(checkpoint, subkey="state_dict")
    if prefix is None:
        prefix = _find_prefix(raw)
    state = strip_prefix(raw, prefix) if prefix else raw
    if not state:
        raise CheckpointError(f"{checkpoint}: no keys under prefix {prefix!r}")
    cfg = config_from_state(state, **config_overrides)
    module = GIN(cfg, rngs=nnx.Rngs(seed))
    report = assign(module, state, checkpoint, allow_missing_bn_stats=allow_missing_bn_stats)
    if prefix:
        report.ignored.extend(k for k in raw if not k.startswith(prefix))
    return module, report


@nnx.jit
def _eval_forward(module: GIN, graph):
    return module(graph, train=False)


def run_flax(module: GIN, inputs) -> dict[str, np.ndarray]:
    """Eval-mode forward on PyG-style inputs; node_rep [n,D] (real nodes), graph_rep [G,D]."""
    graph = graphs_from_pyg(inputs["x"], inputs["edge_index"], inputs["edge_attr"], inputs["batch"],
                            inputs.get("num_graphs"))
    node_rep, graph_rep = _eval_forward(module, graph)
    n = int(np.asarray(inputs["x"]).shape[0])
    return {"node_rep": np.asarray(node_rep[0, :n], np.float32),
            "graph_rep": np.asarray(graph_rep[0, :-1], np.float32)}


def run_torch(checkpoint: str, inputs, dictionary: str | None = None, *, prefix: str | None = None,
              self_loop_attr=(0, 0), **flax_only) -> dict[str, np.ndarray]:
    """The same forward with the PyTorch reference (`torch_reference.gin.GNN`), eval mode, float32.

    `flax_only` takes the Flax-side options a caller passes to both (dtype, drop_ratio,
    allow_missing_bn_stats); the reference loads with strict=False for BN buffers anyway.
    """
    import torch

    from molbind_jax.torch_reference.gin import GNN

    del dictionary, flax_only
    raw = load_state_dict(checkpoint, subkey="state_dict")
    prefix = _find_prefix(raw) if prefix is None else prefix
    state = strip_prefix(raw, prefix) if prefix else raw
    cfg = config_from_state(state)
    model = GNN(cfg.num_layers, cfg.emb_dim, cfg.num_atom_type, cfg.num_chirality, cfg.num_bond_type,
                cfg.num_bond_dir, self_loop_attr=self_loop_attr)
    # strict=False as the original (a MolBind .ckpt lacks the BN buffers); every weight must be there.
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                                                strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[-1] not in _BN_STATS + ("num_batches_tracked",)]
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint}: torch reference missing {missing}, unexpected {unexpected}")
    model.eval()
    with torch.no_grad():
        batch = torch.tensor(np.array(inputs["batch"]), dtype=torch.long)
        node_rep, graph_rep = model(
            torch.tensor(np.array(inputs["x"]), dtype=torch.long),
            torch.tensor(np.array(inputs["edge_index"]), dtype=torch.long),
            torch.tensor(np.array(inputs["edge_attr"]), dtype=torch.long),
            batch, inputs.get("num_graphs"))
    return {"node_rep": node_rep.numpy(), "graph_rep": graph_rep.numpy()}
