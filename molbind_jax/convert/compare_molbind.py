r"""Whole-model parity harness: a MolBind Lightning `.ckpt` run by our Flax `MolBind` and by the
PyTorch reference of the original `Model` (`torch_reference.molbind`) on the same inputs.

    python -m molbind_jax.convert.compare --encoder=molbind --checkpoint=molbind.ckpt \
        --gin_backbone=graph_pretrain.pth --dictionaries=DIR --inputs=IN.npz [--tolerance=1e-5] [--bf16]

Flax side: `convert.molbind` reads and strictly imports the ckpt (GIN BatchNorm statistics from
the ckpt, else from the backbone), with the original's padded-mean Uni-Mol pooling.
Torch side: the reference is built at the ckpt's sizes and loaded with `strict=True` after the
buffers the original's ckpt drops are added back, each one reported: the GIN BatchNorm
`running_mean`/`running_var`/`num_batches_tracked` from the backbone (`num_batches_tracked`
0 if the backbone lacks it) and `Qformer.bert.embeddings.position_ids` (arange). A ckpt
without BatchNorm statistics and no backbone is refused: no parity with the original is
possible then.

Both sides compute the four embeddings in float32, unnormalised (the raw projections the
original's evaluation ranks), and the table gives per embedding max|flax - torch| and the
relative error max|flax - torch| / max|torch| (exit status 1 above the tolerance). From the
same embeddings, the original-protocol retrieval metrics (`original_protocol.evaluate`: in-batch
64 and full set) of every pair type whose two modalities are present with the same number of
rows are printed for both sides (`--bf16`: bf16 scores, as the original's autocast).

Inputs (npz), in the original's layout; a modality is used when all its keys are present:

  graph_x [n, >=2] int            node features (only columns 0, 1 are read), PyG `Batch.x`
  graph_edge_index [2, e] int     source row 0, target row 1; both directions of every bond
  graph_edge_attr [e, >=2] int    bond type, direction (columns 0, 1)
  graph_batch [n] int             graph id per node, non-decreasing (optional graph_num_graphs [])
  text_input_ids [B, L] int       token ids (SciBERT vocabulary for the original)
  text_attention_mask [B, L] 0/1
  conformer_tokens [B, N] int     molecule-dictionary ids as the dataset item gives them:
                                  [CLS] atoms [SEP], then 0 ([PAD]) to any N
  conformer_coordinates [B, N, 3] float, the item's coordinates (atoms centred, [CLS]/[SEP] at 0)
  pocket_tokens [B, M], pocket_coordinates [B, M, 3]   the same with the pocket dictionary

From tokens and coordinates each side builds the pair inputs itself. Torch, as the original's
dataset and collater: per item the distance matrix in float64 (scipy `distance_matrix`) cast
to float32 and `ET = t_i * V + t_j`, then padding with 0 to the batch's longest item rounded up
to a multiple of 8. Flax: `MolBind.embed_conformer` / `embed_pocket` (`models.unimol.pair_inputs`
in float32, our padding; the pooling reproduces the original's padded mean).

`--dictionaries=DIR` holds the Uni-Mol dictionaries the token ids refer to (the original's
`unimol_dict_mol.txt` / `unimol_dict_pro.txt`, our export's `mol_dict.txt` / `pocket_dict.txt`,
or Uni-Mol's `dict.txt` / `dict_coarse.txt`); they must list our symbols in our order
(`data_pipeline/featurize/dictionaries.py`), or the ids would index other embedding rows.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping

import numpy as np

from molbind_jax.convert import compare as compare_lib
from molbind_jax.convert import molbind as molbind_convert
from molbind_jax.convert.common import CheckpointError, load_state_dict, strip_prefix

MODALITY_KEYS = {
    "graph": ("graph_x", "graph_edge_index", "graph_edge_attr", "graph_batch"),
    "text": ("text_input_ids", "text_attention_mask"),
    "conformer": ("conformer_tokens", "conformer_coordinates"),
    "pocket": ("pocket_tokens", "pocket_coordinates"),
}
OPTIONAL_KEYS = ("graph_num_graphs",)
# Pair type (ours) -> the original's name, modalities in the original's (a, b) order (spec 4).
PAIRS = {"graph_text": ("2dtext", "graph", "text"), "conformer_text": ("3dtext", "conformer", "text"),
         "graph_conformer": ("d2d3", "graph", "conformer"), "conformer_pocket": ("molpro", "conformer", "pocket")}
DICTIONARY_FILES = {"mol": ("unimol_dict_mol.txt", "mol_dict.txt", "dict.txt"),
                    "pocket": ("unimol_dict_pro.txt", "pocket_dict.txt", "dict_coarse.txt")}
PAD_MULTIPLE = 8
_BN = re.compile(r"batch_norms\.(\d+)\.(running_mean|running_var|num_batches_tracked)$")


# ----------------------------------------------------------------------------- inputs
def check_dictionaries(directory: str) -> dict[str, str]:
    """{"mol": path, "pocket": path} after checking both against ours, symbol by symbol."""
    from molbind_data.featurize.dictionaries import MOL_DICTIONARY, POCKET_DICTIONARY, Dictionary

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--dictionaries: {directory} is not a directory")
    found = {}
    for kind, ours in (("mol", MOL_DICTIONARY), ("pocket", POCKET_DICTIONARY)):
        path = next((os.path.join(directory, n) for n in DICTIONARY_FILES[kind]
                     if os.path.exists(os.path.join(directory, n))), None)
        if path is None:
            raise FileNotFoundError(f"no {kind} dictionary in {directory} (looked for {', '.join(DICTIONARY_FILES[kind])})")
        theirs = Dictionary.load(path).symbols
        if theirs != ours.symbols:
            i = next((i for i, (a, b) in enumerate(zip(theirs, ours.symbols)) if a != b), min(len(theirs), len(ours.symbols)))
            got = theirs[i] if i < len(theirs) else "<end>"
            want = ours.symbols[i] if i < len(ours.symbols) else "<end>"
            raise ValueError(f"{path}: symbol {i} is {got!r} where ours is {want!r} ({len(theirs)} vs "
                             f"{len(ours.symbols)} symbols with [MASK]); token ids would index other embedding rows")
        found[kind] = path
    return found


def load_inputs(path: str) -> dict[str, np.ndarray]:
    """The npz of the module docstring, checked: every modality complete or absent, shapes."""
    with np.load(path) as data:
        inputs = dict(data)
    known = {k for ks in MODALITY_KEYS.values() for k in ks} | set(OPTIONAL_KEYS)
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    present = [m for m, ks in MODALITY_KEYS.items() if any(k in inputs for k in ks)]
    for m in present:
        missing = [k for k in MODALITY_KEYS[m] if k not in inputs]
        if missing:
            raise ValueError(f"{path}: modality {m} is incomplete, missing {missing}")
    if not present:
        raise ValueError(f"{path}: no modality; expected the keys of one of {sorted(MODALITY_KEYS)}")
    for m in ("conformer", "pocket"):
        if m in present:
            tok, crd = inputs[f"{m}_tokens"], inputs[f"{m}_coordinates"]
            if tok.ndim != 2 or crd.shape != tok.shape + (3,):
                raise ValueError(f"{path}: {m}_tokens {tok.shape} and {m}_coordinates {crd.shape} must be [B,N], [B,N,3]")
            real = tok != 0
            bad = np.nonzero((~real[:, :-1] & real[:, 1:]).any(1) | ~real[:, 0])[0]
            if bad.size:
                raise ValueError(f"{path}: {m}_tokens rows {bad.tolist()} are not a non-empty run of tokens "
                                 "followed by 0 ([PAD]) only")
            if not np.isfinite(crd).all():
                raise ValueError(f"{path}: {m}_coordinates holds non-finite values")
    if "text" in present and inputs["text_input_ids"].shape != inputs["text_attention_mask"].shape:
        raise ValueError(f"{path}: text_input_ids {inputs['text_input_ids'].shape} != text_attention_mask "
                         f"{inputs['text_attention_mask'].shape}")
    return inputs


def modalities(inputs: Mapping[str, np.ndarray]) -> list[str]:
    return [m for m, ks in MODALITY_KEYS.items() if all(k in inputs for k in ks)]


def _num_graphs(inputs) -> int:
    if "graph_num_graphs" in inputs:
        return int(inputs["graph_num_graphs"])
    batch = np.asarray(inputs["graph_batch"])
    return int(batch.max()) + 1 if batch.size else 0


def collate_3d(tokens: np.ndarray, coordinates: np.ndarray, vocab_size: int):
    """The original's dataset item + D3Collater for real-token prefixes: (tokens [B,Np] int64,
    dist [B,Np,Np] float32, edge_type [B,Np,Np] int64), Np = round_up(max n, 8)."""
    from scipy.spatial import distance_matrix

    lengths = (np.asarray(tokens) != 0).sum(1)
    n_pad = int(-(-lengths.max() // PAD_MULTIPLE) * PAD_MULTIPLE)
    b = tokens.shape[0]
    tok = np.zeros((b, n_pad), np.int64)
    dist = np.zeros((b, n_pad, n_pad), np.float32)
    et = np.zeros((b, n_pad, n_pad), np.int64)
    for i, n in enumerate(lengths):
        t = np.asarray(tokens[i, :n], np.int64)
        c = np.asarray(coordinates[i, :n], np.float64)  # the item's float32 atoms + float64 zero rows
        tok[i, :n] = t
        dist[i, :n, :n] = distance_matrix(c, c).astype(np.float32)
        et[i, :n, :n] = t[:, None] * vocab_size + t[None, :]
    return tok, dist, et


def check_ranges(inputs: Mapping[str, np.ndarray], config) -> None:
    """Every id inside its table (JAX would clamp an index silently, torch would raise deep inside)."""
    g, b = config.gin, config.bert
    limits = []
    if "graph_x" in inputs:
        x, ea = np.asarray(inputs["graph_x"]), np.asarray(inputs["graph_edge_attr"])
        limits += [("graph_x[:, 0]", x[:, 0], g.num_atom_type), ("graph_x[:, 1]", x[:, 1], g.num_chirality),
                   ("graph_edge_attr[:, 0]", ea[:, 0], g.num_bond_type), ("graph_edge_attr[:, 1]", ea[:, 1], g.num_bond_dir)]
    if "text_input_ids" in inputs:
        ids = np.asarray(inputs["text_input_ids"])
        limits.append(("text_input_ids", ids, b.vocab_size))
        if ids.shape[1] > b.max_position_embeddings:
            raise ValueError(f"text_input_ids has {ids.shape[1]} positions; the text tower has {b.max_position_embeddings}")
    for m, cfg in (("conformer", config.conformer), ("pocket", config.pocket)):
        if f"{m}_tokens" in inputs:
            limits.append((f"{m}_tokens", np.asarray(inputs[f"{m}_tokens"]), cfg.vocab_size))
    for name, a, n in limits:
        if a.size and (a.min() < 0 or a.max() >= n):
            raise ValueError(f"{name} holds ids in [{a.min()}, {a.max()}], outside the checkpoint's table of {n}")


# ----------------------------------------------------------------------------- both sides
def flax_embeddings(model, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raw (unnormalised) float32 embeddings of every present modality, eval mode, jitted."""
    from flax import nnx

    from molbind_jax.modalities.graph import GraphBatch
    from molbind_jax.models.gin import graphs_from_pyg

    out = {}
    present = modalities(inputs)
    if "graph" in present:
        g = graphs_from_pyg(inputs["graph_x"], inputs["graph_edge_index"], inputs["graph_edge_attr"],
                            inputs["graph_batch"], _num_graphs(inputs))
        batch = GraphBatch(g.nodes, g.edges, g.senders, g.receivers, g.n_node, g.n_edge)
        out["graph"] = nnx.jit(lambda m, b: m.embed_graph(b, normalize=False))(model, batch)
    if "text" in present:
        out["text"] = nnx.jit(lambda m, i, k: m.embed_text(i, k, normalize=False))(
            model, np.asarray(inputs["text_input_ids"], np.int32), np.asarray(inputs["text_attention_mask"], np.int32))
    for m in ("conformer", "pocket"):
        if m in present:
            tok = np.asarray(inputs[f"{m}_tokens"], np.int32)
            crd = np.asarray(inputs[f"{m}_coordinates"], np.float32)
            extra = -tok.shape[1] % PAD_MULTIPLE  # "original" pooling needs N % 8 == 0
            tok = np.pad(tok, ((0, 0), (0, extra)))
            crd = np.pad(crd, ((0, 0), (0, extra), (0, 0)))
            method = "embed_conformer" if m == "conformer" else "embed_pocket"
            out[m] = nnx.jit(lambda mod, t, c, method=method: getattr(mod, method)(t, c, normalize=False))(model, tok, crd)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def torch_embeddings(ref, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same from the torch reference (eval, float32), pair inputs built as the original."""
    import torch

    def long(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.long)

    out = {}
    present = modalities(inputs)
    ref.eval()
    with torch.no_grad():
        if "graph" in present:
            out["graph"] = ref.embed_graph(long(inputs["graph_x"]), long(inputs["graph_edge_index"]),
                                           long(inputs["graph_edge_attr"]), long(inputs["graph_batch"]),
                                           _num_graphs(inputs), normalize=False)
        if "text" in present:
            out["text"] = ref.embed_text(long(inputs["text_input_ids"]), long(inputs["text_attention_mask"]),
                                         normalize=False)
        for m, enc, fn in (("conformer", ref.conf_encoder, ref.embed_conformer),
                           ("pocket", ref.pro_encoder, ref.embed_pocket)):
            if m in present:
                tok, dist, et = collate_3d(inputs[f"{m}_tokens"], inputs[f"{m}_coordinates"],
                                           enc.embed_tokens.num_embeddings)
                out[m] = fn(torch.from_numpy(tok), torch.from_numpy(dist), torch.from_numpy(et), normalize=False)
    return {k: v.float().numpy() for k, v in out.items()}


def _cross_attention_layout(state: Mapping[str, np.ndarray]) -> tuple[int, int | None]:
    """(cross_attention_freq, encoder_width) from the Q-Former keys of a state dict."""
    pat = re.compile(r"model\.Qformer\.bert\.encoder\.layer\.(\d+)\.crossattention\.self\.key\.weight$")
    found = {int(m.group(1)): state[k].shape[1] for k in state if (m := pat.match(k))}
    layers = 1 + max(int(m.group(1)) for k in state
                     if (m := re.match(r"model\.Qformer\.bert\.encoder\.layer\.(\d+)\.", k)))
    if not found:
        return 2, None  # no cross-attention in the file: strict loading will name the keys
    idx = sorted(found)
    freq = idx[1] - idx[0] if len(idx) > 1 else max(layers, 1)
    if idx != list(range(0, layers, freq)):
        raise CheckpointError(f"cross-attention on layers {idx} of {layers}: not every k-th layer from 0, "
                              "which the original's Q-Former cannot build")
    return freq, found[idx[0]]


def torch_reference(state: Mapping[str, np.ndarray], config, *, gin_backbone: str | None, source: str):
    """(reference loaded strictly, list of what was added) from a `.ckpt` state dict."""
    import torch

    from molbind_jax.convert.to_torch import reference_sizes
    from molbind_jax.torch_reference.molbind import MolBindModel

    freq, width = _cross_attention_layout(state)
    ref = MolBindModel(**reference_sizes(config, cross_attention_freq=freq, encoder_width=width))
    own = ref.state_dict()
    sd = {k[len("model."):]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith("model.")}
    added = []
    missing = set(own) - set(sd)
    bn_missing = sorted(k for k in missing if k.startswith("graph_encoder.") and _BN.search(k))
    backbone: dict[str, np.ndarray] = {}
    if bn_missing and gin_backbone:
        backbone = load_state_dict(gin_backbone)
        if "x_embedding1.weight" not in backbone:
            from molbind_jax.convert.gin import _find_prefix

            backbone = strip_prefix(backbone, _find_prefix(backbone))
    if not gin_backbone and any(not k.endswith("num_batches_tracked") for k in bn_missing):
        raise CheckpointError(f"{source} has no GIN BatchNorm statistics (the original drops them when saving); "
                              "pass --gin_backbone=graph_pretrain.pth, which the original loads them from")
    for k in bn_missing:
        sub = k[len("graph_encoder."):]
        if sub in backbone:
            sd[k] = torch.as_tensor(np.array(backbone[sub]))
            added.append(f"{k} from {gin_backbone}")
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros((), dtype=torch.long)
            added.append(f"{k} = 0")
        else:
            raise CheckpointError(f"GIN backbone {gin_backbone} lacks {sub}")
    if "Qformer.bert.embeddings.position_ids" in missing:
        sd["Qformer.bert.embeddings.position_ids"] = own["Qformer.bert.embeddings.position_ids"].clone()
        added.append("Qformer.bert.embeddings.position_ids = arange")
    for a, b in (("Qformer.bert.embeddings.word_embeddings.weight", "Qformer.cls.predictions.decoder.weight"),
                 ("Qformer.cls.predictions.bias", "Qformer.cls.predictions.decoder.bias")):
        if a in sd and b in sd and not torch.equal(sd[a], sd[b]):
            raise CheckpointError(f"{source}: {a} and {b} are tied in the original but differ in the file")
    try:
        ref.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source} does not load strictly into the original Model's reference: {e}") from e
    return ref.eval(), added


# ----------------------------------------------------------------------------- the harness
def compare(checkpoint: str, inputs: Mapping[str, np.ndarray], *, gin_backbone: str | None = None,
            text_heads: int | None = None, bf16: bool = False) -> dict[str, Any]:
    """Flax vs torch on `inputs`. Returns {"report", "added", "flax", "torch", "errors", "metrics"};
    metrics[pair] = {"flax": evaluate(...), "torch": evaluate(...)}."""
    from flax import nnx

    from molbind_jax.evaluation import original_protocol
    from molbind_jax.models.molbind import MolBind

    logging.info("reading %s", checkpoint)
    state = molbind_convert.read_checkpoint(checkpoint)
    config = molbind_convert.config_from_state(state, **({"bert": {"num_heads": text_heads}} if text_heads else {}))
    check_ranges(inputs, config)
    ref, added = torch_reference(state, config, gin_backbone=gin_backbone, source=checkpoint)
    model = MolBind(config, rngs=nnx.Rngs(0))
    report = molbind_convert.assign(model, state, checkpoint, gin_backbone=gin_backbone)
    del state
    logging.info("flax embeddings")
    ours = flax_embeddings(model, inputs)
    logging.info("torch embeddings")
    theirs = torch_embeddings(ref, inputs)
    errors = {m: compare_lib.parity(ours[m], theirs[m]) for m in ours}
    metrics = {}
    for pair, (_, a, b) in PAIRS.items():
        if a in ours and b in ours and ours[a].shape[0] == ours[b].shape[0]:
            metrics[pair] = {side: original_protocol.evaluate(e[a], e[b], bf16=bf16)
                             for side, e in (("flax", ours), ("torch", theirs))}
    return {"report": report, "added": added, "flax": ours, "torch": theirs, "errors": errors, "metrics": metrics}


def format_parity(errors: Mapping[str, Mapping[str, float]], tolerance: float) -> str:
    lines = [f"{'embedding':<10} {'max abs':>10} {'rel':>10}  status"]
    for name, e in errors.items():
        status = "ok" if e["rel"] <= tolerance else f"FAIL (> {tolerance:g})"
        lines.append(f"{name:<10} {e['max_abs']:>10.3e} {e['rel']:>10.3e}  {status}")
    return "\n".join(lines)


def format_metrics(metrics: Mapping[str, Mapping[str, Mapping]], bf16: bool) -> str:
    from molbind_jax.evaluation.original_protocol import KEYS

    scores = "bf16" if bf16 else "float32"
    lines = [f"original-protocol retrieval (unnormalised dot products, {scores} scores, stable ties; %):",
             f"{'pair':<26} {'set':<9} {'side':<6}" + "".join(f" {k:>9}" for k in KEYS) + f" {'n':>5} {'tied':>5}"]
    differ = []
    for pair, sides in metrics.items():
        name = f"{pair} ({PAIRS[pair][0]})"
        for split in ("in_batch", "full"):
            for side in ("flax", "torch"):
                r = sides[side][split]
                lines.append(f"{name:<26} {split:<9} {side:<6}" + "".join(f" {r[k]:>9.2f}" for k in KEYS)
                             + f" {r['n']:>5} {r['tied_queries']:>5}")
            if any(sides["flax"][split][k] != sides["torch"][split][k] for k in KEYS):
                differ.append(f"{pair} {split}")
    lines.append("flax and torch metrics: " + ("identical" if not differ else "DIFFER in " + ", ".join(differ)
                                               + " (near-tied scores ranked differently)"))
    return "\n".join(lines)


def run(checkpoint: str, inputs_path: str, *, dictionaries: str | None, gin_backbone: str | None = None,
        tolerance: float = 1e-5, bf16: bool = False, text_heads: int | None = None) -> int:
    """The command line's work (compare.py --encoder=molbind); returns the exit status."""
    if not dictionaries:
        raise ValueError("--encoder=molbind needs --dictionaries=DIR (the Uni-Mol dictionaries of the token ids)")
    paths = check_dictionaries(dictionaries)
    print("dictionaries: " + ", ".join(f"{k} {p} (matches ours)" for k, p in paths.items()))
    inputs = load_inputs(inputs_path)
    result = compare(checkpoint, inputs, gin_backbone=gin_backbone, text_heads=text_heads, bf16=bf16)
    print(result["report"].summary())
    print("added to the torch state dict before strict loading:" if result["added"] else
          "added to the torch state dict: nothing (the checkpoint holds every buffer)")
    for line in result["added"]:
        print(f"  {line}")
    print("raw embeddings (float32, unnormalised), flax vs torch reference; rel = max|flax - torch| / max|torch|:")
    print(format_parity(result["errors"], tolerance))
    if result["metrics"]:
        print(format_metrics(result["metrics"], bf16))
    worst = max(e["rel"] for e in result["errors"].values())
    return 0 if worst <= tolerance else 1
