"""Users' pair files as users write them: header case, a BOM, bytes that are not UTF-8, very
long fields, repeated or missing columns, header-only files, splits left empty (issues found
by users; each test pins the rows kept, the skips and the report counts)."""
import json
import os
import subprocess
import sys

import pytest

from molbind_data.sources import pairs
from test_pairs import _every_split as _records_of_every_split

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS = [("CCO", "Ethanol is a primary alcohol."), ("c1ccccc1", "Benzene is an aromatic hydrocarbon."),
        ("CCN", "Ethylamine is a primary amine."), ("CCCC", "Butane is an alkane.")]


def _every_split(pair, path, **options):
    return _records_of_every_split(pair, {"input": str(path), **options})


def _csv(path, header, rows, encoding="utf-8"):
    path.write_bytes((header + "\n" + "".join(f'{s},"{t}"\n' for s, t in rows)).encode(encoding))
    return path


def _texts(out):
    return {k: v["text"].strip() for k, v in out.items()}


@pytest.mark.parametrize("header, encoding", [("SMILES,TEXT", "utf-8"), ("Smiles , Text", "utf-8"),
                                              ("smiles,text", "utf-8-sig"), ("SMILES,Text", "utf-8-sig")])
def test_header_case_and_bom_are_understood(tmp_path, header, encoding):
    plain = _every_split("graph_text", _csv(tmp_path / "plain.csv", "smiles,text", ROWS))
    other = _every_split("graph_text", _csv(tmp_path / "other.csv", header, ROWS, encoding))
    assert _texts(other[0]) == {f"pairs/other.csv/{i}": t for i, (_, t) in enumerate(ROWS)}
    assert other[1] == {} and list(other[2].values()) == list(plain[2].values())
    assert [v["smiles"] for v in other[0].values()] == [v["smiles"] for v in plain[0].values()]


def test_a_byte_that_is_not_utf8_skips_only_its_record(tmp_path):
    csv_path = tmp_path / "latin.csv"
    csv_path.write_bytes(b"smiles,text\nCCO,Ethanol\nCCN,caf\xe9 au lait\nCCCC,Butane\n")
    out, skipped, where = _every_split("graph_text", csv_path)
    assert skipped == {"pairs/latin.csv/1": pairs.NOT_UTF8}
    assert _texts(out) == {"pairs/latin.csv/0": "Ethanol", "pairs/latin.csv/2": "Butane"}
    assert out["pairs/latin.csv/2"]["smiles"] == "CCCC" and len(where) == 3
    jsonl = tmp_path / "latin.jsonl"
    jsonl.write_bytes(b'{"smiles": "CCO", "text": "Ethanol"}\n{"smiles": "CCN", "text": "caf\xe9"}\n'
                      b'not json\n{"SMILES": "CCCC", "Text": "Butane"}\n')
    out, skipped, _ = _every_split("graph_text", jsonl)
    assert skipped == {"pairs/latin.jsonl/1": pairs.NOT_UTF8, "pairs/latin.jsonl/2": "unreadable_file"}
    assert _texts(out) == {"pairs/latin.jsonl/0": "Ethanol", "pairs/latin.jsonl/3": "Butane"}
    # a bad byte in the header leaves the column unknown: refused, naming what was found
    bad_header = tmp_path / "bad_header.csv"
    bad_header.write_bytes(b"smiles,t\xe9xt\nCCO,Ethanol\n")
    with pytest.raises(pairs.PairsFileError, match=r"lacks the column\(s\) \['text'\].*'t\ufffdxt'"):
        list(pairs.raw_records("graph_text", "train", {"input": str(bad_header)}))


def test_fields_longer_than_the_csv_default_limit_are_read(tmp_path):
    long_text = "Long text. " * 20_000  # 220,000 characters > csv's 131,072 default
    path = tmp_path / "long.csv"
    path.write_text(f'smiles,text\nCCO,"{long_text}"\nCCN,Ethylamine\n')
    out, skipped, _ = _every_split("graph_text", path, max_text_tokens=16)
    assert skipped == {}
    assert out["pairs/long.csv/0"]["text"].startswith("Long text. Long") and len(out["pairs/long.csv/0"]["text"]) > 200_000
    assert len(out["pairs/long.csv/0"]["text_ids"]) == 16  # truncated when tokenized, not when read
    assert out["pairs/long.csv/1"]["smiles"] == "CCN" and out["pairs/long.csv/1"]["text"].strip() == "Ethylamine"


