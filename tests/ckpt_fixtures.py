"""Tiny original-layout MolBind checkpoints and inputs, shared by the model and tool tests.

`write_original(dir)` writes what the original leaves on disk, from the repository's PyTorch
reference of its whole `Model` (molbind_jax/torch_reference/molbind.py) with random weights:

  molbind.ckpt          {"state_dict": model.* keys, "hyper_parameters": Namespace}, saved as
                        the original's on_save_checkpoint does (no buffers: no GIN BatchNorm
                        statistics), Q-Former parts the text tower ignores included
  graph_pretrain.pth    the GIN backbone state dict (with the statistics)
  unimol_dict_*.txt     the Uni-Mol dictionaries in the built-in order

`write_tiny_checkpoint(dir)` adds a BERT WordPiece tokenizer whose ids fit the text tower and
returns the paths the tools take. The text tower's head count cannot be read from a state
dict: load with CKPT_CONFIG. `make_inputs` gives inputs in the original's layout (the npz
keys of convert/compare_molbind.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import types

import numpy as np

CKPT_CONFIG = {"bert": {"num_heads": 4}}
WORDS = ("a", "an", "the", "is", "of", "and", "acid", "ring", "molecule", "aromatic", "alcohol", "amine",
         "ester", "ketone", "salt", "water", "sugar", "drug", "toxic", "small", "large", "chain", "group",
         "compound", "with", "in", "it", "has", "one", "two", "carbon", "oxygen", "nitrogen", "sulfur",
         "benzene", "methyl", "ethyl", "##s", "##yl", "##ic", ".", ",", "-", "(", ")")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass
class TinyCheckpoint:
    ckpt: str
    gin_backbone: str
    tokenizer: str
    dictionaries: str
    modules: dict

    def load_kwargs(self) -> dict:
        """MolBindModel.load keywords for this checkpoint."""
        return dict(gin_backbone=self.gin_backbone, dictionaries=self.dictionaries, tokenizer=self.tokenizer,
                    ckpt_config=CKPT_CONFIG)

    def flags(self) -> list[str]:
        """The same as command-line flags of evaluate / embed / search / convert.molbind."""
        import json

        return [f"--checkpoint={self.ckpt}", f"--gin_backbone={self.gin_backbone}",
                f"--dictionaries={self.dictionaries}", f"--tokenizer={self.tokenizer}",
                f"--ckpt_config={json.dumps(CKPT_CONFIG)}"]


def write_tokenizer(directory: str) -> str:
    """A lower-casing BERT WordPiece tokenizer (vocab.txt + tokenizer_config.json)."""
    import json

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in SPECIALS + WORDS))
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}, f)
    return directory


def write_dictionaries(directory: str, mol_symbols=None) -> str:
    """The original's dictionary files (no [MASK]: appended when read), built-in order unless
    `mol_symbols` is given."""
    from molbind_data.featurize.dictionaries import MOL_SYMBOLS, POCKET_SYMBOLS

    os.makedirs(directory, exist_ok=True)
    for name, symbols in (("unimol_dict_mol.txt", mol_symbols or MOL_SYMBOLS), ("unimol_dict_pro.txt", POCKET_SYMBOLS)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write("".join(f"{s} 1\n" for s in symbols if s != "[MASK]"))
    return directory


# Tiny sizes of the original Model (torch_reference.molbind.MolBindModel keyword arguments).
# Three text layers, so that cross-attention sits on layers 0 and 2 (cross_attention_freq 2).
TINY = dict(
    gin=dict(num_layer=2, emb_dim=16),
    conformer=dict(encoder_layers=2, embed_dim=32, ffn_embed_dim=64, attention_heads=4, num_kernels=16),
    pocket=dict(encoder_layers=2, embed_dim=32, ffn_embed_dim=64, attention_heads=4, num_kernels=16),
    text=dict(vocab_size=64, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64,
              max_position_embeddings=64),
    embed_dim=12,
)

def random_atoms(batch, length, vocab, rng, dtype=np.int64):
    """Uni-Mol inputs: [CLS] random atoms [SEP] then padding, centred random coordinates."""
    tokens = np.zeros((batch, length), dtype)
    coords = np.zeros((batch, length, 3), np.float32)
    for i in range(batch):
        n = int(rng.integers(1, length - 1))
        tokens[i, :n + 2] = [1] + list(rng.integers(4, vocab - 1, n)) + [2]
        c = rng.normal(size=(n, 3)).astype(np.float32) * 1.5
        coords[i, 1:n + 1] = c - c.mean(0)
    return tokens, coords


def bert_inputs(lengths, length, vocab, seed=0):
    """HF BERT inputs: rows of the given lengths of random ids, zero-padded, with their mask."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), length), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, vocab, size=n)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def make_inputs(seed=0, batch=5, text_len=10, conf_len=13, pocket_len=21, text_vocab=64):
    """Random molecules in the original's layout: PyG graphs (chains, both bond directions),
    padded token ids, dataset items of [CLS] atoms [SEP] with centred coordinates."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(2, 7)) for _ in range(batch)]
    x = np.concatenate([np.stack([rng.integers(0, 118, n), rng.integers(0, 3, n)], 1) for n in sizes])
    edges, off = [], 0
    for n in sizes:
        for i in range(n - 1):
            edges += [(off + i, off + i + 1), (off + i + 1, off + i)]
        if n > 3:  # a ring closure
            edges += [(off, off + n - 1), (off + n - 1, off)]
        off += n
    edge_index = np.array(edges).T
    edge_attr = np.stack([rng.integers(0, 4, edge_index.shape[1]), rng.integers(0, 3, edge_index.shape[1])], 1)
    lens = rng.integers(2, text_len + 1, batch)
    mask = (np.arange(text_len)[None] < lens[:, None]).astype(np.int64)
    ids = rng.integers(5, text_vocab, (batch, text_len)) * mask

    ct, cc = random_atoms(batch, conf_len, 31, rng)
    pt, pc = random_atoms(batch, pocket_len, 10, rng)
    return dict(graph_x=x, graph_edge_index=edge_index, graph_edge_attr=edge_attr,
                graph_batch=np.repeat(np.arange(batch), sizes), text_input_ids=ids, text_attention_mask=mask,
                conformer_tokens=ct, conformer_coordinates=cc, pocket_tokens=pt, pocket_coordinates=pc)


def write_original(directory, sizes=None, seed=0):
    """Writes what the original leaves on disk: `molbind.ckpt` as its on_save_checkpoint saves
    it (no buffers), `graph_pretrain.pth` (the GIN with BatchNorm statistics) and the Uni-Mol
    dictionaries. Returns a namespace (ckpt, backbone, dictionaries, ref = the torch module)."""
    import argparse

    import torch

    from molbind_data.featurize.dictionaries import MOL_SYMBOLS, POCKET_SYMBOLS
    from molbind_jax.torch_reference.molbind import MolBindModel, randomize_, saved_state_dict

    ref = randomize_(MolBindModel(**(TINY if sizes is None else sizes)), seed=seed).eval()
    ckpt = directory / "molbind.ckpt"
    torch.save({"state_dict": saved_state_dict(ref), "epoch": 3,
                "hyper_parameters": argparse.Namespace(temperature=0.1)}, ckpt)
    backbone = directory / "graph_pretrain.pth"
    torch.save(ref.graph_encoder.state_dict(), backbone)
    # Uni-Mol's dict.txt style: "symbol count", no [MASK] (the original appends it).
    (directory / "unimol_dict_mol.txt").write_text("".join(f"{s} 1\n" for s in MOL_SYMBOLS[:-1]))
    (directory / "unimol_dict_pro.txt").write_text("".join(f"{s} 1\n" for s in POCKET_SYMBOLS[:-1]))
    return types.SimpleNamespace(ckpt=str(ckpt), backbone=str(backbone), dictionaries=str(directory), ref=ref,
                                 sizes=TINY if sizes is None else sizes,
                                 text_heads=ref.Qformer.bert.encoder.layer[0].attention.self.num_heads)


def write_tiny_checkpoint(directory) -> TinyCheckpoint:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    orig = write_original(directory)
    return TinyCheckpoint(ckpt=orig.ckpt, gin_backbone=orig.backbone,
                          tokenizer=write_tokenizer(str(directory / "tokenizer")),
                          dictionaries=write_dictionaries(str(directory / "dictionaries")),
                          modules={"ref": orig.ref})
