"""`MolBindModel.encode`: one entry point for every input form, as sentence-transformers'.

    mb = MolBindModel.load("runs/demo/export")
    v = mb.encode("a penicillin antibiotic", modality="text")          # [E]: one input
    m = mb.encode(["CCO", "c1ccccc1O"], modality="graph")             # [2, E]
    e = mb.encode("mols.sdf.gz", modality="conformer", return_failures=True)
    e.vectors, e.ids, e.failures                                      # rows, ids, what failed

`modality` is the tower: "text", "graph" (2D), "conformer" (3D), "smiles" (the SMILES-string
tower of a model that has one) or "pocket". Inputs:

  a single str, RDKit Mol or (ligand, protein) pair   one input; the array is 1-D [E]
  a list / tuple / iterable                            one row per element
  a pandas Series (ids: its index labels), or a DataFrame with `smiles_column` /
    `text_column` (default: the column named smiles / text, or the only one) and `id_column`
  a file path (a pathlib.Path; a str only when it names an existing file with a known
    suffix: .smi .smiles .csv .tsv .tab .txt .list .sdf .sd .mol, optionally .gz), read by
    molbind_jax.inference.readers: SMILES/text lines or tables, SDF records, pocket lists

Strings are SMILES for the molecule towers and texts for the text tower; an RDKit Mol goes
through the graph tower as is, and through the conformer tower with its own coordinates (a
Mol without a conformer fails with "no_conformer"; give its SMILES to get an ETKDG one).

Return value: by default a float32 array [N, E] (1-D for a single input) whose failed rows
are NaN. With `return_failures=True` an `Embeddings` instead: `.vectors` [N, E] (always
2-D), `.ids` (one per row) and `.failures` ({index, id, reason, detail} per failed row).
Nothing is dropped: row i is input i either way.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from molbind_jax.inference import readers
from molbind_jax.inference.api import TOWERS

FILE_KIND = {"text": "text", "pocket": "pocket"}  # every other tower reads molecules


def _is_mol(x) -> bool:
    return hasattr(x, "GetAtoms") and hasattr(x, "GetNumConformers")


def _is_single(x, modality: str) -> bool:
    if isinstance(x, str) or _is_mol(x):
        return True
    return (modality == "pocket" and isinstance(x, tuple) and len(x) == 2
            and all(isinstance(p, (str, os.PathLike)) for p in x))


def collect(inputs, modality: str, *, ids: Sequence[str] | None = None, smiles_column: str | None = None,
            text_column: str | None = None, id_column: str | None = None, id_property: str | None = None,
            delimiter: str | None = None, ligand_column: str | None = None,
            protein_column: str | None = None) -> tuple[readers.Inputs, bool]:
    """(Inputs, single) of any accepted input form (see the module docstring)."""
    single = False
    if readers.looks_like_path(inputs):
        got = readers.read_file(inputs, FILE_KIND.get(modality, "molecule"), smiles_column=smiles_column,
                                text_column=text_column, id_column=id_column, id_property=id_property,
                                delimiter=delimiter, ligand_column=ligand_column, protein_column=protein_column)
    elif readers.is_pandas(inputs):
        if modality == "text":
            got = readers.from_pandas(inputs, text_column, id_column, "text", readers.TEXT_HEADERS)
        elif modality == "pocket":
            raise ValueError("pockets are given as (ligand_sdf, protein_pdb) pairs or a pocket file, not pandas")
        else:
            got = readers.from_pandas(inputs, smiles_column, id_column, "SMILES", readers.SMILES_HEADERS)
    elif _is_single(inputs, modality):
        single = True
        got = readers.Inputs([inputs], ["0"])
    elif isinstance(inputs, Iterable):
        items = list(inputs)
        got = readers.Inputs(items, [str(i) for i in range(len(items))])
    else:
        raise TypeError(f"cannot encode a {type(inputs).__name__}: give a str, a list, an RDKit Mol, "
                        "a pandas Series/DataFrame or a file path")
    if ids is not None:
        ids = [str(x) for x in ids]
        if len(ids) != len(got):
            raise ValueError(f"{len(ids)} ids for {len(got)} inputs")
        got = readers.Inputs(got.items, ids)
    return got, single


def encode(mb, inputs: Any, modality: str, *, batch_size: int | None = None,
           show_progress_bar: bool | None = None, normalize: bool = True, return_failures: bool = False,
           ids: Sequence[str] | None = None, smiles_column: str | None = None, text_column: str | None = None,
           id_column: str | None = None, id_property: str | None = None, delimiter: str | None = None,
           ligand_column: str | None = None, protein_column: str | None = None, padding: str = "buckets"):
    """Embeds `inputs` with `mb`'s `modality` tower (see the module docstring).

    batch_size: rows per jitted batch (default: the model's). show_progress_bar: a tqdm bar
    over batches (default: the model's `progress`). normalize: False gives the raw projections.
    ids: one id per input (overrides the ids the input form gives). The column / property /
    delimiter options apply to files (and DataFrames), as molbind-embed's flags.
    """
    if modality not in TOWERS:
        raise ValueError(f"modality must be one of {TOWERS}, got {modality!r}")
    got, single = collect(inputs, modality, ids=ids, smiles_column=smiles_column, text_column=text_column,
                          id_column=id_column, id_property=id_property, delimiter=delimiter,
                          ligand_column=ligand_column, protein_column=protein_column)
    emb = mb.embed_features(modality, mb.featurizer(modality), list(enumerate(got.items)), ids=got.ids,
                            normalize=normalize, batch_size=batch_size, progress=show_progress_bar,
                            padding=padding)
    if return_failures:
        return emb
    return emb.vectors[0] if single else emb.vectors

