"""`config.init`: every tower from its backbone file, or from scratch only when the config says so.

Tiny backbones are written in the original layouts (tests/training/backbones.py); after
`train.build_model` the model's parameters and GIN BatchNorm statistics must equal the files,
and every way to get the block wrong must stop the start with an error naming the setting,
the file and (for a mismatch) the key.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from backbones import HEAD_KEYS, write_all, write_dictionary, write_gin, write_unimol
from molbind_data.featurize.dictionaries import MOL_SYMBOLS, POCKET_SYMBOLS
from molbind_jax.modalities import spec
from molbind_jax.training import pretrained, train
from molbind_jax.training.pretrained import InitError
from smoke_configs import smoke_config

TOWERS = ("text", "graph", "conformer", "pocket")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("backbones"))


def config_with(init: dict, scratch=()):
    cfg = smoke_config()
    # The smoke variant widens its text table to the MiniLM's ids; a text backbone brings its
    # own size (config.json), which an explicit override would contradict.
    cfg.model.overrides = dict(embed_dim=16)
    for k, v in init.items():
        setattr(cfg.init, k, v)
    cfg.init.scratch = tuple(scratch)
    return cfg


def flat(module, kind=nnx.Param) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(module, kind))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def loaded(files):
    model, mcfg, text_dir = train.build_model(config_with(files))
    return model, mcfg, text_dir


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_every_tower_equals_its_backbone(files, loaded):
    from molbind_jax.convert import bert, gin, unimol

    model, mcfg, text_dir = loaded
    assert text_dir == files["text"]
    # The text tower was sized from the directory's config.json (not the tiny preset).
    assert (mcfg.bert.hidden_size, mcfg.bert.num_layers, mcfg.bert.vocab_size) == (24, 3, 72)

    # Direct, hand-mapped checks against the torch tensors in the files.
    hf = spec("text").pretrained_state(files["text"])
    np.testing.assert_array_equal(model.text_encoder.embeddings.word_embeddings.embedding[...],
                                  hf["embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(model.text_encoder.layers[2].query.kernel[...],
                                  hf["encoder.layer.2.attention.self.query.weight"].T)
    hu = torch.load(files["graph"], weights_only=True)
    bn = model.graph_encoder.batch_norms[1]
    np.testing.assert_array_equal(bn.running_mean[...], hu["batch_norms.1.running_mean"].numpy())
    np.testing.assert_array_equal(bn.running_var[...], hu["batch_norms.1.running_var"].numpy())
    np.testing.assert_array_equal(model.graph_encoder.x_embedding1.embedding[...], hu["x_embedding1.weight"].numpy())
    for tower, attr in (("conformer", "conformer_encoder"), ("pocket", "pocket_encoder")):
        um = torch.load(files[tower], weights_only=True)["model"]
        enc = getattr(model, attr)
        np.testing.assert_array_equal(enc.embed_tokens[...], um["embed_tokens.weight"].numpy())
        # the scanned stack holds every layer's weights on a leading axis: layer 1 is row 1
        np.testing.assert_array_equal(enc.layers.fc1.kernel[...][1], um["encoder.layers.1.fc1.weight"].numpy().T)

    # Every parameter and statistic: the importers' own standalone load of the same files.
    ref_text, _ = bert.load(files["text"], use_token_type=False)
    assert_same(flat(model.text_encoder), flat(ref_text))
    ref_gin, _ = gin.load(files["graph"])
    assert_same(flat(model.graph_encoder), flat(ref_gin))
    assert_same(flat(model.graph_encoder, nnx.BatchStat), flat(ref_gin, nnx.BatchStat))
    for tower, attr in (("conformer", "conformer_encoder"), ("pocket", "pocket_encoder")):
        ref, _ = unimol.load(files[tower], files[f"{tower}_dictionary"])
        assert_same(flat(getattr(model, attr)), flat(ref))


def test_reports_list_ignored_heads_and_are_logged(files, caplog):
    cfg = config_with({"conformer": files["conformer"]}, scratch=("text", "graph", "pocket"))
    with caplog.at_level(logging.INFO, logger="molbind_jax.training.pretrained"):
        model, _, text_dir = train.build_model(cfg)
    assert text_dir == ""
    log = caplog.text
    assert "conformer tower initialised from " + files["conformer"] in log
    assert all(k in log for k in HEAD_KEYS)  # the pre-training heads, reported as ignored
    assert "graph tower starts from random weights" in log
    reports = pretrained.load(model, train.init_plan(cfg))
    assert set(reports) == {"conformer"} and sorted(reports["conformer"].ignored) == sorted(HEAD_KEYS)


def test_scratch_towers_are_untouched(files):
    only_graph = config_with({"graph": files["graph"]}, scratch=("text", "conformer", "pocket"))
    fresh = config_with({}, scratch=TOWERS)
    a, _, _ = train.build_model(only_graph)
    b, _, _ = train.build_model(fresh)
    for attr in ("text_encoder", "conformer_encoder", "pocket_encoder", "graph_proj"):
        assert_same(flat(getattr(a, attr)), flat(getattr(b, attr)))
    assert not np.array_equal(a.graph_encoder.x_embedding1.embedding[...], b.graph_encoder.x_embedding1.embedding[...])


def test_missing_path_names_it(files, tmp_path):
    for tower in ("graph", "conformer", "pocket"):
        missing = str(tmp_path / f"{tower}.pt")
        cfg = config_with({tower: missing}, scratch=[t for t in TOWERS if t != tower])
        with pytest.raises(InitError, match=f"init.{tower}=.*{tower}.pt.*no such file"):
            train.build_model(cfg)
    with pytest.raises(InitError, match="init.text=.*nowhere.*HF BERT directory"):
        train.build_model(config_with({"text": str(tmp_path / "nowhere")}, scratch=("graph", "conformer", "pocket")))


def test_weights_that_do_not_fit_name_path_and_key(tmp_path):
    wide = write_gin(tmp_path / "wide_gin.pth", emb_dim=24)  # the tiny preset's GIN is 16 wide
    cfg = config_with({"graph": wide}, scratch=("text", "conformer", "pocket"))
    with pytest.raises(InitError, match=r"init.graph=.*wide_gin.pth does not fit the configured graph_encoder"
                                        r"(.|\n)*x_embedding1.weight: checkpoint \(120, 24\) != expected \(120, 16\)"):
        train.build_model(cfg)
    # A pocket checkpoint given as the conformer tower: 10 token rows where 31 are configured.
    pocket = write_unimol(tmp_path / "pocket.pt", len(POCKET_SYMBOLS))
    cfg = config_with({"conformer": pocket}, scratch=("text", "graph", "pocket"))
    with pytest.raises(InitError, match=r"init.conformer=.*pocket.pt(.|\n)*embed_tokens.weight: checkpoint \(10, 32\)"):
        train.build_model(cfg)
    # A GIN without its BatchNorm running statistics is not a Hu backbone.
    sd = torch.load(write_gin(tmp_path / "gin.pth"), weights_only=True)
    torch.save({k: v for k, v in sd.items() if "running_" not in k}, tmp_path / "no_stats.pth")
    cfg = config_with({"graph": str(tmp_path / "no_stats.pth")}, scratch=("text", "conformer", "pocket"))
    with pytest.raises(InitError, match=r"no_stats.pth(.|\n)*missing key(.|\n)*batch_norms.0.running_mean"):
        train.build_model(cfg)


def test_unreadable_file_names_it(tmp_path):
    bad = tmp_path / "mol_pretrain.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = config_with({"conformer": str(bad)}, scratch=("text", "graph", "pocket"))
    with pytest.raises(InitError, match=r"init.conformer=.*mol_pretrain.pt: cannot read .*weights_only=True"):
        train.build_model(cfg)


def test_dictionary_must_follow_the_builtin_order(files, tmp_path):
    swapped = list(MOL_SYMBOLS)
    swapped[4], swapped[5] = swapped[5], swapped[4]  # N before C
    bad = write_dictionary(tmp_path / "dict_mol.txt", swapped)
    cfg = config_with({"conformer": files["conformer"], "conformer_dictionary": bad}, scratch=("text", "graph", "pocket"))
    with pytest.raises(InitError, match=r"init.conformer_dictionary=.*dict_mol.txt: line 5 holds 'N' where the "
                                        r"built-in dictionary has 'C'"):
        train.build_model(cfg)
    # Shorter (a symbol missing before [MASK]) and longer files.
    short = write_dictionary(tmp_path / "short.txt", POCKET_SYMBOLS[:-2])
    with pytest.raises(InitError, match=r"short.txt: the appended \[MASK\] holds '\[MASK\]' where the built-in "
                                        r"dictionary has 'H'"):
        pretrained.check(dict(scratch=TOWERS, pocket_dictionary=short))
    long = write_dictionary(tmp_path / "long.txt", list(POCKET_SYMBOLS[:-1]) + ["Zn"])
    with pytest.raises(InitError, match=r"long.txt: line 10 holds 'Zn' where the built-in dictionary has '\[MASK\]'"):
        pretrained.check(dict(scratch=TOWERS, pocket_dictionary=long))
    # [MASK] written in the file, blank lines and bare symbols are all fine.
    ok = tmp_path / "ok.txt"
    ok.write_text("\n".join(POCKET_SYMBOLS) + "\n\n")
    assert pretrained.check(dict(scratch=TOWERS, pocket_dictionary=str(ok))).dictionaries == {"pocket": str(ok)}
    with pytest.raises(InitError, match="init.pocket_dictionary=.*absent.txt.*no such file"):
        pretrained.check(dict(scratch=TOWERS, pocket_dictionary=str(tmp_path / "absent.txt")))


def test_towers_need_a_path_or_an_explicit_scratch(files):
    with pytest.raises(InitError, match=r"\['graph', 'pocket'\] have no pretrained weights(.|\n)*"
                                        r"--config.init.graph=PATH --config.init.pocket=PATH"):
        pretrained.check(dict(text=files["text"], conformer=files["conformer"]))
    with pytest.raises(InitError, match=r"\['graph'\] have a path in init and are listed in init.scratch"):
        pretrained.check(dict(graph=files["graph"], scratch=TOWERS))
    with pytest.raises(InitError, match=r"unknown tower\(s\) \['pockets'\]"):
        pretrained.check(dict(scratch=("text", "graph", "conformer", "pockets")))
    with pytest.raises(InitError, match=r"unknown init field\(s\) \['gin'\]"):
        pretrained.check(dict(gin=files["graph"], scratch=TOWERS))
    assert pretrained.check(dict(scratch="text, graph conformer,pocket")).scratch == TOWERS
    # The replaced setting is refused with a pointer to the new block.
    cfg = config_with({}, scratch=TOWERS)
    cfg.model.text_init = "minilm"
    with pytest.raises(InitError, match="model.text_init='minilm' is replaced by init.text"):
        train.build_model(cfg)


def test_minilm_shortcut_resolves_to_the_offline_directory():
    path = spec("text").resolve_init("minilm")
    assert os.path.exists(os.path.join(path, "config.json")) and os.path.exists(os.path.join(path, "model.safetensors"))
    assert pretrained.check(dict(text="minilm", scratch=("graph", "conformer", "pocket"))).text_dir == path


def test_init_plan_checks_the_pair_types_against_the_model(files):
    # A model of two towers (model.overrides.modalities): the config template's empty entries of
    # the other towers are no settings; the pair types it trains need its towers.
    cfg = config_with({"graph": files["graph"]}, scratch=("text",))
    cfg.model.overrides.modalities = ("text", "graph")
    cfg.pairs = ("graph_text",)
    assert train.model_config_from(cfg).modalities == ("text", "graph")
    plan = train.init_plan(cfg)
    assert plan.paths == {"graph": files["graph"]} and plan.scratch == ("text",) and plan.dictionaries == {}
    cfg.pairs = ("graph_text", "conformer_pocket", "graph_conformer")
    with pytest.raises(ValueError, match=r"need towers the model does not have: \{'conformer_pocket': \['conformer', "
                                         r"'pocket'\], 'graph_conformer': \['conformer'\]\} \(model modalities "
                                         r"\('text', 'graph'\); add them to model.overrides.modalities\)"):
        train.init_plan(cfg)
    cfg.pairs = ("graph_text", "graph_audio")
    with pytest.raises(ValueError, match=r"unknown pair type 'graph_audio'; known pair types: graph_text, "
                                         r"conformer_text, graph_conformer, conformer_pocket"):
        train.init_plan(cfg)
    # A path for a tower the model does not have is refused, naming the known fields.
    cfg.pairs = ("graph_text",)
    cfg.init.pocket = files["pocket"]
    with pytest.raises(InitError, match=r"unknown init field\(s\) \['pocket'\]; known for this model's towers: "
                                        r"\['graph', 'scratch', 'text'\]"):
        train.init_plan(cfg)


@pytest.mark.slow  # a real (tiny) launcher run: compiles the four pair programs
def test_m4_smoke_run_starts_from_backbones_with_the_derived_epoch(files, tmp_path):
    import json

    from lavis_reference import original_update_rates
    from molbind_jax.training.metric_writer import read_metrics
    from smoke_configs import m4_config

    cfg = m4_config("smoke")
    for k, v in files.items():
        setattr(cfg.init, k, v)
    cfg.init.scratch = ()
    cfg.num_devices, cfg.progress_bar, cfg.tensorboard = 2, False, False
    # 48 synthetic pairs per type = 3 micro-batches of 16 per epoch = 2 updates (accumulate 2).
    cfg.data.synthetic_pool = 48
    cfg.steps_per_epoch, cfg.total_steps, cfg.num_epochs = -1, -1, 3
    cfg.eval_every, cfg.checkpoint_every = 0, 100
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(cfg, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        run = json.load(f)
    assert run["text_dir"] == files["text"] and run["model"]["bert"]["hidden_size"] == 24
    assert (run["train"]["steps_per_epoch"], run["train"]["total_steps"], run["train"]["lr"]["warmup_steps"]) == (2, 6, 3)
    recs = [r for r in read_metrics(workdir) if not r.get("eval")]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in recs)
    np.testing.assert_allclose([r["learning_rate"] for r in recs], original_update_rates(3, 2, 3), rtol=2e-6)
