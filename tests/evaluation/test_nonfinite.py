"""evaluate refuses non-finite embeddings (one clear error naming the pair, the modality and
the count; no report written), and the report refuses NaN metrics."""
import types

import numpy as np
import pytest

from molbind_data.featurize import graph as graph_feat
from molbind_jax.cli import InputError
from molbind_jax.evaluation import evaluate, report

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "ClCCl", "CCN(CC)CC", "OC(=O)CS"]


@pytest.fixture(scope="module")
def records():
    return [{"id": f"r{i}", "smiles": s, "text": f"text about {s}",
             "text_ids": np.arange(1, 5, dtype=np.int32), **graph_feat.smiles_to_graph(s)}
            for i, s in enumerate(SMILES)]


class FakeModel:
    """The MolBindModel interface evaluate.run uses; the text tower gives NaN rows `nan_rows`
    (all of them by default), the graph tower one-hot rows (a perfect model)."""

    def __init__(self, nan_rows=None):
        self.config = types.SimpleNamespace(modalities=("graph", "text"))
        self.import_report = None
        self.nan_rows = nan_rows

    def featurize_text(self, text, add_special_tokens=True):
        return {"text_ids": np.arange(1, 5 if add_special_tokens else 3, dtype=np.int32)}

    def embed_records(self, tower, recs, normalize=True, padding="buckets", batch_size=None):
        e = np.eye(len(recs), 8, dtype=np.float32)
        if tower == "text":
            e[slice(None) if self.nan_rows is None else self.nan_rows] = np.nan
        return e


def _run(monkeypatch, tmp_path, model, protocol):
    from molbind_jax.inference.api import MolBindModel
    monkeypatch.setattr(MolBindModel, "load", classmethod(lambda cls, *a, **k: model))
    return evaluate.run("fake_export", str(tmp_path), data_dir=None, pairs=["graph_text"],
                        records={"graph_text": RECORDS}, classification=False,
                        protocol=protocol)


RECORDS: list = []


@pytest.mark.parametrize("protocol", ["ours", "original", "both"])
def test_all_nan_text_rows_refused_no_report(records, monkeypatch, tmp_path, protocol):
    RECORDS[:] = records
    with pytest.raises(evaluate.NonFiniteEmbeddings,
                       match=r"graph_text: .*not finite.* 6 of 6 text rows \(first: \[0, 1, 2, 3, 4\]\)"):
        _run(monkeypatch, tmp_path, FakeModel(), protocol)
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "metrics.json").exists()
    assert issubclass(evaluate.NonFiniteEmbeddings, InputError)  # the CLI: one line, exit 2


def test_one_nan_row_is_refused_and_a_finite_model_is_not(records, monkeypatch, tmp_path):
    RECORDS[:] = records
    with pytest.raises(evaluate.NonFiniteEmbeddings, match="1 of 6 text rows"):
        _run(monkeypatch, tmp_path, FakeModel(nan_rows=[4]), "ours")
    # control: the same model with finite rows evaluates (the check is not too broad)
    res, _ = evaluate.evaluate_pair(FakeModel(nan_rows=[]), "graph_text", records,
                                    with_baselines=False)
    assert res["full"]["a2b"]["R@1"] == 1.0


def test_evaluate_pair_with_given_embeddings_checks_them(records):
    a = np.eye(6, 8, dtype=np.float32)
    b = a.copy()
    b[2, 3] = np.inf
    with pytest.raises(evaluate.NonFiniteEmbeddings, match="1 of 6 text rows"):
        evaluate.evaluate_pair(None, "graph_text", records, embeddings=(a, b))


def test_cli_wrapper_prints_one_error_line(records, monkeypatch, tmp_path, capsys):
    from molbind_jax import cli
    RECORDS[:] = records

    def main(argv):
        _run(monkeypatch, tmp_path, FakeModel(), "ours")

    with pytest.raises(SystemExit) as exit_:
        cli.run(main, argv=["evaluate"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars, then the error
    errors = [line for line in err if line.startswith("error:")]
    assert errors == [err[-1]] and "graph_text: " in err[-1] and "6 of 6 text rows" in err[-1]


def test_report_refuses_nan_metrics(tmp_path):
    results = {"retrieval": {"graph_text": {"full": {"a2b": {"R@1": float("nan"), "n": 3}},
                                            "curve": {"a2b": [0.5, np.float32(np.inf)]}}}}
    assert report.nonfinite_numbers(results) == ["retrieval.graph_text.full.a2b.R@1",
                                                 "retrieval.graph_text.curve.a2b[1]"]
    with pytest.raises(ValueError, match="2 metrics are not finite"):
        report.write_report(str(tmp_path / "out"), results)
    assert not (tmp_path / "out").exists()
