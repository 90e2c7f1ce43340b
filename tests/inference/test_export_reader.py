"""The export reader (molbind_jax/inference/export_reader.py): an export carries the files its
modalities need (format 2: `files` per modality) and refuses Uni-Mol dictionaries that differ
from the built-in order; exports of format 1 (one tokenizer folder and the two dictionaries at
the top level of config.json) are still read. A damaged export is one CheckpointError naming
the file; the export itself checks everything before writing and leaves nothing on failure."""
from __future__ import annotations

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from molbind_data.featurize.dictionaries import MOL_SYMBOLS, POCKET_SYMBOLS
from molbind_jax.convert.common import CheckpointError
from molbind_jax.inference import export_reader
from molbind_jax.modalities import spec
from molbind_jax.models.bert import BertConfig
from molbind_jax.models.molbind import MolBind, MolBindConfig


def _swap(path, i, j):
    lines = open(path, encoding="utf-8").read().splitlines()
    lines[i], lines[j] = lines[j], lines[i]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_check_files_refuses_an_edited_dictionary(tmp_path):
    cfg = MolBindConfig.tiny()
    # What the export writes for the two Uni-Mol towers (no model needed).
    files = {m: spec(m).export_files(cfg, str(tmp_path), context={}) for m in ("conformer", "pocket")}
    assert files["conformer"] == {"dictionary": os.path.join("dictionaries", "mol_dict.txt"),
                                  "symbols": list(MOL_SYMBOLS)}
    assert files["pocket"]["dictionary"] == os.path.join("dictionaries", "pocket_dict.txt")
    export_reader.check_files(str(tmp_path), cfg, files)  # as written: accepted

    mol = tmp_path / "dictionaries" / "mol_dict.txt"
    _swap(mol, 4, 5)  # C and N exchanged: every carbon would be read as a nitrogen
    assert tuple(MOL_SYMBOLS[4:6]) == ("C", "N")
    with pytest.raises(CheckpointError, match=re.escape(str(mol)) + r": the conformer dictionary differs from "
                       r"the built-in one at line 5 \(symbol 4: 'N' where the built-in order has 'C'\)"):
        export_reader.check_files(str(tmp_path), cfg, files)
    # A model without a conformer tower does not read that file.
    export_reader.check_files(str(tmp_path), cfg.replace(modalities=("text", "pocket")), files)

    pocket = tmp_path / "dictionaries" / "pocket_dict.txt"
    pocket.write_text("".join(s + "\n" for s in POCKET_SYMBOLS[:-1]))  # [MASK] missing at the end
    with pytest.raises(CheckpointError, match=re.escape(str(pocket)) + rf": the pocket dictionary differs .* line "
                       rf"{len(POCKET_SYMBOLS)} \(symbol {len(POCKET_SYMBOLS) - 1}: the end of the list where the "
                       r"built-in order has '\[MASK\]'\)"):
        export_reader.check_files(str(tmp_path), cfg.replace(modalities=("text", "pocket")), files)
    pocket.unlink()
    with pytest.raises(CheckpointError, match=re.escape(str(pocket)) + ": the export's config.json lists this "
                                              "pocket dictionary but the file is missing"):
        export_reader.check_files(str(tmp_path), cfg, {"pocket": files["pocket"]})
    # The symbols config.json records are checked too (a self-describing export).
    _swap(mol, 4, 5)  # the file is back in order
    edited = dict(files["conformer"], symbols=list(MOL_SYMBOLS[:4]) + ["N", "C"] + list(MOL_SYMBOLS[6:]))
    with pytest.raises(CheckpointError, match=r"config.json: files.conformer.symbols differs from the built-in "
                                              r"conformer dictionary at symbol 4 \('N' where the built-in order has 'C'\)"):
        export_reader.check_files(str(tmp_path), cfg, {"conformer": edited})


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from molbind_jax.training.export import FORMAT_VERSION, write_export

    # the text table has a row for every id of the MiniLM tokenizer the export ships
    cfg = MolBindConfig.tiny(embed_dim=8, bert=BertConfig.tiny(vocab_size=30522, use_token_type=False,
                                                               dropout=0.0, attention_dropout=0.0))
    model = MolBind(cfg, rngs=nnx.Rngs(3))
    out = write_export(model, cfg, str(tmp_path_factory.mktemp("export") / "export"))
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["format_version"] == FORMAT_VERSION == 2 and set(meta["files"]) == set(cfg.modalities)
    return out, cfg, jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())


def _copy(export, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(export, out)
    return out


@pytest.mark.slow  # orbax save and restore of a tiny model
def test_load_export_reads_format_2_and_refuses_an_edited_dictionary(export, tmp_path):
    out, cfg, params = export
    model, mcfg, tok = export_reader.load_export(out)
    assert mcfg == cfg and tok is not None
    got = nnx.state(model, nnx.Param).to_pure_dict()
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), params)

    edited = _copy(out, tmp_path)
    _swap(os.path.join(edited, "dictionaries", "mol_dict.txt"), 4, 5)
    with pytest.raises(CheckpointError, match=re.escape(os.path.join(edited, "dictionaries", "mol_dict.txt")) +
                       r": the conformer dictionary differs from the built-in one at line 5"):
        export_reader.load_export(edited)
    # the public loader refuses it the same way
    from molbind_jax.inference.api import MolBindModel
    with pytest.raises(CheckpointError, match=r"mol_dict.txt: the conformer dictionary differs"):
        MolBindModel.load(edited)


