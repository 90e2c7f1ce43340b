"""Uni-Mol-style LMDB files: read safely, write for tests and conversions.

Uni-Mol and MolBind store one pickled dict per key (`str(index)` in ascii) in a single-file
LMDB (`subdir=False`). Pickles run code when loaded, and these files come from the internet,
so values are unpickled with `SafeUnpickler`: only numpy arrays, numpy dtypes/scalars and
plain builtin values may appear. Anything else (os.system, subprocess, eval, arbitrary
classes) raises `UnsafePickleError` before a single object is built, so nothing runs.
"""
from __future__ import annotations

import io
import os
import pickle

import lmdb
import numpy as np

# The numpy internals a pickled ndarray / scalar / dtype refers to. numpy >= 2 writes
# `numpy._core.*`, numpy 1.x wrote `numpy.core.*`: both names resolve to the numpy 2 objects.
_NUMPY_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
}
_BUILTINS_ALLOWED = {"list", "dict", "tuple", "str", "int", "float", "bool", "bytes", "set",
                     "frozenset", "complex", "bytearray"}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referred to a callable or class outside the allow-list."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array machinery and builtin containers."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_ALLOWED:
            return _NUMPY_ALLOWED[(module, name)]
        if module == "builtins" and name in _BUILTINS_ALLOWED:
            return getattr(__import__("builtins"), name)
        if module == "_codecs" and name == "encode":
            # protocol-2 pickles store bytes as _codecs.encode(str, 'latin1'): pure data
            import _codecs
            return _codecs.encode
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            # numpy 2 may pickle dtype classes by name (e.g. numpy.dtypes.Float32DType)
            import numpy.dtypes as dtypes
            cls = getattr(dtypes, name, None)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                return cls
        raise UnsafePickleError(
            f"refusing to unpickle {module}.{name}: only numpy arrays/dtypes and builtin "
            "containers (list, dict, tuple, str, int, float, ...) are allowed in LMDB values")


def safe_loads(data: bytes):
    """`pickle.loads` restricted to numpy arrays and builtin containers."""
    return SafeUnpickler(io.BytesIO(data)).load()


def _key(key) -> bytes:
    if isinstance(key, bytes):
        return key
    return str(key).encode("ascii")


class LmdbReader:
    """Read-only view of a single-file LMDB whose values are pickles.

    `reader[3]`, `reader["3"]` and `reader[b"3"]` are the same record. `keys()` are in the
    LMDB's byte order (for keys "0".."10" that is "0", "1", "10", "2", ...); Uni-Mol datasets
    index by position i -> key str(i), which `record(i)` does.
    """

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"LMDB file not found (Uni-Mol LMDBs are single files): {path}")
        self.path = path
        self._env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=False,
                              meminit=False, max_readers=256)
        with self._env.begin() as txn:
            self._keys = list(txn.cursor().iternext(values=False))

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[bytes]:
        return list(self._keys)

    def raw(self, key) -> bytes | None:
        with self._env.begin() as txn:
            return txn.get(_key(key))

    def __getitem__(self, key):
        data = self.raw(key)
        if data is None:
            raise KeyError(f"{self.path}: no key {key!r}")
        return safe_loads(data)

    def get(self, key, default=None):
        data = self.raw(key)
        return default if data is None else safe_loads(data)

    def record(self, index: int):
        """The record at position `index` in Uni-Mol's convention (key str(index))."""
        return self[str(int(index))]

    def items(self):
        """(key bytes, value) in byte order of the keys."""
        for k in self._keys:
            yield k, self[k]

    def close(self) -> None:
        self._env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_lmdb(path: str) -> dict:
    """All records of a small LMDB as {key str: value} (tests, inspection)."""
    with LmdbReader(path) as reader:
        return {k.decode("ascii", "replace"): v for k, v in reader.items()}


def write_lmdb(path: str, records, map_size: int = 1 << 30, protocol: int = pickle.HIGHEST_PROTOCOL) -> int:
    """Write `records` ((key, value) pairs or a list whose position is the key) as a
    single-file LMDB of pickles, the layout Uni-Mol and MolBind read. Returns the count."""
    if isinstance(records, dict):
        records = records.items()
    elif isinstance(records, (list, tuple)) and records and not isinstance(records[0], tuple):
        records = enumerate(records)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    env = lmdb.open(path, subdir=False, readonly=False, lock=False, map_size=map_size)
    n = 0
    try:
        with env.begin(write=True) as txn:
            for key, value in records:
                txn.put(_key(key), pickle.dumps(value, protocol=protocol))
                n += 1
    finally:
        env.close()
    return n
