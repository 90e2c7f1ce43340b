"""3D conformations (molecule dictionary) through the molecule Uni-Mol tower; see atoms.py.

One conformer tower and head serve every conformer input: the 3D side of conformer_text and
graph_conformer and the ligand of conformer_pocket (as the original's `conf_encoder`).
"""
from __future__ import annotations

from molbind_jax.modalities.atoms import AtomsSpec
from molbind_jax.modalities.graph import SYNTHETIC_MAX_ATOMS


class ConformerSpec(AtomsSpec):
    name = "conformer"
    config_key = "conformer"
    encoder_attr = "conformer_encoder"
    head_attr = "conf_proj"
    dictionary_name = "MOL_DICTIONARY"
    export_dictionary = "mol_dict.txt"

    def synthetic(self, mol, *, text_vocab):
        return self.synthetic_record(4 + (mol["atoms"] % 6), mol["coords"])  # C N O S H Cl

    def synthetic_shapes(self, rows_per_shard):
        return {"conformer": -(-(SYNTHETIC_MAX_ATOMS + 2) // 8) * 8}

    def tower_config(self, preset):
        from molbind_jax.models.unimol import UniMolConfig

        return UniMolConfig.tiny(vocab_size=31) if preset == "tiny" else UniMolConfig.molecule()


SPEC = ConformerSpec()
