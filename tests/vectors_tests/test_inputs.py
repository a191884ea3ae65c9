"""Input loading and the bad-input errors (exit code 2 through the CLI)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embadvisor.advisor.cli import app
from embadvisor.errors import DataError
from embadvisor.vectors import load_vector_data

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((50, 8)).astype(np.float32)
    np.save(tmp_path / "docs.npy", docs)
    np.save(tmp_path / "q.npy", rng.standard_normal((6, 8)).astype(np.float32))
    pq.write_table(pa.table({"query_id": ["0", "1", "2"], "doc_id": ["3", "4", "5"], "relevance": [1, 2, 1]}),
                   tmp_path / "qrels.parquet")
    return tmp_path


def _recommend(path, *extra: str):
    return runner.invoke(app, ["recommend", "--task", "retrieval", "--budget", "1KB", "--trials", "1",
                               "--storage", f"sqlite:///{path / 'db.sqlite'}", *extra])


def test_loads_npy_parquet_ids_and_qrels(files) -> None:
    d = load_vector_data(files / "docs.npy", queries=files / "q.npy", qrels=files / "qrels.parquet")
    assert d.corpus.shape == (50, 8) and np.allclose(np.linalg.norm(d.corpus, axis=1), 1, atol=1e-6)
    assert d.qrels is not None and d.qrels[1] == {4: 2.0} and d.qrels[5] == {}
    # Parquet list column with an id column; TREC qrels
    x = np.load(files / "docs.npy")
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(50)], "emb": list(x)}), files / "docs.parquet")
    (files / "qrels.txt").write_text("0 0 d3 1\n2 0 d7 1\n")
    d2 = load_vector_data(files / "docs.parquet", queries=files / "q.npy", qrels=files / "qrels.txt",
                          similarity="dot")
    assert np.array_equal(d2.corpus, x) and d2.doc_ids[3] == "d3" and d2.qrels[2] == {7: 1.0}  # type: ignore[index]


@pytest.mark.parametrize(("case", "needle"), [
    ("dims", "query vectors have dimension 5 but the corpus vectors have 8"),
    ("nan", "has 2 rows with NaN or infinite values (rows 3, 9)"),
    ("empty", "is empty"),
    ("qrels", "names 1 unknown doc ids (e.g. '999')"),
    ("qrels_query", "names 1 unknown query ids (e.g. 'q-x')"),
])
def test_bad_inputs_exit_2_with_one_line(files, case: str, needle: str) -> None:
    args = ["--vectors", str(files / "docs.npy")]
    if case == "dims":
        np.save(files / "q5.npy", np.ones((3, 5), np.float32))
        args += ["--queries", str(files / "q5.npy")]
    elif case == "nan":
        x = np.load(files / "docs.npy")
        x[3, 1] = np.nan
        x[9, 0] = np.inf
        np.save(files / "docs.npy", x)
    elif case == "empty":
        np.save(files / "docs.npy", np.zeros((0, 8), np.float32))
    else:
        qid, did = ("0", "999") if case == "qrels" else ("q-x", "3")
        pq.write_table(pa.table({"query_id": [qid], "doc_id": [did]}), files / "bad.parquet")
        args += ["--queries", str(files / "q.npy"), "--qrels", str(files / "bad.parquet")]
    res = _recommend(files, *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert res.output.strip().count("\n") == 0 or len(res.output.strip().splitlines()) <= 3  # one (wrapped) line
    with pytest.raises(DataError):
        load_vector_data(files / "docs.npy", queries=files / "q5.npy" if case == "dims" else (
            files / "q.npy" if case.startswith("qrels") else None),
            qrels=files / "bad.parquet" if case.startswith("qrels") else None)


def test_console_script_exit_code_2(files) -> None:
    np.save(files / "q5.npy", np.ones((3, 5), np.float32))
    out = subprocess.run([sys.executable, "-m", "embadvisor", "recommend", "--task", "retrieval", "--budget", "1KB",
                          "--vectors", str(files / "docs.npy"), "--queries", str(files / "q5.npy"),
                          "--storage", f"sqlite:///{files / 'db.sqlite'}"], capture_output=True, text=True)
    assert out.returncode == 2 and "dimension 5" in out.stderr and "Traceback" not in out.stderr


def test_option_misuse_exit_2(files) -> None:
    res = _recommend(files, "--queries", str(files / "q.npy"))
    assert res.exit_code == 2 and "need --vectors" in res.output
    res = runner.invoke(app, ["recommend", "--task", "ctr", "--budget", "1KB", "--vectors", str(files / "docs.npy")])
    assert res.exit_code == 2 and "--task retrieval" in res.output
