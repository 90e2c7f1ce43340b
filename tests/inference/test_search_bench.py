"""experiments/benchmarks/search.py at a tiny size: every method runs, brute force and the
exact index agree, the table and the JSON carry the load and the memory."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_search_benchmark_tiny(tmp_path):
    out = tmp_path / "search.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, ".pyshim"), REPO]))
    res = subprocess.run([sys.executable, "experiments/benchmarks/search.py", "--rows=2000",
                          "--dim=64", "--queries=50", "--centers=50", "--nprobes=2,45",
                          "--ef_searches=16", f"--output={out}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    methods = {m["method"]: m for m in data["methods"]}
    assert list(methods) == ["brute_force (numpy)", "faiss exact", "faiss ivf nprobe=2",
                             "faiss ivf nprobe=45", "faiss hnsw ef_search=16"]
    assert methods["faiss exact"]["recall"] == 1.0
    assert methods["faiss ivf nprobe=45"]["nlist"] == 45  # sqrt(2000) cells: all probed = exact
    assert methods["faiss ivf nprobe=45"]["recall"] == 1.0
    assert all(0 < m["recall"] <= 1 and m["qps"] > 0 and m["peak_mib"] > 0
               for m in data["methods"])
    assert len(data["load_start"]) == 3 and data["rows"] == 2000 and data["dim"] == 64
    assert "| faiss hnsw ef_search=16 |" in res.stdout and "load average" in res.stdout
