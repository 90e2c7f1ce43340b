"""Graph files of the MolBind-M4 release (`graph_<id>.pt`), read without running their code.

The release stores each 2D graph as a PyTorch Geometric `Data` object saved with `torch.save`
(the original reads them with a plain `torch.load`, `loader/pretrain_dataset.py` and
`loader/test_dataset.py`). A `.pt` file is a zip whose `data.pkl` is a pickle, and a pickle can
call any function while it loads. Files are therefore loaded with
`torch.load(weights_only=True)`: torch's restricted unpickler builds tensors, containers and
the classes of an explicit allow-list only, and refuses any other global (os.system,
subprocess, builtins.eval, ...) before it is called.

What a pickled `Data` refers to (checked with `pickletools` on files written by PyG 2.3.0, the
version of the original's environment.yml, and PyG 2.8.1; identical for both):

    torch_geometric.data.data.Data              NEWOBJ with no arguments, then BUILD with its
                                                __dict__: {_store, _edge_attr_cls, _tensor_attr_cls}
    torch_geometric.data.storage.GlobalStorage  NEWOBJ, BUILD with {_mapping: {x, edge_index,
                                                edge_attr, ...}, _parent: the Data object}
    torch_geometric.data.data.DataEdgeAttr      referenced as classes only (the values of
    torch_geometric.data.data.DataTensorAttr    _edge_attr_cls / _tensor_attr_cls)

`PYG_SAFE_GLOBALS` allow-lists exactly these four names, each bound to a small stand-in class of
this module (torch's `safe_globals` accepts `(class, "qualified.name")` pairs), so
torch_geometric need not be installed and none of its code runs. The stand-ins' `__setstate__`
only stores the given dict, as PyG's own does. (Installing PyG does not make these files load
with weights_only either: PyG registers `Data` but not `GlobalStorage` or `DataEdgeAttr`.)
If PyG happens to be imported in the same process, torch may bind the name `...Data` to PyG's
real class instead of the stand-in; the fields are then read the same way (from `__dict__`).

Plain dicts of tensors `{x, edge_index, edge_attr}` load too. PyG < 2.0 kept the tensors
directly in the Data object's `__dict__`; that layout is read as well.
"""
from __future__ import annotations

import numpy as np

from molbind_data.featurize import UNKNOWN_ELEMENT, UNREADABLE_FILE, SkipRecord

MALFORMED_GRAPH = "malformed_graph"


class _StandIn:
    """Base of the stand-ins: no constructor arguments, state stored as given (a dict)."""

    def __init__(self, *args, **kwargs):  # a pickle calling the class gets an empty object
        pass

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"{type(self).__name__}: expected a dict state, got {type(state).__name__}")
        for key, value in state.items():
            if isinstance(key, str):
                self.__dict__[key] = value


class PygData(_StandIn):
    """Stands in for torch_geometric.data.data.Data."""


class PygGlobalStorage(_StandIn):
    """Stands in for torch_geometric.data.storage.GlobalStorage (holds `_mapping`)."""


class PygDataEdgeAttr(_StandIn):
    """Stands in for torch_geometric.data.data.DataEdgeAttr (only referenced as a class)."""


class PygDataTensorAttr(_StandIn):
    """Stands in for torch_geometric.data.data.DataTensorAttr (only referenced as a class)."""


PYG_SAFE_GLOBALS = [
    (PygData, "torch_geometric.data.data.Data"),
    (PygGlobalStorage, "torch_geometric.data.storage.GlobalStorage"),
    (PygDataEdgeAttr, "torch_geometric.data.data.DataEdgeAttr"),
    (PygDataTensorAttr, "torch_geometric.data.data.DataTensorAttr"),
]


