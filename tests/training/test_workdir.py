"""The config comparison of a run directory met again (molbind_jax/training/workdir.py)."""
from __future__ import annotations

import json

import pytest

from molbind_jax.cli import InputError
from molbind_jax.training import workdir
from smoke_configs import smoke_config


def _saved(tmp_path, cfg):
    (tmp_path / "config.json").write_text(json.dumps({"train": cfg.to_dict(), "model": {}}, default=str))


def test_same_or_safe_changes_continue(tmp_path):
    cfg = smoke_config()
    _saved(tmp_path, cfg)
    assert workdir.check_config(str(tmp_path), cfg.to_dict()) == {}
    cfg.total_steps = int(cfg.total_steps) + 10
    cfg.log_every = 7
    changes = workdir.check_config(str(tmp_path), cfg.to_dict())
    assert set(changes) == {"total_steps", "log_every"}
    assert changes["log_every"][1] == 7


def test_other_changes_are_refused_with_every_changed_key(tmp_path):
    cfg = smoke_config()
    _saved(tmp_path, cfg)
    cfg.lr.peak = 0.5
    cfg.model.overrides.embed_dim = 32
    cfg.pairs = ["graph_text"]
    cfg.total_steps = 99  # safe, and not in the refusal
    with pytest.raises(workdir.ConfigChangedError) as err:
        workdir.check_config(str(tmp_path), cfg.to_dict())
    msg = str(err.value)
    assert isinstance(err.value, InputError)
    assert "lr.peak: 0.001 -> 0.5" in msg and "model.overrides.embed_dim: 16 -> 32" in msg
    assert "pairs: [" in msg and "-> ['graph_text']" in msg and "total_steps" not in msg
    assert "--allow_config_change" in msg and "new --workdir" in msg
    # Allowed: the changes come back for the log (the restore still checks the shapes).
    assert "lr.peak" in workdir.check_config(str(tmp_path), cfg.to_dict(), allow_change=True)
    # No checkpoint yet: nothing to continue, nothing to compare.
    assert workdir.check_config(str(tmp_path), cfg.to_dict(), has_checkpoint=False) == {}


def test_a_key_only_one_side_has_and_an_unreadable_record(tmp_path):
    assert workdir.config_changes({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == {"a.c": ("<absent>", 2)}
    (tmp_path / "config.json").write_text('{"train": {"tot')
    with pytest.raises(InputError, match="config.json is not the launcher's config record"):
        workdir.check_config(str(tmp_path), {})


def test_a_run_saved_before_the_text_cache_keys(tmp_path):
    cfg = smoke_config()
    cfg.text_cache = "off"
    old = cfg.to_dict()
    for k in ("text_cache", "text_cache_dir", "text_cache_rebuild"):
        old.pop(k)
    (tmp_path / "config.json").write_text(json.dumps({"train": old, "model": {}}, default=str))
    assert workdir.check_config(str(tmp_path), cfg.to_dict()) == {}  # absent reads as "off"
    cfg.text_cache = "auto"  # another training path: refused
    with pytest.raises(workdir.ConfigChangedError, match="text_cache: 'off' -> 'auto'"):
        workdir.check_config(str(tmp_path), cfg.to_dict())
