"""Export of a Flax `MolBind` back to the original PyTorch layout (a Lightning `.ckpt`).

    from molbind_jax.convert import to_torch
    to_torch.write_lightning(model, "out/")      # out/molbind.ckpt, out/graph_pretrain.pth, ...
    ref = to_torch.to_reference(model)           # the same weights in torch_reference.MolBindModel

What is written (`write_lightning`):

  molbind.ckpt          {"state_dict": {"model.<key>": tensor}, "epoch", "global_step",
                         "pytorch-lightning_version", "hyper_parameters" (the original's argparse
                         names as a plain dict), "molbind_jax" (our config as JSON, the source)}.
                         The keys are exactly the original `Model`'s state dict, buffers
                         included (GIN BatchNorm `running_mean`/`running_var`/
                         `num_batches_tracked`, `Qformer.bert.embeddings.position_ids`), so the
                         original (our reference) loads it with `strict=True` once `model.` is
                         stripped. Tied entries (`Qformer.cls.predictions.decoder.weight` = the
                         word embeddings, `decoder.bias` = `cls.predictions.bias`) share storage.
  graph_pretrain.pth    the GIN's state dict in the backbone layout (Hu et al. keys, BatchNorm
                         statistics included): the original loads `./backbone/graph_pretrain.pth`
                         before any ckpt, and its own ckpts drop the statistics.
  unimol_dict_mol.txt   the Uni-Mol dictionaries, one symbol per line without `[MASK]` (the
  unimol_dict_pro.txt   original appends it), under the names the original reads (`./data/`).
  tokenizer/            the text tower's tokenizer files, when `tokenizer_dir` is given.

Parts of the original that MolBind never runs have no counterpart here; they are filled as
the original's own construction would fill them, so that strict loading works:
  * `intermediate_query.*` / `output_query.*`: copies of `intermediate.*` / `output.*`
    (the original copies them at construction, `contrastive.py` 81-85);
  * `crossattention.*` (every `cross_attention_freq`-th layer, key/value of input width =
    the GIN width) and `cls.predictions.transform.*`, `cls.predictions.bias`: BERT's
    initialisation (weights N(0, 0.02), biases 0, LayerNorm 1/0) from a seeded generator, so
    the file is deterministic. In a real MolBind ckpt these hold SciBERT's MLM head and
    untrained cross-attention: they never affect an embedding.
  * `num_batches_tracked` is 0 (our BatchNorm does not count; with momentum 0.1 torch does not
    read it); `position_ids` is `arange(max_position_embeddings)`.

Refused (`ExportError`), because the original cannot hold it: a text tower with a token-type
table; a GIN with fewer than 2 layers (the original's GNN raises); Uni-Mol vocabularies that
are not the sizes of our dictionaries (the original sizes `embed_tokens` from the dictionary
files written beside the ckpt). Warned about (`ExportWarning`), because the original would
compute something else from the same weights or must be built differently to load them:
`unimol_pooling="atoms"` (the original averages over padding too), a GIN self-loop attribute
other than (0, 0), another activation or LayerNorm/BatchNorm epsilon, and every size that
differs from the original's (SciBERT config, Gaussian K=128, GIN 5 x 300, Uni-Mol 15 x 512,
one set of Uni-Mol args for both towers, embed_dim 512).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np

from molbind_jax.convert import bert as bert_convert
from molbind_jax.convert import unimol as unimol_convert
from molbind_jax.convert.molbind import HEADS


class ExportError(ValueError):
    """Our model has something the original `Model` cannot hold."""


class ExportWarning(UserWarning):
    """The original would compute differently from these weights, or needs other sizes."""


CKPT_NAME, BACKBONE_NAME = "molbind.ckpt", "graph_pretrain.pth"
DICT_NAMES = {"mol": "unimol_dict_mol.txt", "pocket": "unimol_dict_pro.txt"}
LIGHTNING_VERSION = "1.9.0"  # the original's pin (environment.yml)


def _np(var, transpose: bool = False) -> np.ndarray:
    a = np.asarray(var[...], np.float32)
    return np.array(a.T if transpose else a, dtype=np.float32, order="C")  # a writable copy


def flax_arrays(model) -> dict[str, np.ndarray]:
    """Every learned array and BatchNorm statistic of a `MolBind`, under the original `Model`'s
    key (no `model.` prefix), float32 in torch's orientation (Linear weights [out, in])."""
    out: dict[str, np.ndarray] = {}
    gin = model.graph_encoder
    p = "graph_encoder."
    out[p + "x_embedding1.weight"] = _np(gin.x_embedding1.embedding)
    out[p + "x_embedding2.weight"] = _np(gin.x_embedding2.embedding)
    for i, (conv, bn) in enumerate(zip(gin.gnns, gin.batch_norms)):
        q = f"{p}gnns.{i}."
        out[q + "mlp.0.weight"], out[q + "mlp.0.bias"] = _np(conv.mlp_0.kernel, True), _np(conv.mlp_0.bias)
        out[q + "mlp.2.weight"], out[q + "mlp.2.bias"] = _np(conv.mlp_2.kernel, True), _np(conv.mlp_2.bias)
        out[q + "edge_embedding1.weight"] = _np(conv.edge_embedding1.embedding)
        out[q + "edge_embedding2.weight"] = _np(conv.edge_embedding2.embedding)
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{p}batch_norms.{i}.{name}"] = _np(getattr(bn, name))
    for prefix, enc in (("conf_encoder.", model.conformer_encoder), ("pro_encoder.", model.pocket_encoder)):
        for key, a in unimol_convert.torch_arrays(enc).items():
            out[prefix + key] = a
    for key, (_, get, transpose) in bert_convert._param_table(model.text_encoder.config).items():
        out["Qformer.bert." + key] = _np(get(model.text_encoder), transpose)
    for name, (ln, lin) in HEADS.items():
        head = getattr(model, name)
        lin, ln = lin[len("model."):], ln[len("model."):] if ln else None
        out[lin + "weight"], out[lin + "bias"] = _np(head.proj.kernel, True), _np(head.proj.bias)
        if ln:
            out[ln + "weight"], out[ln + "bias"] = _np(head.norm.scale), _np(head.norm.bias)
    return out


