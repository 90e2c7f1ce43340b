"""Training configs as the tests use them, loaded by path as `--config=` does:
`smoke_config` is `experiments/configs/mini.py:smoke` (tiny towers, synthetic pairs, 2 devices,
no progress bar); `m4_config` is `experiments/configs/m4.py[:variant]`."""
from __future__ import annotations

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name: str, variant: str | None = None):
    spec = importlib.util.spec_from_file_location(f"{name}_cfg", os.path.join(REPO, f"experiments/configs/{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


def smoke_config(**overrides):
    cfg = load_config("mini", "smoke")
    cfg.num_devices = 2
    cfg.progress_bar = False
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def m4_config(variant: str | None = None):
    return load_config("m4", variant)
