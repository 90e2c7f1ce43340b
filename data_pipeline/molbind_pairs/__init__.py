"""TFDS builders for MolBind pairs (molbind_mini, molbind_m4, molbind_pairs); see builder.py.

The builders are imported lazily (`from data_pipeline.molbind_pairs import MolbindMini`, or
`import data_pipeline.molbind_pairs.builder` to register them with TFDS) so that importing
`data_pipeline.molbind_pairs.parallel` in a spawned worker does not load TensorFlow.
"""

_BUILDER_NAMES = ("MolbindBuilderBase", "MolbindMini", "MolbindM4", "MolbindPairs", "PairConfig",
                  "features_for", "PAIRS", "SPLITS", "REPORT")


def __getattr__(name):
    if name in _BUILDER_NAMES:
        from data_pipeline.molbind_pairs import builder

        return getattr(builder, name)
    raise AttributeError(name)