def reference_sizes(config, *, cross_attention_freq: int = 2, encoder_width: int | None = None) -> dict:
    """`torch_reference.molbind.MolBindModel` keyword arguments for a `MolBindConfig`."""
    b, g = config.bert, config.gin

    def unimol(c):
        return dict(vocab_size=c.vocab_size, encoder_layers=c.num_layers, embed_dim=c.embed_dim,
                    ffn_embed_dim=c.ffn_dim, attention_heads=c.num_heads, num_kernels=c.num_kernels)

    act = "gelu" if b.hidden_act == "gelu" else "gelu_new"
    return dict(
        gin=dict(num_layer=g.num_layers, emb_dim=g.emb_dim, num_atom_type=g.num_atom_type,
                 num_chirality=g.num_chirality, num_bond_type=g.num_bond_type, num_bond_dir=g.num_bond_dir,
                 self_loop_attr=tuple(g.self_loop_attr)),
        conformer=unimol(config.conformer), pocket=unimol(config.pocket),
        text=dict(vocab_size=b.vocab_size, hidden_size=b.hidden_size, num_layers=b.num_layers,
                  num_heads=b.num_heads, intermediate_size=b.intermediate_size,
                  max_position_embeddings=b.max_position_embeddings, layer_norm_eps=b.layer_norm_eps,
                  hidden_act=act, cross_attention_freq=cross_attention_freq,
                  encoder_width=g.emb_dim if encoder_width is None else encoder_width),
        embed_dim=config.embed_dim)


_SIZE_FIELDS = {
    "bert": ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"),
    "gin": ("num_layers", "emb_dim", "num_atom_type", "num_chirality", "num_bond_type", "num_bond_dir"),
    "conformer": ("num_layers", "embed_dim", "ffn_dim", "num_heads", "num_kernels"),
    "pocket": ("num_layers", "embed_dim", "ffn_dim", "num_heads", "num_kernels"),
}


