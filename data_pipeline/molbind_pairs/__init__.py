"""TFDS builders for MolBind pairs (molbind_mini, molbind_m4, molbind_pairs); see builder.py.

Importing this package registers the builders with TFDS (it imports builder.py, hence
TensorFlow), except inside a multiprocessing child: the featurization workers import
`molbind_data.molbind_pairs.parallel` and must start without loading TensorFlow. There the
builder names are still available lazily (module `__getattr__`).
"""
import multiprocessing as _mp

_BUILDER_NAMES = ("MolbindBuilderBase", "MolbindMini", "MolbindM4", "MolbindPairs", "PairConfig",
                  "features_for", "PAIRS", "SPLITS", "REPORT")

if _mp.parent_process() is None:
    from molbind_data.molbind_pairs.builder import (  # noqa: F401
        PAIRS, REPORT, SPLITS, MolbindBuilderBase, MolbindM4, MolbindMini, MolbindPairs, PairConfig,
        features_for)


def __getattr__(name):
    if name in _BUILDER_NAMES:
        from molbind_data.molbind_pairs import builder

        return getattr(builder, name)
    raise AttributeError(name)
