"""The `experiments/configs/mini.py:smoke` config as the training tests use it (loaded by path,
as `--config=` does): tiny towers, synthetic pairs, 2 devices, no progress bar."""
from __future__ import annotations

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def smoke_config(**overrides):
    spec = importlib.util.spec_from_file_location("mini_cfg", os.path.join(REPO, "experiments/configs/mini.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("smoke")
    cfg.num_devices = 2
    cfg.progress_bar = False
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg
