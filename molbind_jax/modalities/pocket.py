"""3D protein pockets (pocket dictionary) through the pocket Uni-Mol tower; see atoms.py."""
from __future__ import annotations

from molbind_jax.modalities.atoms import AtomsSpec

SYNTHETIC_POCKET_ATOMS = 22  # [CLS] + 20 atoms + [SEP]


class PocketSpec(AtomsSpec):
    name = "pocket"
    config_key = "pocket"
    encoder_attr = "pocket_encoder"
    head_attr = "pro_proj"
    dictionary_name = "POCKET_DICTIONARY"
    export_dictionary = "pocket_dict.txt"
    molecule = False

    def synthetic(self, mol, *, text_vocab):
        return self.synthetic_record(mol["pocket_tokens"], mol["pocket_coords"])

    def synthetic_shapes(self, rows_per_shard):
        return {"pocket": -(-SYNTHETIC_POCKET_ATOMS // 8) * 8}

    def tower_config(self, preset):
        from molbind_jax.models.unimol import UniMolConfig

        return UniMolConfig.tiny(vocab_size=10) if preset == "tiny" else UniMolConfig.pocket()


SPEC = PocketSpec()
