"""A tiny, randomly initialised exported MolBind shared by the inference tests (one build and
one load per session: building, exporting and loading even a tiny model takes ~15-30 s on a
shared CPU)."""
import pytest
from flax import nnx

from molbind_jax.inference.api import MolBindModel
from molbind_jax.models.bert import BertConfig
from molbind_jax.models.molbind import MolBind, MolBindConfig
from molbind_jax.training.export import write_export


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    # MiniLM vocabulary (the exported tokenizer) and 128 positions; everything else tiny.
    cfg = MolBindConfig.tiny(bert=BertConfig.tiny(vocab_size=30522, max_position_embeddings=128,
                                                  use_token_type=False, dropout=0.0,
                                                  attention_dropout=0.0))
    model = MolBind(cfg, rngs=nnx.Rngs(0))
    return write_export(model, cfg, str(tmp_path_factory.mktemp("tiny") / "export"))


@pytest.fixture(scope="session")
def mb(export_dir):
    return MolBindModel.load(export_dir, batch_size=4)