def check_exportable(config) -> list[str]:
    """Raises ExportError for what the original cannot hold; returns the behaviour/size
    differences worth a warning (see the module docstring)."""
    from molbind_data.featurize.dictionaries import MOL_DICTIONARY, POCKET_DICTIONARY
    from molbind_jax.models.molbind import ORIGINAL_MODALITIES, MolBindConfig

    if set(config.modalities) != set(ORIGINAL_MODALITIES):
        raise ExportError(f"cannot export to the original PyTorch layout: the original Model has exactly the "
                          f"towers {ORIGINAL_MODALITIES}, this model has {tuple(config.modalities)}")
    problems = []
    if config.bert.use_token_type:
        problems.append("the text tower has a token-type table (use_token_type=True); the original's Q-Former "
                        "embeddings have none, and dropping it would change every text embedding")
    if config.gin.num_layers < 2:
        problems.append(f"the GIN has {config.gin.num_layers} layer(s); the original's GNN refuses fewer than 2")
    for name, dictionary in (("conformer", MOL_DICTIONARY), ("pocket", POCKET_DICTIONARY)):
        v = getattr(config, name).vocab_size
        if v != len(dictionary):
            problems.append(f"the {name} tower has a vocabulary of {v} but the Uni-Mol dictionary has "
                            f"{len(dictionary)} symbols; the original sizes embed_tokens from that dictionary")
    if problems:
        raise ExportError("cannot export to the original PyTorch layout:\n" + "\n".join(f"  - {p}" for p in problems))

    notes = []
    if config.unimol_pooling != "original":
        notes.append(f"unimol_pooling={config.unimol_pooling!r}: the original averages the Uni-Mol output over ALL "
                     "positions (padding to a multiple of 8 included), so its conformer and pocket embeddings "
                     "differ from ours for every molecule shorter than its batch's padded length")
    if tuple(config.gin.self_loop_attr) != (0, 0):
        notes.append(f"GIN self_loop_attr={tuple(config.gin.self_loop_attr)}: the original's self-loops have "
                     "attribute (0, 0) (PyG add_self_loops fill_value=0), so its graph embeddings differ")
    if config.bert.hidden_act != "gelu":
        notes.append(f"text tower hidden_act={config.bert.hidden_act!r}: the original uses SciBERT's exact GELU")
    if config.bert.layer_norm_eps != 1e-12:
        notes.append(f"text tower layer_norm_eps={config.bert.layer_norm_eps}: SciBERT's is 1e-12")
    for name in ("conformer", "pocket"):
        if getattr(config, name).ln_eps != 1e-5:
            notes.append(f"{name} ln_eps={getattr(config, name).ln_eps}: the original's LayerNorms use 1e-5")
    if config.gin.bn_eps != 1e-5 or config.gin.bn_momentum != 0.1:
        notes.append(f"GIN BatchNorm eps={config.gin.bn_eps}, momentum={config.gin.bn_momentum}: torch's are 1e-5, 0.1")
    orig = MolBindConfig.original()
    sizes = [f"embed_dim {config.embed_dim} (original {orig.embed_dim})"] if config.embed_dim != orig.embed_dim else []
    for sub, fields in _SIZE_FIELDS.items():
        ours, theirs = getattr(config, sub), getattr(orig, sub)
        sizes += [f"{sub}.{f} {getattr(ours, f)} (original {getattr(theirs, f)})"
                  for f in fields if getattr(ours, f) != getattr(theirs, f)]
    if sizes:
        notes.append("sizes differ from the original's, which builds its towers from SciBERT's config.json, its "
                     "args (gin_num_layers, gin_hidden_dim, unimol_encoder_*, projection_dim) and the constant "
                     "K=128; build it with these sizes to load the file: " + "; ".join(sizes))
    uni = ("num_layers", "embed_dim", "ffn_dim", "num_heads", "num_kernels")
    if any(getattr(config.conformer, f) != getattr(config.pocket, f) for f in uni):
        notes.append("the conformer and pocket towers differ in size; the original builds both from one set of args")
    return notes


