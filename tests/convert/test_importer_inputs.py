"""What the importers are given: a MolBind Lightning `.ckpt` (hyper-parameters pickled as an
argparse.Namespace) read by every per-encoder importer through the shared safe loading, HF
`config.json` files checked at load (the file and the key named), and the convert command's
missing checkpoint as one error line."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from ckpt_fixtures import write_original
from molbind_jax.convert import bert, common, gin, unimol

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return write_original(tmp_path_factory.mktemp("orig"))


@pytest.mark.slow  # builds three encoders from the checkpoint
def test_every_importer_reads_a_ckpt_with_namespace_hyper_parameters(original):
    import torch

    raw = torch.load(original.ckpt, map_location="cpu", weights_only=False)
    assert type(raw["hyper_parameters"]).__name__ == "Namespace"  # as the original's Lightning saves
    with pytest.raises(pickle.UnpicklingError):  # what a bare weights_only load refuses
        torch.load(original.ckpt, map_location="cpu", weights_only=True)

    extras = {}
    state = common.load_state_dict(original.ckpt, subkey="state_dict", extras=extras)
    assert extras["hyper_parameters"].temperature == 0.1 and state

    text, rep = bert.load(original.ckpt, num_heads=original.text_heads)
    assert rep.used and text.config.num_heads == original.text_heads
    graph, rep = gin.load(original.ckpt, allow_missing_bn_stats=True)
    assert rep.used and any(k.startswith("model.Qformer.") for k in rep.ignored)
    conf, rep = unimol.load(original.ckpt, prefix="model.conf_encoder.")
    assert rep.used
    # The weights are the checkpoint's, not a fresh initialisation.
    key = "model.conf_encoder.embed_tokens.weight"
    assert np.array_equal(np.asarray(conf.embed_tokens.value)[1:], state[key][1:])


class Payload:
    """A class of the test module: a pickle that names it would import and rebuild it."""


def test_a_ckpt_with_other_pickled_objects_is_still_refused(tmp_path):
    import argparse

    import torch

    path = str(tmp_path / "evil.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": argparse.Namespace(p=Payload())}, path)
    with pytest.raises(common.CheckpointError, match="weights_only=True"):
        common.load_state_dict(path, subkey="state_dict")


def _hf_config(**changes):
    cfg = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 32, "max_position_embeddings": 64, "hidden_act": "gelu",
           "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1}
    cfg.update(changes)
    return cfg


def test_hf_config_with_a_string_number_names_the_key_and_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_hf_config(hidden_size="16", hidden_dropout_prob="0.1")))
    with pytest.raises(common.CheckpointError) as err:
        common.read_hf_config(str(tmp_path))
    msg = str(err.value)
    assert str(path) in msg and "hidden_size='16' (expected int)" in msg and "hidden_dropout_prob='0.1'" in msg
    path.write_text(json.dumps(_hf_config(num_hidden_layers=True)))
    with pytest.raises(common.CheckpointError, match="num_hidden_layers=True"):
        common.read_hf_config(str(path))
    path.write_text(json.dumps(_hf_config(layer_norm_eps=0)))  # an integer is a fine float
    assert common.read_hf_config(str(path))["layer_norm_eps"] == 0


def test_truncated_hf_config_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_hf_config())[:40])
    with pytest.raises(common.CheckpointError, match=f"{path} is not valid JSON .*truncated"):
        common.read_hf_config(str(path))


def test_bert_import_checks_the_config_next_to_the_weights(original, tmp_path):
    # bert.load reads the config.json beside a weights file: a bad one stops the import there.
    import shutil

    ckpt = tmp_path / "molbind.ckpt"
    shutil.copy(original.ckpt, ckpt)
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(num_attention_heads="four")))
    with pytest.raises(common.CheckpointError, match=r"config.json: wrong value type for num_attention_heads='four'"):
        bert.load(str(ckpt))


@pytest.mark.slow  # two launcher processes (imports only)
def test_cli_missing_paths_are_one_line_exit_2(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cases = [
        (["-m", "molbind_jax.training.train", f"--config={tmp_path}/nope.py", f"--workdir={tmp_path}/w"],
         f"--config: no such file: {tmp_path}/nope.py"),
        (["-m", "molbind_jax.convert.molbind", f"--checkpoint={tmp_path}/nope.ckpt", f"--output={tmp_path}/out"],
         f"--checkpoint {tmp_path}/nope.ckpt: no such file"),
    ]
    for args, expected in cases:
        r = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2, r.stderr[-2000:]
        assert len(lines) == 1 and expected in lines[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr
