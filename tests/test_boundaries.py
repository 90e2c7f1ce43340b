"""The import boundaries the README promises, checked in fresh interpreters.

* the data side (data_pipeline, imported as molbind_data) imports no JAX;
* the towers (molbind_jax/models) and the modality table's runtime specs import no TensorFlow
  and no torch;
* the base install needs no torch: training, evaluation, embedding and search import none,
  and (slow) a smoke training run and an embedding run with torch made unimportable.
"""
import os
import pkgutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(package: str, folder: str, skip=()) -> list[str]:
    out = [package]
    for info in pkgutil.walk_packages([os.path.join(ROOT, folder)], prefix=package + "."):
        if not any(info.name.startswith(s) for s in skip):
            out.append(info.name)
    return out


def _run(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _imports_without(modules: list[str], forbidden: tuple[str, ...]) -> None:
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {forbidden!r})\n"
            "print('LOADED', ' '.join(sorted({b.split('.')[0] for b in bad})))\n")
    out = _run(code)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = out.stdout.strip().split("LOADED", 1)[1].split()
    assert loaded == [], f"{forbidden} imported by {modules}: {loaded}"


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_data_side_imports_no_jax():
    mods = _modules("molbind_data", "data_pipeline")
    assert "molbind_data.molbind_pairs.builder" in mods and "molbind_data.schema" in mods
    _imports_without(mods, ("jax", "jaxlib", "flax"))


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_towers_and_specs_import_no_tensorflow_or_torch():
    mods = _modules("molbind_jax.models", "molbind_jax/models") + _modules("molbind_jax.modalities",
                                                                           "molbind_jax/modalities")
    assert "molbind_jax.models.unimol" in mods and "molbind_jax.modalities.smiles" in mods
    _imports_without(mods, ("tensorflow", "torch", "tensorflow_datasets"))


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_base_install_paths_import_no_torch():
    mods = (_modules("molbind_jax.training", "molbind_jax/training")
            + _modules("molbind_jax.evaluation", "molbind_jax/evaluation")
            + _modules("molbind_jax.inference", "molbind_jax/inference")
            + _modules("molbind_jax.data", "molbind_jax/data"))
    _imports_without(mods, ("torch", "torch_geometric"))


@pytest.mark.slow  # trains 2 smoke steps of one pair type, exports, embeds (compiles the tiny towers)
def test_smoke_training_and_embedding_run_with_torch_unimportable(tmp_path):
    work = str(tmp_path / "run")
    code = f"""
import sys
sys.modules['torch'] = None          # any `import torch` now raises ImportError
sys.modules['torch_geometric'] = None
import importlib.util
spec = importlib.util.spec_from_file_location('mini_cfg', 'experiments/configs/mini.py')
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
cfg = mod.get_config('smoke')
cfg.total_steps, cfg.eval_every, cfg.checkpoint_every, cfg.log_every = 2, 2, 2, 1
cfg.num_devices, cfg.progress_bar = 1, False
cfg.pairs = ('graph_text',)  # one program to compile: the point is which modules load
from molbind_jax.training import export, train
train.train_and_evaluate(cfg, {work!r})
out = export.export_run({work!r})
from molbind_jax.inference.api import MolBindModel
mb = MolBindModel.load(out)
emb = mb.embed_smiles(['CCO', 'c1ccccc1O'])
assert emb.vectors.shape[0] == 2 and not emb.failures, emb.failures
print('OK', sorted(k for k in sys.modules if k.startswith('torch') and sys.modules[k] is not None))
"""
    out = _run(code, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().splitlines()[-1] == "OK []"
