"""Embed a file of inputs with an exported MolBind: one L2-normalised row per input record.

    python -m molbind_jax.inference.embed --checkpoint=runs/demo/export --modality=text \
        --input=texts.txt --output=texts.npy
    python -m molbind_jax.inference.embed --checkpoint=runs/demo/export --modality=smiles \
        --input=library.csv --smiles_column=SMILES --id_column=ID --output=library.npy
    python -m molbind_jax.inference.embed --checkpoint=molbind.ckpt --tokenizer=SCIBERT_DIR \
        --gin_backbone=graph_pretrain.pth --dictionaries=DICT_DIR --modality=smiles ...

--checkpoint is an export directory or an original MolBind `.ckpt` (then --tokenizer is
required; --gin_backbone, --dictionaries and --ckpt_config as in molbind_jax.convert.molbind).

Input records by modality (row i of the output is record i, in input order; files are read by
molbind_jax.inference.readers, one line at a time, so a line that is not UTF-8 fails alone
with "undecodable_line"):
  text    one text per line (no header; a multi-line text cannot be given this way), or a
          table (.csv/.tsv, or with --text_column / --id_column / --delimiter) with a header
          line: --text_column (default: the column named text, description or caption, or the
          only one)
  smiles  one molecule per line: the first whitespace-separated field is the SMILES, the
          second (if any) its id; a first line whose first field is smiles, smi,
          canonical_smiles, isomeric_smiles or smiles_string (any case) is a header, not a
          molecule. Or a table as for text, with --smiles_column (default: the column named
          smiles etc., or the only one). Or an SDF (.sdf, .sdf.gz): its molecules as they are.
          Embedded with the 2D graph tower, or with --smiles_tower=conformer the 3D tower
          (RDKit conformer for SMILES, the file's coordinates for SDF), or
          --smiles_tower=smiles the SMILES-string tower
  sdf     every record of the SDF file (.sdf or .sdf.gz), with its own 3D coordinates
          (conformer tower); a record missing its $$$$ line is one failure
          ("sdf_missing_terminator") and the next record still gets its own row
  pocket  one complex per line: "LIGAND.sdf PROTEIN.pdb" (whitespace, tab or comma
          separated), or a table with --ligand_column / --protein_column (default: columns
          ligand and protein); relative paths are relative to the input file

Outputs: OUTPUT (.npy, float32 [N, E]), OUTPUT.ids.txt (".npy" replaced; one id per row: the
--id_column value, the name after a .smi SMILES, the SDF _Name or --id_property, else the
0-based row index) and OUTPUT.failures.json: one entry {index (0-based row), id, reason,
detail} per NaN row. A record that fails (invalid SMILES, unreadable file, an empty line: for
text "empty_text"; a text whose token ids do not fit the text tower: "out_of_vocabulary"; a
row the model made non-finite: "nonfinite_output") gets a NaN row and its entry; nothing is
dropped. The exit status is 0 as long as the run itself completed; the printed failure count
is the number of entries in the failures file. A wrong column name is an error naming the
columns present (exit status 2).
"""
from __future__ import annotations

import json
import os
import re
import sys

from absl import app, flags

from molbind_jax.cli import InputError
from molbind_jax.inference.api import read_lines  # noqa: F401  (users import it from here too)

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags; defined only when run as a program, so that importing this
    module (tests, other tools) never collides with other modules' absl flags."""
    from molbind_jax.convert.molbind import define_ckpt_flags
    flags.DEFINE_string("checkpoint", None, "exported model directory (molbind_jax.training.export) or an "
                        "original MolBind .ckpt")
    flags.DEFINE_enum("modality", None, ["text", "smiles", "sdf", "pocket"], "input kind")
    flags.DEFINE_string("input", None, "input file")
    flags.DEFINE_string("output", None, "output .npy path")
    flags.DEFINE_enum("smiles_tower", "graph", ["graph", "conformer", "smiles"],
                      "tower for SMILES input (smiles: the SMILES-string tower of a five-tower model)")
    flags.DEFINE_integer("batch_size", 32, "rows per jitted batch (the last one is padded)")
    flags.DEFINE_string("smiles_column", None, "column of a SMILES table holding the SMILES")
    flags.DEFINE_string("text_column", None, "column of a text table holding the text")
    flags.DEFINE_string("id_column", None, "column of a table holding each row's id (OUTPUT.ids.txt)")
    flags.DEFINE_string("id_property", None, "SDF property holding each molecule's id (default: _Name)")
    flags.DEFINE_string("delimiter", None, "field delimiter of a table (default: by suffix, ',' for .csv and "
                        "tab for .tsv; 'tab' or '\\t' for a tab)")
    flags.DEFINE_string("ligand_column", None, "pocket table: the ligand SDF column (default: ligand)")
    flags.DEFINE_string("protein_column", None, "pocket table: the protein PDB column (default: protein)")
    define_ckpt_flags()


