"""Embed a file of inputs with an exported MolBind: one L2-normalised row per input record.

    python -m molbind_jax.inference.embed --checkpoint=runs/demo/export --modality=text \
        --input=texts.txt --output=texts.npy
    python -m molbind_jax.inference.embed --checkpoint=molbind.ckpt --tokenizer=SCIBERT_DIR \
        --gin_backbone=graph_pretrain.pth --dictionaries=DICT_DIR --modality=smiles ...

--checkpoint is an export directory or an original MolBind `.ckpt` (then --tokenizer is
required; --gin_backbone, --dictionaries and --ckpt_config as in molbind_jax.convert.molbind).

Input records by modality (row i of the output is record i, in input order):
  text    one text per line (a multi-line text cannot be given this way)
  smiles  one molecule per line: the first whitespace-separated field is the SMILES (a name
          may follow); embedded with the 2D graph tower, or the 3D tower (RDKit conformer)
          with --smiles_tower=conformer
  sdf     every record of the SDF file, with its own 3D coordinates (conformer tower)
  pocket  one complex per line: "LIGAND.sdf PROTEIN.pdb" (whitespace, tab or comma
          separated; relative paths are relative to the input file)

A record that fails (invalid SMILES, unreadable file, an empty line: for text the reason is
"empty_text") gets a NaN row and an entry {index (0-based), reason, detail} in
OUTPUT.failures.json (next to OUTPUT, ".npy" replaced); nothing is dropped. The exit status
is 0 as long as the run itself completed; the failure count is printed.
"""
from __future__ import annotations

import json
import os
import re
import sys

from absl import app, flags

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
    define_ckpt_flags()


def failures_path(output: str) -> str:
    return re.sub(r"\.npy$", "", output) + ".failures.json"


def parse_pocket_line(line: str, base_dir: str) -> tuple[str, str]:
    fields = [f for f in re.split(r"[\s,]+", line.strip()) if f]
    if len(fields) != 2:
        # An unreadable line is a failing record, with the same reason as a missing file.
        from molbind_data.featurize import UNREADABLE_FILE, SkipRecord
        raise SkipRecord(UNREADABLE_FILE, f"expected 'LIGAND.sdf PROTEIN.pdb', got {line!r}")
    return tuple(f if os.path.isabs(f) else os.path.join(base_dir, f) for f in fields)


def embed_file(mb, modality: str, path: str, smiles_tower: str = "graph"):
    """-> api.Embeddings for the records of one input file."""
    from molbind_jax.inference.api import Embeddings
    if modality == "sdf":
        return mb.embed_sdf(path)
    lines = read_lines(path)
    if modality == "text":
        return mb.embed_texts(lines)
    if modality == "smiles":
        return mb.embed_smiles([(line.split() or [""])[0] for line in lines], tower=smiles_tower)
    # pocket: a malformed line must still fail as its own record, so featurize lazily
    base = os.path.dirname(os.path.abspath(path))
    items, bad = [], []
    for i, line in enumerate(lines):
        try:
            items.append(parse_pocket_line(line, base))
        except Exception as err:  # noqa: BLE001
            from molbind_jax.inference.api import _failure
            bad.append(_failure(i, err))
            items.append(("", ""))
    emb = mb.embed_pockets(items)
    bad_idx = {f["index"] for f in bad}
    failures = bad + [f for f in emb.failures if f["index"] not in bad_idx]
    return Embeddings(emb.vectors, sorted(failures, key=lambda f: f["index"]))


def main(argv):
    del argv
    for name in ("checkpoint", "modality", "input", "output"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    import numpy as np
    from molbind_jax.inference.api import MolBindModel
    from molbind_jax.convert.molbind import checked_ckpt_kwargs
    load_kwargs = checked_ckpt_kwargs(FLAGS, FLAGS.checkpoint)
    mb = MolBindModel.load(FLAGS.checkpoint, batch_size=FLAGS.batch_size, progress=True,
                           **load_kwargs)
    emb = embed_file(mb, FLAGS.modality, FLAGS.input, FLAGS.smiles_tower)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    np.save(FLAGS.output, emb.vectors)
    with open(failures_path(FLAGS.output), "w", encoding="utf-8") as f:
        json.dump(emb.failures, f, indent=1)
    print(f"wrote {FLAGS.output}: {len(emb)} rows x {emb.vectors.shape[1]}, "
          f"{len(emb.failures)} failed (see {failures_path(FLAGS.output)})")
    return 0


def cli():
    """The `molbind-embed` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_jax.cli import run as cli_run

    define_flags()
    sys.exit(cli_run(main))


if __name__ == "__main__":
    cli()