def test_a_row_with_more_fields_than_the_header_is_a_counted_skip(tmp_path):
    path = tmp_path / "commas.csv"
    path.write_text("smiles,text\nCCO,Ethanol, an alcohol\nCCN,Ethylamine\n")
    out, skipped, _ = _every_split("graph_text", path)
    assert skipped == {"pairs/commas.csv/0": pairs.BAD_ROW}
    assert _texts(out) == {"pairs/commas.csv/1": "Ethylamine"}


@pytest.mark.parametrize("header, pair, message", [
    ("smiles,text,smiles", "graph_text",
     r"repeats the column\(s\) \['smiles'\]; columns found: \['smiles', 'text', 'smiles'\]; expected smiles, text"),
    ("SMILES,Text,text", "graph_text", r"repeats the column\(s\) \['text'\]"),
    ("SMILES,Description", "graph_text",
     r"lacks the column\(s\) \['text'\] that graph_text needs; columns found: \['SMILES', 'Description'\]; "
     r"expected smiles, text \(optional: id, split\)"),
    ("ligand,protein", "conformer_pocket", r"lacks the column\(s\) \['ligand_sdf', 'protein_pdb'\]"),
])
def test_repeated_or_missing_columns_are_refused(tmp_path, header, pair, message):
    path = tmp_path / "cols.csv"
    path.write_text(header + "\nCCO,Ethanol,CCN\n")
    with pytest.raises(pairs.PairsFileError, match=message):
        pairs.check_columns(str(path), pair)
    with pytest.raises(pairs.PairsFileError, match=message):  # the source refuses too, before any record
        next(pairs.raw_records(pair, "train", {"input": str(path)}))


def test_columns_a_pair_type_does_not_need_are_ignored(tmp_path):
    path = tmp_path / "described.csv"
    path.write_text("SMILES,Description\nCCO,Ethanol\n")
    pairs.check_columns(str(path), "graph_conformer")  # graph_conformer reads the SMILES only
    jsonl = tmp_path / "keys.jsonl"
    jsonl.write_text('{"smiles": "CCO", "description": "x"}\n')
    with pytest.raises(pairs.PairsFileError, match=r"first record lacks the column\(s\) \['text'\]"):
        pairs.check_columns(str(jsonl), "graph_text")


def test_paths_that_are_not_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        pairs.check_columns(str(tmp_path / "nope.csv"), "graph_text")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        pairs.check_columns(str(tmp_path), "graph_text")


# ----------------------------------------------------------------------------- whole builds