def output_path(output: str, suffix: str) -> str:
    return re.sub(r"\.npy$", "", output) + suffix


def failures_path(output: str) -> str:
    return output_path(output, ".failures.json")


def ids_path(output: str) -> str:
    return output_path(output, ".ids.txt")


TOWER_OF = {"text": "text", "sdf": "conformer", "pocket": "pocket"}


def read_input_file(modality: str, path: str, smiles_tower: str = "graph", **read_options):
    """-> (tower, readers.Inputs) of one input file, read before any model is loaded so that
    a wrong column fails at once; read_options: smiles_column, text_column, id_column,
    id_property, delimiter, ligand_column, protein_column (molbind_jax.inference.readers)."""
    from molbind_jax.inference import readers
    from molbind_jax.inference.encode import FILE_KIND
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no input file at {path}")
    if modality == "sdf" and not readers.is_sdf(path):
        raise InputError(f"--modality=sdf takes an .sdf or .sdf.gz file, got {path}")
    tower = TOWER_OF.get(modality, smiles_tower)
    return tower, readers.read_file(path, FILE_KIND.get(tower, "molecule"), **read_options)


def embed_file(mb, modality: str, path: str, smiles_tower: str = "graph", *, batch_size: int | None = None,
               **read_options):
    """-> api.Embeddings (vectors, ids, failures) for the records of one input file."""
    tower, ins = read_input_file(modality, path, smiles_tower, **read_options)
    return mb.encode(ins.items, tower, ids=ins.ids, batch_size=batch_size, return_failures=True)


def write_outputs(output: str, emb) -> str:
    """OUTPUT.npy, OUTPUT.ids.txt and OUTPUT.failures.json; -> the one-line summary."""
    import numpy as np
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.save(output, emb.vectors)
    with open(ids_path(output), "w", encoding="utf-8") as f:
        f.write("".join(re.sub(r"[\r\n\t]+", " ", i) + "\n" for i in emb.ids))
    with open(failures_path(output), "w", encoding="utf-8") as f:
        json.dump(emb.failures, f, indent=1)
    reasons = {}
    for fl in emb.failures:
        reasons[fl["reason"]] = reasons.get(fl["reason"], 0) + 1
    by_reason = f" ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})" if reasons else ""
    return (f"wrote {output}: {len(emb)} rows x {emb.vectors.shape[1]}, ids in {ids_path(output)}, "
            f"{len(emb.failures)} failed{by_reason} (see {failures_path(output)})")


def main(argv):
    del argv
    for name in ("checkpoint", "modality", "input", "output"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    from molbind_jax.inference.api import MolBindModel
    from molbind_jax.convert.molbind import checked_ckpt_kwargs
    delimiter = "\t" if FLAGS.delimiter in ("\\t", "tab") else FLAGS.delimiter
    tower, ins = read_input_file(FLAGS.modality, FLAGS.input, FLAGS.smiles_tower,
                                 smiles_column=FLAGS.smiles_column, text_column=FLAGS.text_column,
                                 id_column=FLAGS.id_column, id_property=FLAGS.id_property, delimiter=delimiter,
                                 ligand_column=FLAGS.ligand_column, protein_column=FLAGS.protein_column)
    load_kwargs = checked_ckpt_kwargs(FLAGS, FLAGS.checkpoint)
    mb = MolBindModel.load(FLAGS.checkpoint, batch_size=FLAGS.batch_size, progress=True,
                           **load_kwargs)
    emb = mb.encode(ins.items, tower, ids=ins.ids, return_failures=True)
    print(write_outputs(FLAGS.output, emb))
    return 0


def cli():
    """The `molbind-embed` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_jax.cli import run as cli_run

    define_flags()
    sys.exit(cli_run(main))


if __name__ == "__main__":
    cli()