def to_reference(model, *, seed: int = 0, cross_attention_freq: int = 2, warn: bool = True):
    """The original `Model` (`torch_reference.molbind.MolBindModel`, eval mode) holding `model`'s
    weights; the parts MolBind does not use are filled as the module docstring says."""
    import torch

    from molbind_jax.torch_reference.molbind import MolBindModel

    notes = check_exportable(model.config)
    if warn:
        for note in notes:
            warnings.warn(note, ExportWarning, stacklevel=2)
    ref = MolBindModel(**reference_sizes(model.config, cross_attention_freq=cross_attention_freq))
    ref.Qformer.init_bert_style_(torch.Generator().manual_seed(seed))
    arrays = flax_arrays(model)
    own = ref.state_dict()
    unknown = sorted(set(arrays) - set(own))
    wrong = [f"{k}: ours {arrays[k].shape} vs original {tuple(own[k].shape)}"
             for k in arrays if k in own and arrays[k].shape != tuple(own[k].shape)]
    if unknown or wrong:  # a bug in the mapping, not a user error
        raise RuntimeError(f"export mapping does not fit the reference: unknown {unknown}, wrong shapes {wrong}")
    with torch.no_grad():
        for k, a in arrays.items():
            own[k].copy_(torch.from_numpy(a))
    ref.Qformer.copy_query_parts_()
    return ref.eval()


def hyper_parameters(config, cross_attention_freq: int = 2) -> dict:
    """The original's argparse names for these sizes (informative; the original rebuilds from its args)."""
    c = config.conformer
    return {"bert_name": "scibert", "gin_num_layers": config.gin.num_layers, "gin_hidden_dim": config.gin.emb_dim,
            "drop_ratio": config.gin.drop_ratio, "projection_dim": config.embed_dim, "num_query_token": 8,
            "cross_attention_freq": cross_attention_freq, "temperature": 0.1,
            "unimol_encoder_layers": c.num_layers, "unimol_encoder_embed_dim": c.embed_dim,
            "unimol_encoder_ffn_embed_dim": c.ffn_dim, "unimol_encoder_attention_heads": c.num_heads}


def write_lightning(model, output: str, *, tokenizer_dir: str | None = None, source: dict | None = None,
                    seed: int = 0, cross_attention_freq: int = 2) -> str:
    """Writes the files of the module docstring into `output` (replaced atomically); returns it."""
    import torch

    from molbind_data.featurize.dictionaries import MOL_DICTIONARY, POCKET_DICTIONARY

    ref = to_reference(model, seed=seed, cross_attention_freq=cross_attention_freq)
    output = os.path.abspath(output)
    tmp = output + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    source = dict(source or {})
    ckpt = {
        "state_dict": {"model." + k: v for k, v in ref.state_dict().items()},
        "epoch": int(source.get("epoch", 0)),
        "global_step": int(source.get("step", 0)),
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "hyper_parameters": hyper_parameters(model.config, cross_attention_freq),
        "molbind_jax": {"config": json.dumps(model.config.to_dict()), "source": json.dumps(source, default=str)},
    }
    torch.save(ckpt, os.path.join(tmp, CKPT_NAME))
    torch.save(ref.graph_encoder.state_dict(), os.path.join(tmp, BACKBONE_NAME))
    for key, d in (("mol", MOL_DICTIONARY), ("pocket", POCKET_DICTIONARY)):
        with open(os.path.join(tmp, DICT_NAMES[key]), "w", encoding="utf-8") as f:
            f.write("".join(s + "\n" for s in d.symbols if s != "[MASK]"))
    if tokenizer_dir:
        from molbind_jax.modalities.text import TOKENIZER_FILES

        names = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(tokenizer_dir, n))]
        if "vocab.txt" not in names and "tokenizer.json" not in names:
            raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {tokenizer_dir}")
        os.makedirs(os.path.join(tmp, "tokenizer"))
        for n in names:
            shutil.copy2(os.path.join(tokenizer_dir, n), os.path.join(tmp, "tokenizer", n))
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    return output
