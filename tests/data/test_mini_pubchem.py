"""molbind_mini's PubChem part: the table reader, the graph_text recipe and the IUPAC task."""
import pytest

from molbind_data.sources import mini
from molbind_data.sources.mini import pubchem, tasks

# Rows in the table's layout: CID, CAS, formula, MW, SMILES, InChI, InChIKey, IUPAC, common, synonyms...
ROWS = [
    ["19", "303-38-8", "C7H6O4", "154.1", "C1=CC(=C(C(=C1)O)O)C(=O)O", "x", "GLDQAMYCGOIJDV-UHFFFAOYSA-N",
     "2,3-bis(oxidanyl)benzoic acid", "2,3-dihydroxybenzoic acid", "303-38-8", "o-pyrocatechuic acid",
     "benzoic acid, 2,3-dihydroxy-", "2,3-dihydroxybenzoicacid", "dobk123456", "|a-catechuate",
     "2,3  dihydroxy benzoic acid ", "875-28-5 (hydrochloride salt)", "ff124556-a828-490b-b324-9ae859b695fa"],
    ["75983", "2752-19-4", "C36H27O3P", "538.6", "P(Oc1ccccc1-c1ccccc1)(Oc1ccccc1-c1ccccc1)Oc1ccccc1-c1ccccc1",
     "x", "DAZUWKNHFLGZSN-UHFFFAOYSA-N", "tris(2-phenylphenyl) phosphite", "2752-19-4"],
    ["7", "1-1-1", "C2H6O", "46", "CCO", "x", "LFQSCWFLJHTTHZ-UHFFFAOYSA-N", "ethanol", "ethanol", "alcohol"],
    ["8", "", "C2H3O2-", "59", "CC(=O)[O-]", "x", "QTBSBXVTEAMEQO-UHFFFAOYSA-M", "acetate", "acetate"],
    ["9", "", "C6H14Sn", "1", "CC[Sn](CC)CC", "x", "AAAAAAAAAAAAAA-UHFFFAOYSA-N", "triethylstannane", "x"],
    ["10", "", "C2H6O.HCl", "1", "CCO.Cl", "x", "BBBBBBBBBBBBBB-UHFFFAOYSA-N", "ethanol hydrochloride", "x"],
]


def test_reader_keeps_organic_single_fragments_with_a_readable_iupac_name():
    mols = [pubchem.parse_row(r) for r in ROWS]
    # kept: two aromatics and ethanol (3 heavy atoms); left out: an ion, tin, a salt (two fragments)
    assert [m is not None for m in mols] == [True, True, True, False, False, False]
    dhba, phosphite = mols[0], mols[1]
    assert dhba.iupac == "2,3-bis(oxidanyl)benzoic acid" and dhba.common == "2,3-dihydroxybenzoic acid"
    assert phosphite.common == ""  # a CAS number is not a name
    assert pubchem.parse_row(ROWS[0][:5]) is None  # a short row


def test_names_are_normalised_and_codes_dropped():
    assert pubchem.normalize_name("  2,3  dihydroxy\tbenzoic acid ;") == "2,3 dihydroxy benzoic acid"
    for bad in ("303-38-8", "dobk123456", "m568", "|a-catechuate", "benzoic acid, 2,3-dihydroxy-",
                "ff124556-a828-490b-b324-9ae859b695fa", "875-28-5 (hydrochloride salt)", "a;b", "x" * 61,
                "adenine (8ci)", ""):
        assert not pubchem.readable_name(bad), bad
    for good in ("o-pyrocatechuic acid", "2,3-dihydroxybenzoic acid", "5.alpha.-androstan-3-one", "bzp acid"):
        assert pubchem.readable_name(good), good
    # Same name up to case / spacing / punctuation: kept once; the IUPAC and common names are not repeated.
    assert pubchem.synonyms(pubchem.parse_row(ROWS[0])) == ["o-pyrocatechuic acid"]


def test_text_recipe():
    dhba = pubchem.parse_row(ROWS[0])
    assert pubchem.pubchem_text(dhba) == ("2,3-dihydroxybenzoic acid. IUPAC name: 2,3-bis(oxidanyl)benzoic acid. "
                                          "Synonyms: o-pyrocatechuic acid.")
    # No common name and no synonym: the IUPAC name alone; never an empty text, never a CAS number.
    text = pubchem.pubchem_text(pubchem.parse_row(ROWS[1]))
    assert text == "IUPAC name: tris(2-phenylphenyl) phosphite."
    # A synonym leads when the common name is not readable.
    row = ROWS[1][:9] + ["tribiphenylyl phosphite", "tris(o-biphenylyl) phosphite"]
    assert pubchem.pubchem_text(pubchem.parse_row(row)) == (
        "tribiphenylyl phosphite. IUPAC name: tris(2-phenylphenyl) phosphite. Synonyms: tris(o-biphenylyl) phosphite.")


