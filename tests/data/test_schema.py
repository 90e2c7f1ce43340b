"""The table of modalities and pair types (data_pipeline/schema.py) and what is derived from it:
the TFDS features of each stored pair type, size keys, views, the sources' PROVIDES and the
build command's refusal of pair types a source does not provide."""
import sys
import textwrap

import pytest

from molbind_data import build, schema

ORIGINAL_PAIRS = {"graph_text": ("graph", "text"), "conformer_text": ("conformer", "text"),
                  "graph_conformer": ("graph", "conformer"), "conformer_pocket": ("conformer", "pocket")}


def _view(monkeypatch, name, x, y, records_of):
    monkeypatch.setitem(schema.PAIR_TYPES, name, schema.PairType(name, x, y, records_of=records_of))


def test_lookups_list_the_known_names():
    assert schema.modality("graph").size_keys == ("graph_nodes", "graph_edges")
    assert schema.pair_type("conformer_pocket").modalities == ("conformer", "pocket")
    with pytest.raises(ValueError) as e:
        schema.modality("graf")
    assert "unknown modality 'graf'" in str(e.value)
    assert all(m in str(e.value) for m in schema.MODALITIES)
    with pytest.raises(ValueError) as e:
        schema.pair_type("text_graph")
    assert "unknown pair type 'text_graph'" in str(e.value)
    assert all(p in str(e.value) for p in schema.PAIR_TYPES)
    assert schema.check_pairs(["graph_text", "conformer_pocket"]) == ("graph_text", "conformer_pocket")
    with pytest.raises(ValueError, match="unknown pair type 'graph_txt'; known pair types: graph_text"):
        schema.check_pairs(["graph_text", "graph_txt"])


def test_the_originals_pair_types_are_stored_in_the_losss_orientation():
    for name, (x, y) in ORIGINAL_PAIRS.items():
        p = schema.pair_type(name)
        assert (p.x, p.y) == (x, y) and p.records_of is None and p.stored_as == name and p.doc
    assert set(ORIGINAL_PAIRS) <= set(schema.stored_pair_types())
    for name, p in schema.PAIR_TYPES.items():  # every pair names known modalities; views are not stored
        assert p.name == name and {p.x, p.y} <= set(schema.MODALITIES)
        assert (name in schema.stored_pair_types()) == (p.records_of is None)
    for name, m in schema.MODALITIES.items():
        assert m.name == name and m.size_keys and m.runtime == f"molbind_jax.modalities.{name}"
        assert m.identity in {f.name for f in m.stored + schema.COMMON}, name


def test_record_features_of_each_stored_pair():
    names = {p: [f.name for f in schema.record_features(p)] for p in ORIGINAL_PAIRS}
    assert names["graph_text"] == ["id", "smiles", "graph_node_feat", "graph_edge_index", "graph_edge_feat",
                                   "text", "text_ids"]
    assert names["conformer_text"] == ["id", "smiles", "conformer_tokens", "conformer_coords", "text", "text_ids"]
    assert names["graph_conformer"] == ["id", "smiles", "graph_node_feat", "graph_edge_index", "graph_edge_feat",
                                        "conformer_tokens", "conformer_coords"]
    assert names["conformer_pocket"] == ["id", "smiles", "conformer_tokens", "conformer_coords",
                                         "pocket_tokens", "pocket_coords", "target"]
    f = {x.name: x for x in schema.record_features("conformer_pocket")}
    assert f["conformer_coords"].dtype == "float32" and f["conformer_coords"].shape == (None, None, 3)
    assert f["pocket_coords"].shape == (None, 3) and f["target"].dtype == "text"
    g = {x.name: x for x in schema.record_features("graph_text")}
    assert g["graph_edge_index"].shape == (2, None) and g["text_ids"].dtype == "int32"
    for pair in schema.stored_pair_types():  # no field twice, the common ones first
        fields = [x.name for x in schema.record_features(pair)]
        assert len(fields) == len(set(fields)) and fields[:2] == ["id", "smiles"]


