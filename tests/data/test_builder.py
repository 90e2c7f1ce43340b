"""The shared TFDS builder: tiny builds, skip counting, reports, reuse, the build command.

Most tests drive the builder with a small fake source module (written to tmp_path) so they
do not depend on the featurizers; the molbind_mini end-to-end build uses the real data with a
handful of records per pair type.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from molbind_data.molbind_pairs import builder as mb  # noqa: E402

FAKE_SOURCE = textwrap.dedent('''
    """A fake source: molecule i has the scaffold of ring size i % 3 + 4; some records are bad."""
    import numpy as np
    from molbind_data import featurize as fz

    SPLIT = {4: "train", 5: "validation", 6: "test"}

    def raw_records(pair, split, options):
        for i in range(int(options.get("n", 24))):
            ring = i % 3 + 4
            if SPLIT[ring] != split:
                continue
            kind = "bad" if i % 7 == 3 else "crash" if i % 11 == 5 else "good"
            yield f"fake/{i}", {"i": i, "kind": kind, "smiles": "C1" + "C" * (ring - 1) + "1" + "C" * i}
        if split == "train":
            yield "fake/0", {"i": 0, "kind": "good", "smiles": "C1CCC1"}  # a duplicate key

    def featurize(pair, raw, options):
        import multiprocessing, sys
        # the parent (TensorFlow loaded) featurizes each split up to its first example itself
        in_worker = multiprocessing.parent_process() is not None
        if options.get("check_no_tf") and in_worker and "tensorflow" in sys.modules:
            raise RuntimeError("a featurization worker loaded TensorFlow")
        if raw["kind"] == "bad":
            raise fz.SkipRecord(fz.INVALID_SMILES, raw["smiles"])
        if raw["kind"] == "crash":
            raise ValueError("boom")
        n = 3 + raw["i"] % 4
        return {"smiles": raw["smiles"],
                "graph_node_feat": np.full((n, 2), raw["i"], np.int32),
                "graph_edge_index": np.zeros((2, 2), np.int32),
                "graph_edge_feat": np.zeros((2, 2), np.int32),
                "conformer_tokens": np.arange(n + 2, dtype=np.int32),
                "conformer_coords": np.zeros((2, n + 2, 3), np.float32)}
''')


@pytest.fixture()
def fake_source(tmp_path, monkeypatch):
    (tmp_path / "fake_pairs_source.py").write_text(FAKE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fake_pairs_source"


def _expected(n=24):
    good, bad, crash = {}, 0, 0
    for i in range(n):
        split = {4: "train", 5: "validation", 6: "test"}[i % 3 + 4]
        if i % 7 == 3:
            bad += 1
        elif i % 11 == 5:
            crash += 1
        else:
            good.setdefault(split, set()).add(f"fake/{i}")
    return good, bad, crash


def _build(data_dir, source, workers=0, **options):
    b = mb.MolbindMini(config="graph_conformer", data_dir=str(data_dir),
                       source_options={"source_module": source, **options}, workers=workers)
    b.download_and_prepare()
    return b


def _ids(b, split):
    return {ex["id"].decode() for ex in tfds.as_numpy(b.as_dataset(split=split))}


def test_features_follow_design_layout():
    f = mb.features_for("conformer_pocket")
    assert set(f.keys()) == {"id", "smiles", "target", "conformer_tokens", "conformer_coords",
                             "pocket_tokens", "pocket_coords"}
    assert f["conformer_coords"].shape == (None, None, 3) and f["pocket_coords"].shape == (None, 3)
    g = mb.features_for("graph_text")
    assert g["graph_edge_index"].shape == (2, None) and g["text_ids"].np_dtype == np.int32


def test_featurized_counts_skips_and_keeps_good_records(fake_source):
    """The parallel engine alone (no TensorFlow), in process."""
    from molbind_data.molbind_pairs import parallel
    from molbind_data.build_report import BuildStats

    good, bad, crash = _expected()
    stats = BuildStats()
    source = __import__(fake_source)
    out = list(parallel.featurized(fake_source, "graph_conformer", {}, source.raw_records("graph_conformer", "train", {}),
                                   stats, workers=0))
    assert [k for k, _ in out] == sorted(good["train"], key=lambda k: int(k.split("/")[1]))  # order kept
    assert all(ex["id"] == k for k, ex in out)
    assert stats.written == len(good["train"]) and stats.read == stats.written + sum(stats.skipped.values())
    assert stats.skipped["duplicate"] == 1
    assert stats.skipped["invalid_smiles"] + stats.skipped["error:ValueError"] == stats.read - stats.written - 1


# Building through TFDS costs ~10 s of one-time TensorFlow start-up per process, so the tests
# that write shards are marked slow.
@pytest.mark.slow
def test_skips_counted_and_good_records_kept(tmp_path, fake_source):
    b = _build(tmp_path, fake_source)
    good, bad, crash = _expected()
    report = json.load(open(os.path.join(b.data_dir, "build_report.json")))
    assert set(report) >= {"read", "written", "skipped", "splits", "options", "dataset", "config",
                           "version", "wall_seconds"}
    assert report["skipped"] == {"duplicate": 1, "error:ValueError": crash, "invalid_smiles": bad}
    assert report["written"] == sum(len(v) for v in good.values())
    assert report["read"] == 24 + 1
    for split in ("train", "validation", "test"):
        assert _ids(b, split) == good[split], split
        s = report["splits"][split]
        assert s["read"] == s["written"] + sum(s["skipped"].values())
    ex = next(iter(tfds.as_numpy(b.as_dataset(split="test").take(1))))
    assert ex["conformer_coords"].shape[0] == 2 and ex["graph_edge_index"].shape == (2, 2)


@pytest.mark.slow
def test_rebuild_reuses_and_refuses_other_options(tmp_path, fake_source):
    first = _build(tmp_path, fake_source)
    before = open(first.report_path()).read()
    again = mb.MolbindMini(config="graph_conformer", data_dir=str(tmp_path),
                           source_options={"source_module": fake_source}, workers=0)
    assert again.is_prepared()
    again.download_and_prepare()
    assert again._stats == {}  # nothing was generated again
    assert open(again.report_path()).read() == before
    other = mb.MolbindMini(config="graph_conformer", data_dir=str(tmp_path),
                           source_options={"source_module": fake_source, "n": 30}, workers=0)
    with pytest.raises(ValueError, match="built with options"):
        other.download_and_prepare()


@pytest.mark.slow
def test_process_pool_counts_skips_in_parent(tmp_path, fake_source):
    b = _build(tmp_path, fake_source, workers=2, n=40, check_no_tf=True)
    good, bad, crash = _expected(40)
    report = b.read_report()
    assert report["skipped"] == {"duplicate": 1, "error:ValueError": crash, "invalid_smiles": bad}
    assert _ids(b, "train") == good["train"]


@pytest.mark.slow
def test_all_records_failing_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "broken_source.py").write_text(textwrap.dedent('''
        def raw_records(pair, split, options):
            yield f"{split}/0", {}
        def featurize(pair, raw, options):
            raise KeyError("smiles")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception, match="all 1 records failed"):
        _build(tmp_path / "out", "broken_source")


@pytest.mark.slow
def test_tiny_molbind_mini_end_to_end(tmp_path, monkeypatch):
    """Every pair type from the real data, a handful of records each; disjoint splits."""
    from molbind_data import build

    reports = build.build("mini", str(tmp_path), max_records=10, workers=0, verbose=False)
    assert set(reports) == set(mb.PAIRS)
    for pair, report in reports.items():
        assert report["written"] >= 3 and set(report["splits"]) == {"train", "validation", "test"}, pair
        b = mb.MolbindMini(config=pair, data_dir=str(tmp_path), source_options={"max_records": 10})
        assert set(mb.features_for(pair).keys()) == set(b.info.features.keys())
        key = "target" if pair == "conformer_pocket" else "smiles"
        values = {s: {ex[key] for ex in tfds.as_numpy(b.as_dataset(split=s))} for s in mb.SPLITS}
        assert not values["train"] & values["test"] and not values["train"] & values["validation"], pair
        assert b.info.metadata["licenses"] and b.info.metadata["pair"] == pair
        # the leakage audit (against the train splits of all four) confirms the scaffold split
        leak = report["leakage"]
        assert leak["against"] == sorted(mb.PAIRS), pair
        for split in ("validation", "test"):
            assert leak["molecules"][split]["in_train"] == 0 and leak["scaffolds"][split]["in_train"] == 0, pair
        assert leak["nearest_neighbour"]["test"]["queries_used"] >= 1, pair
    assert "texts" in reports["graph_text"]["leakage"] and "targets" in reports["conformer_pocket"]["leakage"]
    # auditing the existing build again (python -m molbind_data.leakage) gives the same sections
    from molbind_data.leakage import built

    directory = built.built_versions("molbind_mini", str(tmp_path))["graph_text"]
    fast = built.read_fields(directory)  # the shards parsed for three fields = TFDS's decoding
    assert fast["train"] == built._read_tfds(tfds.builder_from_directory(directory), "train", ["smiles", "text"])
    again = built.audit_dataset("molbind_mini", str(tmp_path), write=False)["sections"]
    monkeypatch.setattr(built, "audit_dataset", None)  # not called again: nothing was rebuilt
    kept = build.audit_leakage("molbind_mini", str(tmp_path), rebuilt=False, verbose=False)
    assert kept == {p: r["leakage"] for p, r in reports.items()}  # nothing rebuilt: the sections kept
    for pair, report in reports.items():
        drop = ("seconds", "read_seconds")
        assert {k: v for k, v in again[pair].items() if k not in drop} == \
            {k: v for k, v in report["leakage"].items() if k not in drop}, pair
    # ensure_built sees the finished build and builds nothing.
    assert build.ensure_built("molbind_mini", str(tmp_path)) == str(tmp_path)


@pytest.mark.slow
def test_tfds_build_command_builds_a_config(tmp_path):
    """TFDS's own `build` command (through tfds_build: the `tfds` script needs apache_beam)."""
    cmd = [sys.executable, "-m", "molbind_data.molbind_pairs.tfds_build", "molbind_mini", "--config=graph_conformer",
           f"--data_dir={tmp_path / 'tfds'}", "--max_examples_per_split=3"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
    built = tmp_path / "tfds" / "molbind_mini" / "graph_conformer" / str(mb.MolbindMini.VERSION)
    info = json.load(open(built / "dataset_info.json"))
    lengths = {s["name"]: int(s["shardLengths"][0]) for s in info["splits"]}
    assert lengths == {"train": 3, "validation": 3, "test": 3}
    assert (built / "build_report.json").exists()


def test_keys_that_tfds_would_merge_count_as_duplicates(fake_source):
    """TFDS hashes keys after rewriting backslashes to "/": such a clash is a counted duplicate."""
    from molbind_data.molbind_pairs import parallel
    from molbind_data.build_report import BuildStats

    raw = {"i": 1, "kind": "good", "smiles": "C/C=C\\C"}
    stats = BuildStats()
    out = list(parallel.featurized(fake_source, "graph_conformer", {}, [("m/C=C\\C", raw), ("m/C=C/C", raw)],
                                   stats, workers=0))
    assert [k for k, _ in out] == ["m/C=C\\C"] and stats.skipped == {"duplicate": 1} and stats.read == 2
