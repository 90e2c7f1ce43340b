"""Input readers of the inference API: what `MolBindModel.encode` and `molbind-embed` take,
turned into one aligned list of records with ids.

Every reader returns an `Inputs`: `items[i]` is record i (a string, an RDKit molecule, a
(ligand, protein) pair), `ids[i]` its id, and a record that cannot even be read (an
undecodable line, an SDF record missing its terminator) is a `SkipRecord` in `items`, which
the featurizer re-raises, so it becomes a NaN row with a failure entry like any other bad
record. Nothing is dropped or merged: row i of the output is always record i.

Ids: the id column (`id_column`) of a table, the name after the SMILES of a `.smi` line, the
SDF `_Name` (or `id_property`), the index labels of a pandas Series; otherwise, and where
that value is empty, the 0-based record index.

Files are read per line (bytes split at b"\\n", each line decoded as UTF-8): a line that is
not UTF-8 fails alone ("undecodable_line") and every other line keeps its place. A table
(CSV/TSV) is therefore one record per line (no quoted multi-line fields).
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import os
import re
from typing import Any, Iterator, Sequence

from molbind_jax.cli import InputError

UNDECODABLE_LINE = "undecodable_line"
SDF_MISSING_TERMINATOR = "sdf_missing_terminator"
MISSING_VALUE = "missing_value"
# A plain SMILES file whose first line's first field is one of these (any case) has a header.
SMILES_HEADERS = ("smiles", "smi", "canonical_smiles", "isomeric_smiles", "smiles_string")
TEXT_HEADERS = ("text", "description", "caption")
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_COUNTS_LINE = re.compile(r"^\s*\d+\s+\d+.*V[23]000\s*$")


@dataclasses.dataclass
class Inputs:
    """Records aligned with their ids; a failed read is a SkipRecord in `items`."""
    items: list
    ids: list[str]

    def __len__(self) -> int:
        return len(self.items)


def _skip(reason: str, detail: str):
    from molbind_data.featurize import SkipRecord
    return SkipRecord(reason, detail)


def _open_binary(path: str):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def decoded_lines(path: str) -> Iterator[tuple[int, str | Exception]]:
    """(line number from 1, text or SkipRecord(undecodable_line)) of every line; a final
    newline starts no line; a UTF-8 byte order mark is dropped; gzip read transparently."""
    with _open_binary(path) as f:
        n = 0
        for n, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield n, _skip(UNDECODABLE_LINE, f"{path} line {n}: not UTF-8 ({err.reason} at byte {err.start})")


def _suffix(path: str) -> str:
    p = path.lower()
    if p.endswith(".gz"):
        p = p[:-3]
    return os.path.splitext(p)[1]


def is_table(path: str, delimiter: str | None = None) -> bool:
    return delimiter is not None or _suffix(path) in TABLE_DELIMITERS


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    return next(csv.reader([line], delimiter=delimiter))


def _pick(header: list[str], wanted: str | None, defaults: Sequence[str], what: str, path: str,
          required: bool = True) -> int | None:
    """Column index of `wanted` (exact), else of the first default (any case), else the only
    column; InputError naming the column and the columns present."""
    if wanted is not None:
        if wanted not in header:
            raise InputError(f"{path}: no column {wanted!r} ({what}); the columns are {header}")
        return header.index(wanted)
    lower = [h.strip().lower() for h in header]
    for d in defaults:
        if d in lower:
            return lower.index(d)
    if not required:
        return None
    if len(header) == 1:
        return 0
    raise InputError(f"{path}: which column holds the {what}? none is named {' / '.join(defaults)}; "
                     f"the columns are {header} (choose one with the {what} column option)")


def read_table(path: str, column: str | None, defaults: Sequence[str], what: str, *,
               id_column: str | None = None, delimiter: str | None = None,
               extra_columns: Sequence[tuple[str | None, Sequence[str], str]] = ()) -> Inputs:
    """A table with a header line: one record per following line, the value of `column`
    (or of `extra_columns` too, then a tuple), its id from `id_column` (or the row index)."""
    delim = delimiter if delimiter is not None else TABLE_DELIMITERS.get(_suffix(path))
    lines = decoded_lines(path)
    first = next(lines, None)
    if first is None:
        raise InputError(f"{path}: empty file, expected a header line")
    if isinstance(first[1], Exception):
        raise InputError(f"{path}: the header line is not UTF-8")
    header = [h.strip() for h in _split(first[1], delim)]
    cols = [_pick(header, column, defaults, what, path)]
    cols += [_pick(header, c, d, w, path) for c, d, w in extra_columns]
    id_col = _pick(header, id_column, (), "id", path) if id_column is not None else None
    items, ids = [], []
    for n, line in lines:
        i = len(items)
        if isinstance(line, Exception):
            items.append(line)
            ids.append(str(i))
            continue
        fields = _split(line, delim) if line.strip() else []
        values = [fields[c].strip() if c < len(fields) else None for c in cols]
        if any(v is None for v in values) and line.strip():
            items.append(_skip(MISSING_VALUE, f"{path} line {n}: {len(fields)} fields, the header has {len(header)}"))
        else:
            values = [v or "" for v in values]
            items.append(values[0] if len(values) == 1 else tuple(values))
        rid = fields[id_col].strip() if id_col is not None and id_col < len(fields) else ""
        ids.append(rid or str(i))
    return Inputs(items, ids)


def read_smiles_file(path: str, *, smiles_column: str | None = None, id_column: str | None = None,
                     delimiter: str | None = None) -> Inputs:
    """SMILES records: a table (.csv/.tsv, or any file with a column option or delimiter),
    or one molecule per line, the first whitespace-separated field the SMILES and the second,
    if any, its id; a first line whose first field is a SMILES_HEADERS word is a header."""
    if is_table(path, delimiter) or smiles_column is not None or id_column is not None:
        return read_table(path, smiles_column, SMILES_HEADERS, "SMILES", id_column=id_column,
                          delimiter=delimiter)
    items, ids = [], []
    for n, line in decoded_lines(path):
        fields = [] if isinstance(line, Exception) else line.split()
        if n == 1 and fields and fields[0].lower() in SMILES_HEADERS:
            continue
        i = len(items)
        items.append(line if isinstance(line, Exception) else (fields[0] if fields else ""))
        ids.append(fields[1] if len(fields) > 1 else str(i))
    return Inputs(items, ids)


def read_text_file(path: str, *, text_column: str | None = None, id_column: str | None = None,
                   delimiter: str | None = None) -> Inputs:
    """Texts: a table with a header (.csv/.tsv, or a column option or delimiter given), or
    one text per line (every line a record, no header)."""
    if is_table(path, delimiter) or text_column is not None or id_column is not None:
        return read_table(path, text_column, TEXT_HEADERS, "text", id_column=id_column, delimiter=delimiter)
    items, ids = [], []
    for _, line in decoded_lines(path):
        ids.append(str(len(items)))
        items.append(line)
    return Inputs(items, ids)


def read_pocket_file(path: str, *, ligand_column: str | None = None, protein_column: str | None = None,
                     id_column: str | None = None, delimiter: str | None = None) -> Inputs:
    """(ligand SDF, protein PDB) pairs: a table with a header (columns `ligand`/`protein` by
    default), or one pair per line "LIGAND.sdf PROTEIN.pdb" (whitespace, tab or comma
    separated). Relative paths are relative to the file."""
    base = os.path.dirname(os.path.abspath(path))
    if is_table(path, delimiter) or ligand_column or protein_column or id_column:
        got = read_table(path, ligand_column, ("ligand", "ligand_sdf", "ligand_file"), "ligand",
                         id_column=id_column, delimiter=delimiter,
                         extra_columns=[(protein_column, ("protein", "protein_pdb", "protein_file"), "protein")])
        items = [x if isinstance(x, Exception) else _pocket_pair(x, base, path, n)
                 for n, x in enumerate(got.items)]
        return Inputs(items, got.ids)
    items, ids = [], []
    for n, line in decoded_lines(path):
        ids.append(str(len(items)))
        if isinstance(line, Exception):
            items.append(line)
            continue
        fields = [f for f in re.split(r"[\s,]+", line.strip()) if f]
        items.append(_pocket_pair(fields, base, path, n))
    return Inputs(items, ids)


def _pocket_pair(fields, base: str, path: str, n: int):
    from molbind_data.featurize import UNREADABLE_FILE
    fields = [f for f in fields if f]
    if len(fields) != 2:
        return _skip(UNREADABLE_FILE, f"{path} record {n}: expected 'LIGAND.sdf PROTEIN.pdb', got {fields}")
    return tuple(f if os.path.isabs(f) else os.path.join(base, f) for f in fields)


# ---------------------------------------------------------------------------------- SDF


def sdf_blocks(path: str) -> Iterator[tuple[str, bool]]:
    """(molblock text, terminated) of every record, streamed. A record whose `$$$$` line is
    missing is cut where the next record's counts line shows it must end (three lines before
    that line, after an `M  END`), and comes out with terminated=False; the next record is
    unharmed."""
    current: list[str] = []
    ended = False  # an "M  END" line was seen in the current record
    with _open_binary(path) as f:
        for raw in f:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line.strip() == "$$$$":
                yield "\n".join(current) + "\n", True
                current, ended = [], False
                continue
            if ended and _COUNTS_LINE.match(line) and len(current) >= 3:
                yield "\n".join(current[:-3]) + "\n", False
                current, ended = current[-3:], False
            current.append(line)
            if line.startswith("M  END"):
                ended = True
    if any(line.strip() for line in current):
        yield "\n".join(current) + "\n", True  # the last record may omit its $$$$


def read_sdf(path: str, *, id_property: str | None = None) -> Inputs:
    """Every record of an SDF (or .sdf.gz) as an RDKit molecule with its coordinates, parsed
    one record at a time through RDKit's SD supplier; an unparsable record or one missing its
    terminator is a failure in its own row. Id: `id_property`'s value, else `_Name`, else the
    index."""
    from molbind_data.featurize import UNREADABLE_FILE
    from molbind_data.featurize import conformer as conf
    if not os.path.exists(path):
        raise FileNotFoundError(f"no SDF file at {path}")
    items, ids = [], []
    for i, (block, terminated) in enumerate(sdf_blocks(path)):
        name = block.split("\n", 1)[0].strip()
        if not terminated:
            items.append(_skip(SDF_MISSING_TERMINATOR,
                               f"{path} record {i} ({name or 'no name'}): no $$$$ line before the next record"))
            ids.append(name or str(i))
            continue
        mol = conf.molblock_to_mol(block)
        if mol is None:
            items.append(_skip(UNREADABLE_FILE, f"{path} record {i}: RDKit cannot parse it"))
            ids.append(name or str(i))
            continue
        prop = id_property or "_Name"
        rid = mol.GetProp(prop).strip() if mol.HasProp(prop) else ""
        items.append(mol)
        ids.append(rid or str(i))
    return Inputs(items, ids)


# ---------------------------------------------------------------------------- dispatch


def is_sdf(path: str) -> bool:
    return _suffix(path) in (".sdf", ".sd", ".mol")


FILE_SUFFIXES = (".smi", ".smiles", ".csv", ".tsv", ".tab", ".txt", ".sdf", ".sd", ".mol", ".list")


def looks_like_path(x: Any) -> bool:
    """A pathlib path always; a string only if it names an existing file with a known suffix
    (so that a SMILES or a text is never mistaken for a file)."""
    if isinstance(x, os.PathLike):
        return True
    return isinstance(x, str) and _suffix(x) in FILE_SUFFIXES and os.path.isfile(x)


def read_file(path: str, kind: str, *, smiles_column=None, text_column=None, id_column=None,
              id_property=None, delimiter=None, ligand_column=None, protein_column=None) -> Inputs:
    """The records of a file for `kind` ("text", "molecule" or "pocket"): an SDF (.sdf, .sdf.gz)
    gives molecules, a SMILES file or table gives SMILES strings."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no input file at {path}")
    if kind == "text":
        return read_text_file(path, text_column=text_column, id_column=id_column, delimiter=delimiter)
    if kind == "pocket":
        return read_pocket_file(path, ligand_column=ligand_column, protein_column=protein_column,
                                id_column=id_column, delimiter=delimiter)
    if is_sdf(path):
        return read_sdf(path, id_property=id_property)
    return read_smiles_file(path, smiles_column=smiles_column, id_column=id_column, delimiter=delimiter)


def _is_missing(x) -> bool:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        return x is None
    return x is None or (not isinstance(x, (str, tuple, list)) and bool(pd.isna(x)))


def from_pandas(obj, column: str | None, id_column: str | None, what: str, defaults: Sequence[str]) -> Inputs:
    """A Series (ids: its index labels) or a DataFrame column (ids: `id_column`, else the
    index labels); a missing value (NaN/None) is a failure in its row."""
    import pandas as pd
    if isinstance(obj, pd.DataFrame):
        header = [str(c) for c in obj.columns]
        col = obj.columns[_pick(header, column, defaults, what, "DataFrame")]
        ids = (obj[obj.columns[_pick(header, id_column, (), "id", "DataFrame")]] if id_column is not None
               else obj.index.to_series())
        series = obj[col]
    else:
        series, ids = obj, obj.index.to_series()
    items = [_skip(MISSING_VALUE, f"row {i} ({label}) has no value") if _is_missing(v) else v
             for i, (label, v) in enumerate(series.items())]
    return Inputs(items, [str(x) for x in ids.tolist()])


def is_pandas(x) -> bool:
    mod = type(x).__module__
    return mod.startswith("pandas") and type(x).__name__ in ("Series", "DataFrame")
