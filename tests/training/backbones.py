"""Tiny backbones in the original's file layouts, for the `config.init` tests.

  text       an HF BERT directory (transformers `BertModel.save_pretrained`, safetensors)
  graph      a Hu et al. GIN `.pth` (plain state dict, BatchNorm running statistics moved
             off their 0/1 defaults so that a dropped statistic shows)
  conformer  a Uni-Mol `.pt` {"model": state_dict, "args": None} with pre-training heads
  pocket     the same with the pocket vocabulary
  *_dictionary  Uni-Mol dict.txt files ("symbol count" lines, without [MASK])

Sizes fit `MolBindConfig.tiny()` (GIN 2 x 16, Uni-Mol 2 x 32, 4 heads, 16 kernels); the
text tower is sized from its config.json, so it is deliberately not the tiny preset's size.
"""
from __future__ import annotations

import os

HEAD_KEYS = ("lm_head.dense.weight", "dist_head.dense.weight", "pair2coord_proj.linear1.weight")
BERT_SIZES = dict(vocab_size=72, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                  intermediate_size=40, max_position_embeddings=48)


def write_bert_dir(path, seed=0) -> str:
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(**BERT_SIZES))
    model.save_pretrained(str(path), safe_serialization=True)
    return str(path)


def write_gin(path, *, emb_dim=16, num_layer=2, seed=0) -> str:
    import torch

    from molbind_jax.torch_reference.gin import GNN

    torch.manual_seed(seed)
    model = GNN(num_layer=num_layer, emb_dim=emb_dim)
    with torch.no_grad():
        for bn in model.batch_norms:
            bn.running_mean.uniform_(-1.0, 1.0)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    torch.save(model.state_dict(), str(path))
    return str(path)


def write_unimol(path, vocab_size, *, seed=0, embed_dim=32) -> str:
    import torch

    from molbind_jax.torch_reference.unimol import UniMolEncoder

    torch.manual_seed(seed)
    model = UniMolEncoder(vocab_size, encoder_layers=2, embed_dim=embed_dim, ffn_embed_dim=64,
                          attention_heads=4, num_kernels=16)
    state = dict(model.state_dict())
    state.update({k: torch.randn(4, 4) for k in HEAD_KEYS})
    torch.save({"model": state, "args": None}, str(path))
    return str(path)


def write_dictionary(path, symbols) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{s} {100 - i}\n" for i, s in enumerate(symbols) if s != "[MASK]")
    return str(path)


def write_all(folder) -> dict[str, str]:
    """Every backbone and dictionary under `folder`; returns the `config.init` values."""
    from molbind_data.featurize.dictionaries import MOL_SYMBOLS, POCKET_SYMBOLS

    folder = str(folder)
    return {
        "text": write_bert_dir(os.path.join(folder, "scibert")),
        "graph": write_gin(os.path.join(folder, "graph_pretrain.pth")),
        "conformer": write_unimol(os.path.join(folder, "mol_pretrain.pt"), len(MOL_SYMBOLS), seed=1),
        "pocket": write_unimol(os.path.join(folder, "protein_pretrain.pt"), len(POCKET_SYMBOLS), seed=2),
        "conformer_dictionary": write_dictionary(os.path.join(folder, "unimol_dict_mol.txt"), MOL_SYMBOLS),
        "pocket_dictionary": write_dictionary(os.path.join(folder, "unimol_dict_pro.txt"), POCKET_SYMBOLS),
    }