@pytest.mark.slow  # orbax restore of a tiny model
def test_load_export_reads_format_1(export, tmp_path):
    out, cfg, params = export
    old = _copy(out, tmp_path)
    cfg_path = os.path.join(old, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        meta = json.load(f)
    # The format-1 layout: no `files` and no `modalities` (always the original four towers).
    files = meta.pop("files")
    meta["model"].pop("modalities")
    meta.update(format_version=1, tokenizer=files["text"]["tokenizer"],
                tokenizer_files=files["text"]["tokenizer_files"],
                dictionaries={"mol": files["conformer"]["dictionary"], "pocket": files["pocket"]["dictionary"],
                              "mol_symbols": files["conformer"]["symbols"],
                              "pocket_symbols": files["pocket"]["symbols"]})
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    model, mcfg, tok = export_reader.load_export(old)
    assert mcfg == cfg and mcfg.modalities == ("text", "graph", "conformer", "pocket") and tok is not None
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict()), params)
    # Its dictionaries are checked as well.
    _swap(os.path.join(old, "dictionaries", "pocket_dict.txt"), 1, 2)
    with pytest.raises(CheckpointError, match=r"pocket_dict.txt: the pocket dictionary differs from the built-in "
                                              r"one at line 2"):
        export_reader.load_export(old)
    # A format this version does not know.
    meta["format_version"] = 3
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    with pytest.raises(CheckpointError, match=r"config.json: export format 3 \(this version reads 1 and 2\)"):
        export_reader.load_export(old)


def test_an_export_refuses_a_tokenizer_larger_than_the_table_and_leaves_nothing(tmp_path):
    from molbind_jax.training.export import write_export

    cfg = MolBindConfig.tiny(embed_dim=8)  # a 64-row text table; the default tokenizer has 30522 ids
    model = MolBind(cfg, rngs=nnx.Rngs(0))
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")
    with pytest.raises(CheckpointError, match=r"this tokenizer has 30522 ids but the text tower's table has 64 rows"):
        write_export(model, cfg, str(out))
    assert sorted(os.listdir(tmp_path)) == ["export"] and os.listdir(out) == ["keep.txt"]  # no export.tmp

    # a failure while writing (here: a dictionary that cannot be written) removes the tmp folder too
    def broken(model_config, directory, *, context):
        raise OSError("disk full")

    monkey = pytest.MonkeyPatch()
    monkey.setattr(spec("pocket"), "export_files", broken)
    try:
        cfg_fit = cfg.replace(modalities=("graph", "conformer", "pocket"))
        with pytest.raises(OSError, match="disk full"):
            write_export(MolBind(cfg_fit, rngs=nnx.Rngs(0)), cfg_fit, str(out))
    finally:
        monkey.undo()
    assert sorted(os.listdir(tmp_path)) == ["export"] and os.listdir(out) == ["keep.txt"]


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _array_files(d):
    """The array data files of the export's top-level OCDBT store (state/d/<hash>)."""
    folder = os.path.join(d, "state", "d")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


DAMAGE = {
    "config_truncated": (lambda d: _truncate(os.path.join(d, "config.json")),
                         r"config.json: not valid JSON \(.*\); the export is damaged or truncated"),
    "config_missing": (lambda d: os.remove(os.path.join(d, "config.json")),
                       r"config.json: missing; .* is not a complete MolBind export"),
    "config_model_broken": (lambda d: json.dump({"format_version": 2, "model": {"bert": {"no_such": 1}}},
                                                open(os.path.join(d, "config.json"), "w")),
                            r"config.json: its `model` section does not describe a MolBind"),
    "state_missing": (lambda d: shutil.rmtree(os.path.join(d, "state")),
                      r"state: the export's weights folder is missing"),
    "metadata_missing": (lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
                         r"state/_METADATA: missing; the orbax state of the export is incomplete"),
    "metadata_truncated": (lambda d: _truncate(os.path.join(d, "state", "_METADATA")),
                           r"state/_METADATA: the export's orbax state is damaged or truncated"),
    "arrays_truncated": (lambda d: [_truncate(p) for p in _array_files(d)],
                         r"state/d/[0-9a-f]+: the export's orbax state is damaged or truncated \(.*; parameter \w"),
    "tokenizer_missing": (lambda d: shutil.rmtree(os.path.join(d, "tokenizer")),
                          r"tokenizer: the export's tokenizer folder is missing"),
    "tokenizer_truncated": (lambda d: _truncate(os.path.join(d, "tokenizer", "tokenizer.json")),
                            r"cannot read a tokenizer from .*tokenizer \("),
}


@pytest.mark.slow  # orbax restores of a tiny model
@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_export_is_one_clear_error_naming_the_file(export, tmp_path, case):
    out, _, _ = export
    damaged = _copy(out, tmp_path)
    damage, message = DAMAGE[case]
    if case == "arrays_truncated":
        assert _array_files(damaged)
    damage(damaged)
    with pytest.raises(CheckpointError, match=message) as err:
        export_reader.load_export(damaged)
    assert damaged in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow  # a subprocess that imports JAX
def test_the_cli_prints_one_line_for_a_damaged_export(export, tmp_path):
    import subprocess
    import sys

    out, _, _ = export
    damaged = _copy(out, tmp_path)
    for p in _array_files(damaged):
        _truncate(p)
    (tmp_path / "texts.txt").write_text("a benzene ring\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "molbind_jax.inference.embed", f"--checkpoint={damaged}",
                           "--modality=text", f"--input={tmp_path / 'texts.txt'}", f"--output={tmp_path / 'o.npy'}"],
                          capture_output=True, text=True, timeout=600, cwd=repo, env=dict(os.environ))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    named = lines[0].split(": ")[1]
    assert lines[0].startswith("error: ") and named in _array_files(damaged)  # the file that was truncated
    assert "the export's orbax state is damaged or truncated" in lines[0]