def _report(data_dir, pair="graph_text"):
    with open(os.path.join(data_dir, "molbind_pairs", pair, "1.3.0", "build_report.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_a_split_whose_records_are_all_skipped_is_reported_and_the_others_built(tmp_path):
    """BOM + `SMILES,TEXT` header; the one validation row (pyridine's scaffold hashes there) has
    no text, no row hashes to test, one train row has a Latin-1 byte, one a 200k-character text."""
    import tensorflow_datasets as tfds

    from molbind_data import build

    long_text = "Butane. " * 25_000
    path = tmp_path / "mine.csv"
    path.write_bytes("\ufeffSMILES,TEXT\nCCO,Ethanol\nc1ccccc1,Benzene\nc1ccncc1,\n".encode()
                     + b"CCN,caf\xe9\n" + f'CCCC,"{long_text}"\n'.encode())
    assert pairs.hash_split(pairs.scaffold_key("c1ccncc1")) == "validation"
    data_dir = str(tmp_path / "tfds")
    reports = build.build("pairs", data_dir, "graph_text", input_path=str(path), workers=0, verbose=False)
    report = _report(data_dir)
    assert reports["graph_text"] == report
    assert (report["read"], report["written"], report["skipped"]) == (5, 3, {"empty_text": 1, "not_utf8": 1})
    assert report["splits"] == {
        "train": {"read": 4, "written": 3, "skipped": {"not_utf8": 1}},
        "validation": {"read": 1, "written": 0, "skipped": {"empty_text": 1}},
        "test": {"read": 0, "written": 0, "skipped": {}}}
    assert report["empty_splits"] == {"validation": "all 1 records skipped (empty_text 1)", "test": "no records"}
    leak = report["leakage"]  # only a train split: its repeated texts, nothing to compare with
    assert leak["against"] == ["graph_text"] and leak["molecules"] == {} and "nearest_neighbour" not in leak
    assert leak["texts"]["train_duplicates"]["repeated_texts"] == 0 and leak["records"]["train"]["distinct"] == 3
    b = tfds.builder("molbind_pairs/graph_text", data_dir=data_dir)
    assert set(b.info.splits) == {"train"}
    stored = {ex["id"].decode(): (ex["smiles"].decode(), ex["text"].decode().strip())
              for ex in tfds.as_numpy(b.as_dataset(split="train"))}
    assert stored == {"pairs/mine.csv/0": ("CCO", "Ethanol"), "pairs/mine.csv/1": ("c1ccccc1", "Benzene"),
                      "pairs/mine.csv/4": ("CCCC", long_text.strip())}


@pytest.mark.slow
def test_a_header_only_file_gives_a_report_with_zero_records(tmp_path):
    from molbind_data import build

    path = tmp_path / "empty.csv"
    path.write_text("smiles,text\n")
    data_dir = str(tmp_path / "tfds")
    reports = build.build("pairs", data_dir, "graph_text", input_path=str(path), workers=0, verbose=False)
    report = _report(data_dir)
    assert reports["graph_text"] == report
    assert (report["read"], report["written"], report["skipped"]) == (0, 0, {})
    assert report["empty_splits"] == {s: "no records" for s in pairs.SPLITS}
    assert report["leakage"]["against"] == ["graph_text"] and report["leakage"]["molecules"] == {}


def _build_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(REPO, ".pyshim"), REPO,
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "molbind_data.build", "--source=pairs", "--workers=0",
                           f"--data_dir={cwd}/tfds", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_build_command_prints_user_mistakes_as_one_line(tmp_path):
    (tmp_path / "described.csv").write_text("SMILES,Description\nCCO,Ethanol\n")
    (tmp_path / "twice.csv").write_text("smiles,text,Text\nCCO,Ethanol,x\n")
    cases = [(["--input=nope.csv", "--pair=graph_text"], "pairs input file not found: 'nope.csv'"),
             ([f"--input={tmp_path}", "--pair=graph_text"], "is a directory, not a file"),
             (["--input=described.csv", "--pair=graph_text"],
              "lacks the column(s) ['text'] that graph_text needs; columns found: ['SMILES', 'Description']"),
             (["--input=twice.csv", "--pair=graph_text"], "repeats the column(s) ['text']"),
             (["--input=twice.csv"], "--source=pairs needs --pair")]
    for args, needle in cases:
        res = _build_cli(*args, cwd=tmp_path)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 2, (args, res.stderr[-2000:])
        assert lines == [lines[-1]] and lines[-1].startswith("error: ") and needle in lines[-1], (args, lines)
        assert not (tmp_path / "tfds").exists()  # refused before anything is written


@pytest.mark.slow
def test_build_command_is_quiet_and_prints_the_report(tmp_path):
    (tmp_path / "one.csv").write_text("smiles,text\nCCO,Ethanol\n")
    res = _build_cli("--input=one.csv", "--pair=graph_text", "--noleakage", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "leakage" not in res.stdout and "leakage" not in _report(str(tmp_path / "tfds"))
    assert "oneDNN" not in res.stderr and "cpu_feature_guard" not in res.stderr
    summary = json.loads(res.stdout[res.stdout.index("\n{") + 1:])
    assert summary["graph_text"]["read"] == 1 and summary["graph_text"]["written"] == 1
    assert summary["graph_text"]["empty_splits"] == {"validation": "no records", "test": "no records"}
