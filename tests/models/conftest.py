"""Shared fixtures of the whole-model tests: a tiny MolBind `.ckpt` in the original layout and
inputs in the original's layout (the npz keys of `convert/compare_molbind.py`)."""
import pytest

from ckpt_fixtures import TINY, make_inputs, write_original  # noqa: E402,F401


@pytest.fixture(scope="session")
def original_ckpt(tmp_path_factory):
    return write_original(tmp_path_factory.mktemp("original"))


@pytest.fixture
def molbind_inputs():
    return make_inputs


@pytest.fixture
def write_original_ckpt():
    return write_original
