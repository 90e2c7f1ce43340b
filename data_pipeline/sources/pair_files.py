"""Reading users' pair files (data_pipeline/sources/pairs.py): CSV/TSV and JSON lines, one
record at a time, and the check of their columns.

Column names are matched case-insensitively with spaces and a UTF-8 BOM dropped. A header
that repeats a column or lacks one the pair type needs is refused up front
(`check_columns`). Records are decoded one by one, so one bad record is one counted skip:
bytes that are not UTF-8 (`not_utf8`), a CSV row with more fields than the header or a JSON
record repeating a key (`bad_row`), a line that is not a JSON object (`unreadable_file`).
Fields of any length are read.
"""
from __future__ import annotations

import csv
import json
import os
import re
from typing import Iterator

from molbind_data.cli import InputError
from molbind_data.featurize import UNREADABLE_FILE

# Skip reasons added here: a record with bytes that are not UTF-8; a row with more fields than
# the header, or a JSON record repeating a key.
NOT_UTF8 = "not_utf8"
BAD_ROW = "bad_row"

# Columns of each kind of file (names are matched case-insensitively, spaces and a UTF-8 BOM
# before the header ignored). Other columns are ignored.
MOLECULE_COLUMNS = {"graph_text": ("smiles", "text"), "conformer_text": ("smiles", "text"),
                    "graph_conformer": ("smiles",)}
POCKET_COLUMNS = ("ligand_sdf", "protein_pdb")
OPTIONAL_COLUMNS = ("id", "split", "target")
_JSON_EXTS = (".jsonl", ".ndjson", ".json")
_CSV_EXTS = (".csv", ".tsv", ".txt")
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)


class PairsFileError(InputError):
    """The pairs file cannot be read as a whole (its header); raised before anything is built."""


def required_columns(pair: str) -> tuple[str, ...]:
    return POCKET_COLUMNS if pair == "conformer_pocket" else MOLECULE_COLUMNS[pair]


def _column_name(name) -> str:
    return str(name or "").replace("\ufeff", "").strip().lower()


def _file_kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in _JSON_EXTS:
        return "json"
    if ext in _CSV_EXTS:
        return "csv"
    if ext == ".sdf":
        return "sdf"
    raise ValueError(f"unsupported pairs file {path!r}: use .csv, .tsv, .jsonl or .sdf")


def _open_csv(path: str):
    # utf-8-sig drops a BOM; surrogateescape keeps a non-UTF-8 byte as a lone surrogate, so that
    # one bad byte spoils only its own record (see _csv_rows), not the whole file.
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_reader(f, path: str):
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long texts are fields too
    return csv.reader(f, delimiter="\t" if path.lower().endswith(".tsv") else ",")


def _json_line(raw: bytes, i: int) -> dict:
    """One JSON-lines record as a dict of lower-cased keys, or {"__error__": (reason, detail)}."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return {"__error__": (NOT_UTF8, f"line {i + 1}: byte {raw[err.start:err.start + 1]!r} at "
                                        f"column {err.start + 1} is not UTF-8")}
    try:
        pairs_ = json.loads(line.lstrip("\ufeff"), object_pairs_hook=list)
    except json.JSONDecodeError:
        return {"__error__": (UNREADABLE_FILE, f"line {i + 1} is not JSON")}
    if not isinstance(pairs_, list):
        return {"__error__": (UNREADABLE_FILE, f"line {i + 1} is not a JSON object")}
    names = [_column_name(k) for k, _ in pairs_]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return {"__error__": (BAD_ROW, f"line {i + 1} repeats the key(s) {repeated}")}
    return {n: v for n, (_, v) in zip(names, pairs_)}


def columns(path: str) -> list[str] | None:
    """The column names of a CSV/TSV (its header) or JSON-lines file (the keys of its first
    object), as given; None for SDF and for a JSON-lines file without any object."""
    kind = _file_kind(path)
    if kind == "csv":
        with _open_csv(path) as f:
            return next(_csv_reader(f, path), [])
    if kind == "json":
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    try:
                        obj = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        continue
                    if isinstance(obj, dict):
                        return list(obj)
    return None


def check_columns(path: str, pair: str) -> None:
    """Refuse a file whose header repeats a column or lacks one the pair type needs (names
    compared case-insensitively, a BOM ignored), naming the columns found and expected.

    Raises FileNotFoundError / IsADirectoryError for a path that is not a file."""
    if not path:
        raise FileNotFoundError("no pairs input file given (--input / options['input'])")
    if os.path.isdir(path):
        raise IsADirectoryError(f"pairs input {path!r} is a directory, not a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pairs input file not found: {path!r}")
    found = columns(path)
    if found is None:
        return
    names = [_column_name(c) for c in found]
    shown = [_SURROGATE.sub("\ufffd", str(c)) for c in found]
    need = required_columns(pair)
    optional = OPTIONAL_COLUMNS if pair == "conformer_pocket" else OPTIONAL_COLUMNS[:2]
    expected = f"expected {', '.join(need)} (optional: {', '.join(optional)})"
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise PairsFileError(f"{path}: the header repeats the column(s) {repeated}; columns found: {shown}; "
                             f"{expected}")
    missing = [c for c in need if c not in names]
    if missing:
        what = "header" if _file_kind(path) == "csv" else "first record"
        raise PairsFileError(f"{path}: the {what} lacks the column(s) {missing} that {pair} needs; "
                             f"columns found: {shown}; {expected}")


def _csv_rows(path: str) -> Iterator[tuple[int, dict]]:
    with _open_csv(path) as f:
        reader = _csv_reader(f, path)
        header = [_column_name(c) for c in next(reader, [])]
        i = -1
        for fields in reader:
            if not fields:  # a blank line (csv.DictReader skips them too)
                continue
            i += 1
            row = dict(zip(header, fields + [""] * (len(header) - len(fields))))
            line = reader.line_num
            if len(fields) > len(header):
                row["__error__"] = (BAD_ROW, f"line {line} has {len(fields)} fields, the header "
                                             f"{len(header)} (quote fields holding a delimiter)")
            bad = [name for name, value in row.items() if isinstance(value, str) and _SURROGATE.search(value)]
            if bad:
                row = {k: _SURROGATE.sub("\ufffd", v) if isinstance(v, str) else v for k, v in row.items()}
                row["__error__"] = (NOT_UTF8, f"line {line}: bytes that are not UTF-8 in column(s) {bad}")
            yield i, row


def _rows(path: str) -> Iterator[tuple[int, dict]]:
    """(row number, dict of lower-cased column -> value) of a CSV/TSV or JSON-lines file.

    Decoding is per record: a record that is not UTF-8, not JSON, has more fields than the
    header or repeats a key carries `__error__` (reason, detail) and becomes a counted skip."""
    if _file_kind(path) == "json":
        with open(path, "rb") as f:
            for i, raw in enumerate(f):  # the line number is the default id, blank lines included
                if raw.strip():
                    yield i, _json_line(raw, i)
    elif _file_kind(path) == "csv":
        yield from _csv_rows(path)
    else:
        raise ValueError(f"unsupported pairs file {path!r}: use .csv, .tsv, .jsonl or .sdf")
