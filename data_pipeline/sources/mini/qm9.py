"""graph_conformer: QM9 DFT geometries with their SMILES (qm9pack 1.0.3)."""
from __future__ import annotations

import ast
import csv
import functools
import json
import os

import numpy as np

from molbind_data import featurize as fz

from .common import _hash_order, canonical, package_dir, split_of_smiles, take_per_split


@functools.lru_cache(maxsize=16)
def _graph_conformer_candidates(cap, seed) -> tuple:
    path = os.path.join(package_dir("qm9pack"), "data", "qm9_part1.csv")
    with open(path, encoding="utf-8") as f:
        rows = [(row["Index"], row) for row in csv.DictReader(f)]

    def stream():
        for index, row in _hash_order(rows, seed):
            smiles = canonical(row["SMILES"]) or row["SMILES"]  # an unparsable one is skipped later
            # The geometry is parsed in the worker (qm9_geometry), where a bad row is a counted skip.
            yield smiles, {"smiles": smiles, "qm9_elements": row["Elements"], "qm9_xyz": row["XYZ_Ang"],
                           "source": f"qm9:{index}"}

    return take_per_split(stream(), cap, lambda k, r: split_of_smiles(r["smiles"]))


def qm9_geometry(elements: str, xyz: str) -> tuple[list[str], np.ndarray]:
    """QM9's element list and XYZ_Ang JSON -> (atoms, coords [1, n, 3]).

    A few QM9 geometries are written with bare "0." floats or Mathematica exponents ("1.2*^-6"),
    which JSON rejects; Python's literal syntax reads both once "*^" is made "e".
    """
    try:
        atoms = ast.literal_eval(elements)
        try:
            values = json.loads(xyz)
        except ValueError:
            values = ast.literal_eval(xyz.replace("*^", "e"))
        coords = np.asarray(values, np.float32)
    except (ValueError, SyntaxError) as err:
        raise fz.SkipRecord(fz.UNREADABLE_FILE, f"QM9 geometry: {err}") from err
    if coords.ndim != 2 or coords.shape != (len(atoms), 3):
        raise fz.SkipRecord(fz.UNREADABLE_FILE, f"QM9 geometry of shape {coords.shape} for {len(atoms)} atoms")
    return list(atoms), coords[None]