def load_pt(path: str):
    """`torch.load(path, weights_only=True)` with PyG's data classes allow-listed as stand-ins.

    Raises SkipRecord(unreadable_file) for anything torch refuses (a global outside the
    allow-list, a corrupt or non-torch file); nothing in the file is executed.
    """
    import torch

    try:
        with torch.serialization.safe_globals(PYG_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise SkipRecord(UNREADABLE_FILE, f"{path}: refused or unreadable by torch.load(weights_only=True) with PyG's data "
                                          f"classes allow-listed: {type(err).__name__}: {_reason(err)}") from err


def _reason(err: Exception) -> str:
    """The part of torch's message that names what was refused (without its generic preamble,
    its advice to allow-list the refused global, and the documentation link)."""
    message = str(err)
    if "WeightsUnpickler error: " in message:
        message = message.split("WeightsUnpickler error: ", 1)[1]
    paragraphs = [p.strip() for p in message.split("\n\n") if p.strip()]
    kept = [p for p in paragraphs if not p.startswith(("Weights only load failed", "Check the documentation"))]
    text = " ".join(" ".join(kept or paragraphs).split())
    return text.split(" Please use `torch.serialization.add_safe_globals", 1)[0][:300]


def graph_mapping(obj) -> dict | None:
    """{field: value} of a loaded graph object: a dict, a PyG Data (2.x: `_store._mapping`;
    < 2.0: its `__dict__`), stand-in or real; None when it is neither."""
    if isinstance(obj, dict):
        return obj
    state = obj.__dict__ if hasattr(obj, "__dict__") else None
    if not isinstance(state, dict):
        return None
    store = state.get("_store")
    if store is not None:
        mapping = store.__dict__.get("_mapping") if hasattr(store, "__dict__") else None
        return mapping if isinstance(mapping, dict) else None
    return state if "x" in state else None


def _int_array(value, name: str, path: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: {name} has dtype {array.dtype}, expected integer indices")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise SkipRecord(MALFORMED_GRAPH, f"{path}: {name} holds non-integer values (one-hot or float features?)")
    return array.astype(np.int64)


def graph_arrays(mapping: dict, path: str) -> dict:
    """graph_node_feat [n, 2], graph_edge_index [2, e], graph_edge_feat [e, 2] (int32), checked
    against the GIN's tables. Only x[:, :2] and edge_attr[:, :2] are used, as in the original's
    GNN; values outside its tables (e.g. OGB's bond-stereo column > 2) are `malformed_graph`."""
    x, edge_index, edge_attr = mapping.get("x"), mapping.get("edge_index"), mapping.get("edge_attr")
    if x is None or edge_index is None:
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: needs x and edge_index, has {sorted(map(str, mapping))}")
    try:
        x = _int_array(x, "x", path)
        edge_index = _int_array(edge_index, "edge_index", path).reshape(2, -1)
        e = edge_index.shape[1]
        edge_attr = (np.zeros((e, 2), np.int64) if edge_attr is None
                     else _int_array(edge_attr, "edge_attr", path).reshape(e, -1))
    except (TypeError, ValueError, RuntimeError) as err:
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: {type(err).__name__}: {err}") from err
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] == 0 or edge_attr.shape[1] < 2:
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: x {x.shape}, edge_attr {edge_attr.shape}")
    n = x.shape[0]
    nodes, edges = x[:, :2].copy(), edge_attr[:, :2]
    if not ((nodes[:, 0] >= 0) & (nodes[:, 0] <= 117)).all():
        raise SkipRecord(UNKNOWN_ELEMENT, f"{path}: atom type index outside 0..117")
    nodes[nodes[:, 1] == 3, 1] = 0  # Hu's CHI_OTHER: the GIN table has 3 rows (see featurize/graph.py)
    if not ((nodes[:, 1] >= 0) & (nodes[:, 1] <= 2)).all():
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: chirality index outside 0..2")
    if e and not (((edges[:, 0] >= 0) & (edges[:, 0] <= 3)).all() and ((edges[:, 1] >= 0) & (edges[:, 1] <= 2)).all()):
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: bond type outside 0..3 or direction outside 0..2")
    if e and not ((edge_index >= 0) & (edge_index < n)).all():
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: edge index outside the {n} nodes")
    return {"graph_node_feat": nodes.astype(np.int32), "graph_edge_index": edge_index.astype(np.int32),
            "graph_edge_feat": edges.astype(np.int32)}


def load_graph(path: str) -> dict:
    """graph_* arrays of one graph_<id>.pt file (PyG Data or dict of tensors)."""
    obj = load_pt(path)
    mapping = graph_mapping(obj)
    if mapping is None:
        raise SkipRecord(MALFORMED_GRAPH, f"{path}: holds a {type(obj).__name__}, not a PyG Data or a dict of tensors")
    return graph_arrays(mapping, path)
