"""docs/data.md "Your own pairs": the one rule that finds a dataset for train and evaluate,
and (slow) the documented build -> train -> export -> evaluate -> embed block run as written."""
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from molbind_data import build
from molbind_data.cli import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fake_build(data_dir, dataset, pair, version="1.1.0"):
    d = os.path.join(data_dir, dataset, pair, version)
    os.makedirs(d)
    open(os.path.join(d, "dataset_info.json"), "w").write("{}")


def test_a_missing_user_dataset_names_the_data_dir_and_the_build_command(tmp_path):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(InputError) as err:
        build.resolve_data_dir("molbind_pairs", data_dir, ("graph_text",), data_dir_flag="--config.data.data_dir")
    message = str(err.value)
    assert f"molbind_pairs has no graph_text in data_dir {data_dir}" in message
    assert (f"python -m molbind_data.build --source=pairs --input=YOUR_PAIRS.csv --pair=graph_text "
            f"--data_dir={data_dir}") in message and "--config.data.data_dir" in message
    _fake_build(data_dir, "molbind_pairs", "graph_text")
    assert build.resolve_data_dir("molbind_pairs", data_dir, ("graph_text",)) == data_dir
    # a view (smiles_text reads graph_text's records) needs the pair type it reads
    assert build.resolve_data_dir("molbind_pairs", data_dir, ("smiles_text",)) == data_dir
    with pytest.raises(InputError, match=r"no conformer_text in data_dir .*built there: graph_text"):
        build.resolve_data_dir("molbind_pairs", data_dir, ("graph_text", "conformer_text"))
    with pytest.raises(InputError, match="--source=m4 --manual_dir="):
        build.resolve_data_dir("molbind_m4", data_dir)


def test_train_finds_a_users_build_without_build_if_missing(tmp_path, monkeypatch):
    """The flags a user gives (dataset, data_dir) are enough; a relative data_dir is saved absolute."""
    from ml_collections import ConfigDict

    from molbind_jax.training import train

    monkeypatch.chdir(tmp_path)
    config = ConfigDict({"pairs": ("graph_text",), "data": {"source": "tfds", "dataset": "molbind_pairs",
                                                            "data_dir": "tfds", "build_if_missing": True}})
    with pytest.raises(InputError, match=r"no graph_text in data_dir .*tfds; build it with `python -m molbind_data"):
        train._ensure_data(config)
    _fake_build(str(tmp_path / "tfds"), "molbind_pairs", "graph_text")
    train._ensure_data(config)
    assert config.data.data_dir == str(tmp_path / "tfds")


def test_evaluate_reads_the_runs_data_from_its_config(tmp_path):
    run_data = build.resolve_run_data
    data_dir = str(tmp_path / "tfds")
    _fake_build(data_dir, "molbind_pairs", "graph_text")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"pairs": ["graph_text"], "data": {
        "source": "tfds", "dataset": "molbind_pairs", "data_dir": data_dir}}}))
    assert run_data(str(run), None, None) == ("molbind_pairs", data_dir, ("graph_text",))
    # flags given win; another dataset than the run's does not take the run's data_dir
    other = str(tmp_path / "other")
    _fake_build(other, "molbind_pairs", "graph_text")
    assert run_data(str(run), None, other, ["graph_text"]) == ("molbind_pairs", other, ("graph_text",))
    with pytest.raises(InputError, match=r"molbind_m4 has no any pair type in data_dir .*--data_dir"):
        run_data(str(run), "molbind_m4", None)
    (run / "config.json").write_text(json.dumps({"train": {"pairs": ["graph_text"], "data": {
        "source": "tfds", "dataset": "molbind_pairs", "data_dir": str(tmp_path / "moved")}}}))
    with pytest.raises(InputError, match=r"moved; build it with .* or point --data_dir"):
        run_data(str(run), None, None)


def _documented_commands() -> list[list[str]]:
    text = open(os.path.join(REPO, "docs", "data.md"), encoding="utf-8").read()
    section = text[text.index("### Your own pairs"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line) for line in block.splitlines() if line.strip()]
    for cmd in commands:
        assert cmd[0] == ".venv/bin/python", cmd
        cmd[0] = sys.executable
        cmd[:] = [a.replace("experiments/configs/", os.path.join(REPO, "experiments", "configs", "")) for a in cmd]
    return commands


TRAIN = ["CCO", "CCN", "CCCN", "CCCCO", "CC(C)O", "CC(C)N", "CCOC", "CCCl", "CC=O", "CC(=O)O", "OCCO", "NCCN",
         "c1ccccc1", "c1ccoc1", "c1ccsc1", "C1CCCCC1"]
VALIDATION = ["COC", "CCBr", "CC(=O)N", "c1ccncc1"]
TEST = ["CCCO", "C1CCC1", "C1CC1", "c1ccc2ccccc2c1"]


@pytest.mark.slow
def test_documented_pairs_chain_runs_as_written(tmp_path):
    with open(tmp_path / "my_pairs.csv", "w") as f:
        f.write("SMILES,Text,split\n")  # the header as users write it
        for split, mols in (("train", TRAIN), ("validation", VALIDATION), ("test", TEST)):
            f.writelines(f'{m},"The molecule {m}, a small compound.",{split}\n' for m in mols)
    (tmp_path / "molecules.txt").write_text("".join(m + "\n" for m in TEST + ["not-a-smiles"]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(REPO, ".pyshim"), REPO,
                                                         os.environ.get("PYTHONPATH", "")])}
    env.pop("TFDS_DATA_DIR", None)
    outputs = []
    for cmd in _documented_commands():
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, (cmd, res.stdout[-3000:], res.stderr[-3000:])
        outputs.append(res)
    report = json.load(open(tmp_path / "data/my_tfds/molbind_pairs/graph_text/1.3.0/build_report.json"))
    assert report["splits"] == {"train": {"read": 16, "written": 16, "skipped": {}},
                                "validation": {"read": 4, "written": 4, "skipped": {}},
                                "test": {"read": 4, "written": 4, "skipped": {}}}
    saved = json.load(open(tmp_path / "runs/my_pairs/config.json"))
    assert saved["train"]["data"]["data_dir"] == str(tmp_path / "data/my_tfds")
    metrics = json.load(open(tmp_path / "runs/my_pairs/metrics.json"))
    assert list(metrics["retrieval"]) == ["graph_text"] and metrics["retrieval"]["graph_text"]["n"] == 4
    emb = np.load(tmp_path / "molecules.npy")
    assert emb.shape == (5, 16) and np.isnan(emb[4]).all()
    np.testing.assert_allclose(np.linalg.norm(emb[:4], axis=1), 1.0, rtol=1e-5)
