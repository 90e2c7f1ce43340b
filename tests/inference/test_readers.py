"""Input readers (no model): headers, columns, ids, undecodable lines and SDF records that
lose their terminator each keep every record in its own row with the exact failure."""
import gzip
import pathlib

import pytest

from molbind_data.featurize import SkipRecord
from molbind_jax.cli import InputError
from molbind_jax.inference import encode as enc
from molbind_jax.inference import readers


def _kinds(ins):
    """Each record as its value, or (reason,) for a failed read."""
    return [(x.reason,) if isinstance(x, SkipRecord) else x for x in ins.items]


@pytest.mark.parametrize("header", ["smiles", "SMILES", "SMILES\tname", "Canonical_SMILES id"])
def test_smiles_file_header_is_not_a_molecule(tmp_path, header):
    p = tmp_path / "mols.smi"
    p.write_text(f"{header}\nCCO ethanol\nc1ccccc1\n")
    ins = readers.read_smiles_file(str(p))
    assert _kinds(ins) == ["CCO", "c1ccccc1"]
    assert ins.ids == ["ethanol", "1"]  # the name after the SMILES, else the row index


def test_smiles_file_without_header_keeps_first_line(tmp_path):
    p = tmp_path / "mols.smi"
    p.write_text("CCO\n\nnot_a_smiles x\n")
    ins = readers.read_smiles_file(str(p))
    assert _kinds(ins) == ["CCO", "", "not_a_smiles"]
    assert ins.ids == ["0", "1", "x"]


def test_undecodable_line_fails_alone(tmp_path):
    p = tmp_path / "mols.smi"
    p.write_bytes(b"CCO a\nCC\xe9O latin1\nc1ccccc1O c\r\nCC d")  # no final newline
    ins = readers.read_smiles_file(str(p))
    assert _kinds(ins) == ["CCO", (readers.UNDECODABLE_LINE,), "c1ccccc1O", "CC"]
    assert ins.ids == ["a", "1", "c", "d"]
    assert "line 2" in str(ins.items[1])
    t = tmp_path / "texts.txt"
    t.write_bytes(b"\xef\xbb\xbfan acid\ncaf\xe9 text\n\nan alcohol\n")  # BOM dropped
    ins = readers.read_text_file(str(t))
    assert _kinds(ins) == ["an acid", (readers.UNDECODABLE_LINE,), "", "an alcohol"]
    assert ins.ids == ["0", "1", "2", "3"]


def test_csv_columns_and_ids(tmp_path):
    p = tmp_path / "lib.csv"
    p.write_text('ID,name,SMILES\nm1,"ethanol, dry",CCO\nm2,empty,\nm3\n,benzene,c1ccccc1\n')
    ins = readers.read_smiles_file(str(p), id_column="ID")
    assert _kinds(ins) == ["CCO", "", (readers.MISSING_VALUE,), "c1ccccc1"]
    assert ins.ids == ["m1", "m2", "m3", "3"]  # an empty id falls back to the row index
    t = tmp_path / "lib.tsv"
    t.write_text("a\tb\nx\tCCO\n")
    assert _kinds(readers.read_smiles_file(str(t), smiles_column="b")) == ["CCO"]
    s = tmp_path / "lib.smi"  # a column option makes any file a table (whitespace-separated)
    s.write_text("name smi\nethanol CCO\n")
    ins = readers.read_smiles_file(str(s), smiles_column="smi", id_column="name")
    assert (_kinds(ins), ins.ids) == (["CCO"], ["ethanol"])


def test_wrong_column_names_the_columns(tmp_path):
    p = tmp_path / "lib.csv"
    p.write_text("ID,structure,weight\nm1,CCO,46\n")
    with pytest.raises(InputError, match=r"no column 'SMILES'.*\['ID', 'structure', 'weight'\]"):
        readers.read_smiles_file(str(p), smiles_column="SMILES")
    with pytest.raises(InputError, match=r"which column holds the SMILES.*\['ID', 'structure', 'weight'\]"):
        readers.read_smiles_file(str(p))
    with pytest.raises(InputError, match=r"no column 'name' \(id\)"):
        readers.read_smiles_file(str(p), smiles_column="structure", id_column="name")
    q = tmp_path / "texts.csv"
    q.write_text("cid,description\n7,an acid\n")
    ins = readers.read_text_file(str(q), id_column="cid")
    assert (_kinds(ins), ins.ids) == (["an acid"], ["7"])
    with pytest.raises(InputError, match=r"no column 'caption'"):
        readers.read_text_file(str(q), text_column="caption")


def _sdf_blocks():
    from rdkit import Chem
    from rdkit.Chem import AllChem
    blocks = []
    for name, smi in (("eth", "CCO"), ("phe", "c1ccccc1O"), ("ace", "CC(=O)O")):
        m = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(m, randomSeed=0)
        m.SetProp("_Name", name)
        m.SetProp("ID", "X" + name)
        block = Chem.MolToMolBlock(m) + ">  <ID>\nX" + name + "\n\n"
        blocks.append(block)
    return blocks


