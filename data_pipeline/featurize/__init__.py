"""Featurizers: raw molecules, structures and texts -> the stored record layout (docs/DESIGN.md).

Pure functions, deterministic given a seed, no JAX and no TF. A record that cannot be
featurized raises `SkipRecord` with a short, stable reason string; builders count skips by
reason instead of crashing.
"""


class SkipRecord(Exception):
    """A record that is skipped, with a stable reason (a key of the build report's `skipped`)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# Stable skip reasons, shared by every source so that reports can be compared.
INVALID_SMILES = "invalid_smiles"
NO_CONFORMER = "no_conformer"
EMPTY_TEXT = "empty_text"
UNKNOWN_ELEMENT = "unknown_element"
TOO_MANY_ATOMS = "too_many_atoms"
NO_POCKET_ATOMS = "no_pocket_atoms"
UNREADABLE_FILE = "unreadable_file"
EMPTY_MOLECULE = "empty_molecule"
DUPLICATE = "duplicate"
# Geometry (featurize/checks.py): coordinates that are not a usable 3D structure.
NONFINITE_COORDINATES = "nonfinite_coordinates"  # NaN or inf anywhere, never repaired
ZERO_COORDINATES = "zero_coordinates"  # two or more atoms, all at one point (e.g. all zero)
FLAT_COORDINATES = "flat_coordinates"  # a 2D depiction (all z equal, a tetrahedral atom)
TWO_D_FALLBACK = "2d_fallback"  # ETKDG failed and the flat 2D fallback is not allowed
