"""index build -> search on a real tiny exported MolBind, through the command lines: one
process answers a file of queries; the built index and the brute-force .npy give the hits
computed in this process (ids from X.ids.txt, the NaN row of an empty text never returned);
mistakes are one `error:` line and exit status 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from molbind_jax.inference import index as ix
from molbind_jax.inference import search
from molbind_jax.inference.api import MolBindModel
from molbind_jax.models.bert import BertConfig
from molbind_jax.models.molbind import MolBind, MolBindConfig
from molbind_jax.training.export import write_export

# Exporting a tiny model and two searching processes that each load it: ~30-60 s.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = ["an aromatic acid", "a small alcohol", "", "a chlorinated solvent", "a sugar",
         "an amine base"]
QUERIES = ["an acid", "", "a solvent"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    cfg = MolBindConfig.tiny(bert=BertConfig.tiny(vocab_size=30522, max_position_embeddings=128,
                                                  use_token_type=False, dropout=0.0,
                                                  attention_dropout=0.0))
    return write_export(MolBind(cfg, rngs=nnx.Rngs(0)), cfg,
                        str(tmp_path_factory.mktemp("tiny") / "export"))


def _cli(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, ".pyshim"), REPO]))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_build_then_search_round_trip(export_dir, tmp_path):
    mb = MolBindModel.load(export_dir, batch_size=4)
    emb = mb.embed_texts(TEXTS)
    assert not emb.valid[2]  # the empty text is a NaN row
    npy = tmp_path / "texts.npy"
    np.save(npy, emb.vectors)
    (tmp_path / "texts.ids.txt").write_text("".join(f"T{i}\n" for i in range(len(TEXTS))))
    (tmp_path / "q.txt").write_text("\n".join(QUERIES) + "\n")

    built = _cli("molbind_jax.index", "build", f"--embeddings={npy}", f"--output={tmp_path / 'idx'}")
    assert built.returncode == 0, built.stderr[-2000:]
    assert "5 of 6 rows" in built.stdout and "1 non-finite rows excluded" in built.stdout

    q = mb.embed_texts(QUERIES)
    hits, ok = search.answer(ix.open_index(str(npy)), q.vectors, 3)
    want = search.hit_records([str(i) for i in range(3)], QUERIES, hits, ok, failures=q.failures)
    assert [r.get("id") for r in want if r["query_id"] == "0"][0] != "T2"

    for index, out in ((tmp_path / "idx", tmp_path / "hits.jsonl"), (npy, tmp_path / "hits.tsv")):
        res = _cli("molbind_jax.inference.search", f"--checkpoint={export_dir}", f"--index={index}",
                   f"--queries={tmp_path / 'q.txt'}", "--top_k=3", f"--output={out}")
        assert res.returncode == 0, res.stderr[-2000:]
        assert "2 of 3 queries answered" in res.stdout
        assert "query 1 failed: empty_text" in res.stderr
        if out.suffix == ".jsonl":
            got = [json.loads(line) for line in out.read_text().splitlines()]
        else:
            rows = [line.split("\t") for line in out.read_text().splitlines()]
            assert rows[0] == ["query_id", "rank", "row", "id", "score"]
            got = [dict(query_id=r[0], rank=int(r[1]), row=int(r[2]), id=r[3], score=float(r[4]))
                   for r in rows[1:]]
        want_hits = [r for r in want if "error" not in r or out.suffix == ".jsonl"]
        assert len(got) == len(want_hits) == (7 if out.suffix == ".jsonl" else 6)
        for g, w in zip(got, want_hits):
            for key in ("query_id", "rank", "row", "id", "error"):
                assert g.get(key) == w.get(key)
            if "score" in w:
                assert g["score"] == pytest.approx(w["score"], abs=1e-5)
        assert all(r.get("row") != 2 and r.get("id") != "T2" for r in got)


def test_search_cli_mistakes_are_one_error_line(export_dir, tmp_path):
    np.save(tmp_path / "x.npy", np.eye(4, 16, dtype=np.float32))
    for args, msg in [(("--top_k=-1", f"--index={tmp_path / 'x.npy'}", "--query-text=x"),
                       "--top_k must be at least 1, got -1"),
                      ((f"--index={tmp_path / 'missing.npy'}", "--query-text=x"),
                       "no such index or embeddings file")]:
        res = _cli("molbind_jax.inference.search", f"--checkpoint={export_dir}", *args)
        assert res.returncode == 2, res.stderr[-2000:]
        lines = res.stderr.strip().splitlines()
        assert lines[-1].startswith("error:") and msg in lines[-1]
        assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