def write_bad_sdf(path: pathlib.Path, gz: bool = False) -> pathlib.Path:
    """Three molecules, the second without its $$$$ line."""
    b = _sdf_blocks()
    text = b[0] + "$$$$\n" + b[1] + b[2] + "$$$$\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["bad.sdf", "bad.sdf.gz"])
def test_sdf_missing_terminator_is_one_failure(tmp_path, name):
    p = write_bad_sdf(tmp_path / name, gz=name.endswith(".gz"))
    ins = readers.read_sdf(str(p))
    assert len(ins) == 3 and ins.ids == ["eth", "phe", "ace"]
    assert isinstance(ins.items[1], SkipRecord) and ins.items[1].reason == readers.SDF_MISSING_TERMINATOR
    assert [m.GetNumAtoms() for m in (ins.items[0], ins.items[2])] == [9, 8]  # hydrogens kept
    assert ins.items[2].GetConformer().Is3D()
    assert readers.read_sdf(str(p), id_property="ID").ids == ["Xeth", "phe", "Xace"]


def test_sdf_unterminated_last_record_and_garbage(tmp_path):
    b = _sdf_blocks()
    p = tmp_path / "m.sdf"
    # a terminator with trailing blanks, a garbage record, a last record without $$$$
    p.write_text(b[0] + "$$$$  \nbroken\n  nonsense\n\nnot a counts line\n$$$$\n" + b[2])
    ins = readers.read_sdf(str(p))
    assert ins.ids == ["eth", "broken", "ace"]
    assert [getattr(x, "reason", "mol") for x in ins.items] == ["mol", "unreadable_file", "mol"]


def test_pocket_table_and_lines(tmp_path):
    p = tmp_path / "pockets.csv"
    p.write_text("name,protein,ligand\nc1,p.pdb,l.sdf\nc2,,l.sdf\n")
    ins = readers.read_pocket_file(str(p), id_column="name")
    assert ins.ids == ["c1", "c2"]
    assert ins.items[0] == (str(tmp_path / "l.sdf"), str(tmp_path / "p.pdb"))
    assert ins.items[1].reason == "unreadable_file"
    q = tmp_path / "pockets.txt"
    q.write_text("/a/l.sdf /a/p.pdb\nonly_one\n")
    ins = readers.read_pocket_file(str(q))
    assert ins.items[0] == ("/a/l.sdf", "/a/p.pdb") and ins.items[1].reason == "unreadable_file"


def test_pandas_series_and_dataframe_column():
    import pandas as pd
    s = pd.Series(["CCO", None, "c1ccccc1"], index=["a", "b", "c"])
    ins, single = enc.collect(s, "graph")
    assert not single and ins.ids == ["a", "b", "c"]
    assert _kinds(ins) == ["CCO", (readers.MISSING_VALUE,), "c1ccccc1"]
    df = pd.DataFrame({"cid": [10, 11], "smiles": ["CCO", float("nan")], "text": ["an acid", "x"]})
    ins, _ = enc.collect(df, "graph", id_column="cid")
    assert ins.ids == ["10", "11"] and _kinds(ins) == ["CCO", (readers.MISSING_VALUE,)]
    ins, _ = enc.collect(df, "text")
    assert _kinds(ins) == ["an acid", "x"] and ins.ids == ["0", "1"]
    with pytest.raises(InputError, match=r"no column 'SMILES'.*\['cid', 'smiles', 'text'\]"):
        enc.collect(df, "graph", smiles_column="SMILES")


def test_single_inputs_and_paths(tmp_path):
    from rdkit import Chem
    ins, single = enc.collect("a penicillin", "text")
    assert single and ins.items == ["a penicillin"]
    ins, single = enc.collect(Chem.MolFromSmiles("CCO"), "graph")
    assert single and len(ins) == 1
    ins, single = enc.collect(("l.sdf", "p.pdb"), "pocket")
    assert single and ins.items == [("l.sdf", "p.pdb")]
    ins, single = enc.collect(["CCO", "CC"], "graph", ids=["x", "y"])
    assert not single and ins.ids == ["x", "y"]
    with pytest.raises(ValueError, match="1 ids for 2 inputs"):
        enc.collect(["CCO", "CC"], "graph", ids=["x"])
    p = tmp_path / "m.smi"
    p.write_text("CCO\n")
    for given in (p, str(p)):  # a path (pathlib or an existing file's name) is a file
        ins, single = enc.collect(given, "graph")
        assert not single and ins.items == ["CCO"]
    ins, single = enc.collect("missing.smi", "graph")  # no such file: a (bad) SMILES string
    assert single and ins.items == ["missing.smi"]