def test_packaged_table_texts_are_never_empty_and_hold_no_registry_number():
    mols = pubchem.pubchem_molecules()
    assert len(mols) > 40_000 and len({m.inchikey for m in mols}) == len(mols)
    for mol in mols[:3000]:
        text = pubchem.pubchem_text(mol)
        assert f"IUPAC name: {mol.iupac}." in text and text == " ".join(text.split())
        assert mol.cid not in text.split() and not pubchem._LONG_NUMBER.search(text.replace(mol.iupac, ""))


def _mol(cid, smiles, key, iupac, *names):
    return pubchem.parse_row([cid, "", "C9", "1", smiles, "x", key, iupac, *names])


def test_iupac_task_holds_molecules_of_the_split_with_names_of_one_skeleton():
    # Acyclic molecules spread over the splits (the scaffold is the molecule itself).
    mols = [_mol(str(n), "C" * n + "O", f"K{n:013d}-UHFFFAOYSA-N", f"alkan-{n}-ol", f"common-{n}-name") for n in range(3, 63)]
    rows = [[m.cid, "", "C", "1", m.smiles, "x", m.inchikey, m.iupac, m.common] for m in mols]
    test = [m for m in mols if mini.split_of_smiles(mini.canonical(m.smiles)) == "test"]
    train = [m for m in mols if mini.split_of_smiles(mini.canonical(m.smiles)) == "train"]
    assert len(test) >= 3 and train
    # The first test molecule's IUPAC name is also a synonym of a training molecule: left out.
    rows.append(["99", "", "C", "1", train[0].smiles, "x", train[0].inchikey, "x", test[0].iupac])
    # The second one's is the name of a ChEBI molecule of another skeleton: left out.
    task = tasks.iupac_task("test", molecules=mols, rows=rows, other_names={test[1].iupac: "ZZZ-ZZ-N"},
                            num_candidates=50)
    names = set(task["candidates"])
    assert test[0].iupac not in names and test[1].iupac not in names
    assert names == {m.iupac for m in test[2:]}
    for q in task["queries"]:
        assert mini.split_of_smiles(q["smiles"]) == "test"
        assert task["candidates"][q["labels"][0]] == next(m.iupac for m in mols if mini.canonical(m.smiles) == q["smiles"])
    with pytest.raises(ValueError, match="unknown split"):
        tasks.iupac_task("dev", molecules=mols, rows=rows, other_names={})


def test_name_fields_of_the_recipes():
    fields = tasks.name_fields("Ethanol is a primary alcohol. An alcohol. IUPAC name: ethanol. Synonyms: a; b c.")
    assert {"ethanol", "a", "b c", "primary alcohol"} - {"primary alcohol"} <= fields
    assert tasks.names_in_texts(["ethanol", "propanol", "B C"], ["x. Synonyms: b c.", "Ethanol is a thing."]) == {
        "ethanol", "B C"}


def test_a_pubchem_graph_text_record_featurizes():
    from molbind_data import schema

    stream = pubchem.graph_text_stream(0, molecules=[pubchem.parse_row(ROWS[0]), pubchem.parse_row(ROWS[0])])
    records = list(stream)
    assert len(records) == 1  # the same molecule once
    key, raw = records[0]
    assert raw["source"] == "pubchem:19" and raw["smiles"] == mini.canonical(raw["smiles"]) == key
    example = mini.featurize("graph_text", raw, {})
    assert set(example) | {"id"} == {f.name for f in schema.record_features("graph_text")}
    assert example["text"].strip() == raw["text"] and f"IUPAC name: {raw['iupac']}." in raw["text"]


@pytest.mark.slow
def test_iupac_task_molecules_and_names_are_absent_from_training_texts():
    # graph_text (ChEBI + ~5k PubChem) and part of conformer_text: no IUPAC-task molecule in train /
    # validation, and no candidate name standing as a name in any of their texts. (Run once with the
    # default caps, 30k graph_text: passed too, in 219 s; docs/data.md.)
    task = tasks.iupac_task("test", num_candidates=500)
    assert len(task["candidates"]) == 500 == len(set(task["candidates"])) == len(task["queries"])
    queries = {q["smiles"] for q in task["queries"]}
    small = mini.candidates("graph_text", {"max_records": 300})
    assert small and all("source" not in r for _, r in small)  # a small cap: ChEBI molecules only
    full = mini.candidates("graph_text", {"max_records": {"graph_text": 12000}})
    chebi = [r for _, r in full if "source" not in r]
    assert len(chebi) == len(mini.chebi_molecules()) and full[:len(chebi)] == tuple((r["smiles"], r) for r in chebi)
    texts = []
    for pair, opts in (("graph_text", {"max_records": {"graph_text": 12000}}),
                       ("conformer_text", {"max_records": {"conformer_text": 300}})):
        for split in ("train", "validation"):
            records = [r for _, r in mini.raw_records(pair, split, opts)]
            assert not queries & {r["smiles"] for r in records}
            texts += [r["text"] for r in records]
    assert len(texts) > 10_000
    assert tasks.names_in_texts(task["candidates"], texts) == set()
