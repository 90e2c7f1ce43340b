"""A tiny original-layout MolBind Lightning `.ckpt` and the files that go with it, for tests.

`write_tiny_checkpoint(dir)` writes, from torch modules (the repo's reference GIN and Uni-Mol,
transformers' BertModel):

  molbind.ckpt          {"state_dict": model.* keys, "hyper_parameters": Namespace}: the
                        original's layout, without the GIN BatchNorm statistics (its save quirk)
                        and with Q-Former parts the text tower ignores
  graph_pretrain.pth    the GIN backbone state dict (with the statistics)
  tokenizer/            a BERT WordPiece vocabulary of < 64 tokens (the text tower's rows)
  dictionaries/         unimol_dict_mol.txt, unimol_dict_pro.txt in the built-in order

Sizes: GIN 2 x 16, BERT 2 x 32 (4 heads, 64 positions), Uni-Mol 2 x 32 (4 heads), embeddings
12. The text tower's heads cannot be read from a state dict: load with CKPT_CONFIG.

The module builder follows `tests/models/test_molbind.py::_torch_molbind_checkpoint` (the
importer's parity test); it is kept here, outside that file, so that tools tests can import it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

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
    from data_pipeline.featurize.dictionaries import MOL_SYMBOLS, POCKET_SYMBOLS

    os.makedirs(directory, exist_ok=True)
    for name, symbols in (("unimol_dict_mol.txt", mol_symbols or MOL_SYMBOLS), ("unimol_dict_pro.txt", POCKET_SYMBOLS)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write("".join(f"{s} 1\n" for s in symbols if s != "[MASK]"))
    return directory


def write_tiny_checkpoint(directory) -> TinyCheckpoint:
    import torch
    import transformers

    from molbind_jax.torch_reference.gin import GNN
    from molbind_jax.torch_reference.unimol import UniMolEncoder as TorchUniMol

    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(0)
    gnn = GNN(num_layer=2, emb_dim=16)
    for bn in gnn.batch_norms:  # non-trivial statistics, so that their source matters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), add_pooling_layer=False)
    conf = TorchUniMol(31, 2, 32, 64, 4, 16)
    pocket = TorchUniMol(10, 2, 32, 64, 4, 16)
    heads = {
        "ln_graph": torch.nn.LayerNorm(16), "graph_proj": torch.nn.Linear(16, 12),
        "text_proj": torch.nn.Linear(32, 12),
        "ln_conf": torch.nn.LayerNorm(32), "conf_proj": torch.nn.Linear(32, 12),
        "ln_pro": torch.nn.LayerNorm(32), "pro_proj": torch.nn.Linear(32, 12),
    }
    for m in (gnn, bert, conf, pocket, *heads.values()):
        m.eval()
    sd = {}
    for k, v in gnn.state_dict().items():
        if "running_" not in k and "num_batches_tracked" not in k:  # the original's save quirk
            sd["model.graph_encoder." + k] = v
    for k, v in bert.state_dict().items():
        if "token_type" not in k and "position_ids" not in k:  # no token types in the original
            sd["model.Qformer.bert." + k] = v
    sd["model.Qformer.bert.encoder.layer.0.crossattention.self.query.weight"] = torch.zeros(32, 32)
    sd["model.Qformer.cls.predictions.bias"] = torch.zeros(64)
    sd.update({"model.conf_encoder." + k: v for k, v in conf.state_dict().items()})
    sd.update({"model.pro_encoder." + k: v for k, v in pocket.state_dict().items()})
    for name, m in heads.items():
        sd.update({f"model.{name}.{k}": v for k, v in m.state_dict().items()})
    ckpt = os.path.join(directory, "molbind.ckpt")
    torch.save({"state_dict": sd, "epoch": 3, "hyper_parameters": argparse.Namespace(temperature=0.1)}, ckpt)
    backbone = os.path.join(directory, "graph_pretrain.pth")
    torch.save(gnn.state_dict(), backbone)
    return TinyCheckpoint(ckpt=ckpt, gin_backbone=backbone, tokenizer=write_tokenizer(os.path.join(directory, "tokenizer")),
                          dictionaries=write_dictionaries(os.path.join(directory, "dictionaries")),
                          modules=dict(gnn=gnn, bert=bert, conf=conf, pocket=pocket, **heads))
