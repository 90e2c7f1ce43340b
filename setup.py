"""Which packages install, and under which import names (the rest is in pyproject.toml).

The folder data_pipeline/ installs as `molbind_data`: a top-level `data_pipeline` would collide
with the unrelated `data-pipeline` package on PyPI. experiments/ and tests/ are not installed.
"""
from setuptools import find_packages, setup

_DATA = "data_pipeline"
packages = find_packages(include=["molbind_jax", "molbind_jax.*"])
packages += ["molbind_data" + name[len(_DATA):] for name in find_packages(include=[_DATA, _DATA + ".*"])]

setup(packages=packages, package_dir={"molbind_data": _DATA})
