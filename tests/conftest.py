"""Shared test setup.

Tests run on the CPU. Eight host devices are simulated so that sharding tests can run in the
same process as everything else; single-device tests simply use `jax.devices()[:1]`.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import pytest  # noqa: E402

from ckpt_fixtures import make_inputs, write_original  # noqa: E402


@pytest.fixture(scope="session")
def original_ckpt(tmp_path_factory):
    """A tiny original-layout MolBind .ckpt with its GIN backbone and dictionaries."""
    return write_original(tmp_path_factory.mktemp("original"))


@pytest.fixture
def molbind_inputs():
    """make_inputs: random inputs in the original's layout (convert/compare_molbind.py npz keys)."""
    return make_inputs


@pytest.fixture
def write_original_ckpt():
    return write_original
