"""Uni-Mol LMDB reading: round trip, numpy-1 pickles, and malicious pickles that must not run."""
import os
import pickle

import lmdb
import numpy as np
import pytest

from molbind_data.lmdb_io import LmdbReader, UnsafePickleError, read_lmdb, safe_loads, write_lmdb


def _record(n=3):
    return {"atoms": ["C", "O", "H"][:n], "coordinates": [np.arange(n * 3, dtype=np.float32).reshape(n, 3)] * 2,
            "smi": "CO", "scalar": np.float64(0.5), "count": np.int64(n), "dtype": np.dtype("float32"),
            "nested": ({"a": [1, 2.5, True, None]},)}


def test_round_trip_single_file(tmp_path):
    path = str(tmp_path / "mols.lmdb")
    values = [_record(3), _record(2)] + [_record(1)] * 10
    assert write_lmdb(path, values) == 12
    assert os.path.isfile(path)  # subdir=False: one file, as Uni-Mol ships them
    with LmdbReader(path) as reader:
        assert len(reader) == 12
        assert reader.keys()[:3] == [b"0", b"1", b"10"]  # LMDB byte order
        got = reader.record(1)
        assert got["atoms"] == ["C", "O"] and got["coordinates"][0].dtype == np.float32
        np.testing.assert_array_equal(got["coordinates"][1], values[1]["coordinates"][1])
        assert reader[1]["smi"] == reader["1"]["smi"] == reader[b"1"]["smi"] == "CO"
        assert reader.get("99") is None
        with pytest.raises(KeyError):
            reader["99"]
    assert set(read_lmdb(path)) == {str(i) for i in range(12)}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_all_pickle_protocols(protocol):
    value = _record()
    got = safe_loads(pickle.dumps(value, protocol=protocol))
    assert got["scalar"] == 0.5 and got["dtype"] == np.dtype("float32") and got["nested"] == value["nested"]
    np.testing.assert_array_equal(got["coordinates"][0], value["coordinates"][0])


def test_numpy1_module_names_are_accepted():
    # pickles written by numpy 1.x (e.g. the released Uni-Mol LMDBs) name numpy.core.*
    data = pickle.dumps({"coordinates": [np.ones((2, 3), np.float32)]}, protocol=2)
    assert b"numpy._core.multiarray" in data
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    np.testing.assert_array_equal(safe_loads(old)["coordinates"][0], np.ones((2, 3)))


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


class _Plain:
    pass


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"atoms": ["C"], "coordinates": [_RunsCommand(marker)]})
    with pytest.raises(UnsafePickleError, match="system"):
        safe_loads(payload)
    assert not marker.exists()
    # sanity check that the payload is live: plain pickle would have run the command
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    # through an LMDB file, exactly as a downloaded dataset would deliver it
    path = str(tmp_path / "evil.lmdb")
    env = lmdb.open(path, subdir=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"0", payload)
    env.close()
    with LmdbReader(path) as reader, pytest.raises(UnsafePickleError):
        reader[0]
    assert not marker.exists()


@pytest.mark.parametrize("obj", [_Evals(), _Plain(), {"f": os.path.join}, {"c": print}])
def test_other_callables_and_classes_are_refused(obj):
    with pytest.raises(UnsafePickleError):
        safe_loads(pickle.dumps(obj))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="single files"):
        LmdbReader(str(tmp_path / "missing.lmdb"))
