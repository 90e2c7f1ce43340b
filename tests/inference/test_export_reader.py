"""The export reader (molbind_jax/inference/export_reader.py): an export carries the files its
modalities need (format 2: `files` per modality) and refuses Uni-Mol dictionaries that differ
from the built-in order; exports of format 1 (one tokenizer folder and the two dictionaries at
the top level of config.json) are still read."""
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
from molbind_jax.inference import export_reader
from molbind_jax.modalities import spec
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
    with pytest.raises(ValueError, match=re.escape(str(mol)) + r": the conformer dictionary differs from the "
                                         r"built-in one at symbol 4 \(\['N'\] vs \['C'\]\)"):
        export_reader.check_files(str(tmp_path), cfg, files)
    # A model without a conformer tower does not read that file.
    export_reader.check_files(str(tmp_path), cfg.replace(modalities=("text", "pocket")), files)

    pocket = tmp_path / "dictionaries" / "pocket_dict.txt"
    pocket.write_text("".join(s + "\n" for s in POCKET_SYMBOLS[:-1]))  # [MASK] missing at the end
    with pytest.raises(ValueError, match=re.escape(str(pocket)) + r": the pocket dictionary differs .* symbol "
                                         rf"{len(POCKET_SYMBOLS) - 1} \(\[\] vs \['\[MASK\]'\]\)"):
        export_reader.check_files(str(tmp_path), cfg.replace(modalities=("text", "pocket")), files)
    pocket.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(pocket)) + ": the export's config.json lists this "
                                                "pocket dictionary but the file is missing"):
        export_reader.check_files(str(tmp_path), cfg, {"pocket": files["pocket"]})


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from molbind_jax.training.export import FORMAT_VERSION, write_export

    cfg = MolBindConfig.tiny(embed_dim=8)
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
    with pytest.raises(ValueError, match=re.escape(os.path.join(edited, "dictionaries", "mol_dict.txt")) +
                       r": the conformer dictionary differs from the built-in one at symbol 4"):
        export_reader.load_export(edited)


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
    with pytest.raises(ValueError, match=r"pocket_dict.txt: the pocket dictionary differs from the built-in one "
                                         r"at symbol 1"):
        export_reader.load_export(old)
    # A format this version does not know.
    meta["format_version"] = 3
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match=r"export format 3 \(this version reads 1 and 2\)"):
        export_reader.load_export(old)