def test_a_views_fields_must_exist_in_its_source(monkeypatch):
    _view(monkeypatch, "text_graph", "text", "graph", records_of="graph_text")
    view = schema.pair_type("text_graph")
    assert view.stored_as == "graph_text" and "text_graph" not in schema.stored_pair_types()
    assert {f.name for f in schema.record_features("text_graph")} == {
        f.name for f in schema.record_features("graph_text")}
    _view(monkeypatch, "pocket_text", "pocket", "text", records_of="conformer_text")
    with pytest.raises(ValueError, match=r"view pocket_text reads conformer_text records, which lack "
                                         r"\['pocket_coords', 'pocket_tokens', 'target'\]"):
        schema.record_features("pocket_text")


def test_size_keys_x_then_y():
    assert schema.size_keys("graph_text") == ("graph_nodes", "graph_edges", "text")
    assert schema.size_keys("conformer_pocket") == ("conformer", "pocket")
    assert schema.size_keys("graph_conformer") == ("graph_nodes", "graph_edges", "conformer")
    for pair, p in schema.PAIR_TYPES.items():
        assert schema.size_keys(pair) == schema.modality(p.x).size_keys + schema.modality(p.y).size_keys
    with pytest.raises(ValueError, match="unknown pair type"):
        schema.size_keys("nope")


def test_the_builders_features_are_the_tables():
    pytest.importorskip("tensorflow_datasets")
    from molbind_data.molbind_pairs import builder

    assert builder.PAIRS == schema.stored_pair_types()
    assert [c.name for c in builder.MolbindMini.BUILDER_CONFIGS] == list(schema.stored_pair_types())
    for pair in schema.stored_pair_types():
        assert list(builder.features_for(pair).keys()) == [f.name for f in schema.record_features(pair)], pair


# ----------------------------------------------------------------------------- sources

def test_provided_pairs_of_the_sources():
    for source in ("mini", "m4", "pairs"):
        assert set(build.provided_pairs(source)) == set(ORIGINAL_PAIRS), source
    from molbind_data.sources import m4, mini, pairs

    assert build.provided_pairs("mini") == mini.PROVIDES and build.provided_pairs("m4") == m4.PROVIDES
    assert build.provided_pairs("pairs") == pairs.PROVIDES


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """Writes a source module declaring `provides` (None: no PROVIDES) and returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(provides):
        name = f"fake_schema_source_{len(made)}"
        line = "" if provides is None else f"PROVIDES = {tuple(provides)!r}\n"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(f'''
            """A source that only declares what it provides."""
            {line}'''))
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)


def test_provided_pairs_checks_the_declaration(fake_source, monkeypatch):
    assert build.provided_pairs(fake_source(["graph_conformer"])) == ("graph_conformer",)
    with pytest.raises(ValueError, match="unknown pair type 'graph_txt'; known pair types"):
        build.provided_pairs(fake_source(["graph_text", "graph_txt"]))
    with pytest.raises(ValueError, match="declares no PROVIDES"):
        build.provided_pairs(fake_source(None))
    _view(monkeypatch, "text_graph", "text", "graph", records_of="graph_text")
    with pytest.raises(ValueError, match=r"PROVIDES views \['text_graph'\].*\['graph_text'\]"):
        build.provided_pairs(fake_source(["graph_text", "text_graph"]))


def test_build_refuses_a_pair_its_source_does_not_provide(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    from molbind_data.sources import m4

    monkeypatch.setattr(m4, "PROVIDES", ("graph_text", "conformer_text"))
    with pytest.raises(ValueError, match=r"the m4 source does not provide 'conformer_pocket'; it provides "
                                         r"\('graph_text', 'conformer_text'\)"):
        build.build("m4", str(tmp_path), ["graph_text", "conformer_pocket"], verbose=False)
    _view(monkeypatch, "text_graph", "text", "graph", records_of="graph_text")
    with pytest.raises(ValueError, match=r"does not provide 'text_graph' \(a view of graph_text: build graph_text\)"):
        build.build("mini", str(tmp_path), "text_graph", verbose=False)
    with pytest.raises(ValueError, match="unknown pair type 'nope'; known pair types"):
        build.build("mini", str(tmp_path), ["nope"], verbose=False)
    with pytest.raises(ValueError, match="unknown source 'm5'"):
        build.build("m5", str(tmp_path), verbose=False)
    assert not any(tmp_path.iterdir())  # refused before anything was written
