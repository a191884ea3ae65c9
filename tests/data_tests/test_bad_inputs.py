"""Issue #18's data inputs: each ends as one clear line and exit 2, or as a correct result (never a traceback)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embadvisor.advisor.cli import app
from embadvisor.data import load_ctr, open_source
from embadvisor.errors import DataError, EmbAdvisorWarning
from embadvisor.profiles.build import profile_data
from embadvisor.tasks.datasets import ctr_task_data, retrieval_task_data
from embadvisor.vectors.data import load_ids, load_qrels

runner = CliRunner()


def _one_line_error(args: list[str], *needles: str) -> str:
    """Run the CLI; assert exit 2 with a single ``error:`` line on stderr holding every needle."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.output, res.exception)
    err = res.stderr.strip()
    assert err.startswith("error:") and err.count("\n") == 0, err
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in err, err
    return err


def _csv(path: Path, rows: int, fields: int = 2) -> Path:
    lines = ["label," + ",".join(f"c{j}" for j in range(fields))]
    lines += [f"{i % 2}," + ",".join(f"v{(i + j) % 3}" for j in range(fields)) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- 1. qrels and id text files
def test_trec_qrels_bad_relevance_names_the_line(tmp_path: Path) -> None:
    q = tmp_path / "qrels.txt"
    q.write_text("1 0 a 1\n1 0 b high\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: the relevance \(4th column\) must be a finite number, but got "
                                        r"'high'"):
        load_qrels(q, ["1"], ["a", "b"])


def test_parquet_qrels_bad_relevance_names_the_row(tmp_path: Path) -> None:
    q = tmp_path / "qrels.parquet"
    pq.write_table(pa.table({"query_id": ["1", "1"], "doc_id": ["a", "b"], "relevance": ["1", "high"]}), q)
    with pytest.raises(DataError, match=r"row 2: `relevance` must be a finite number, but got relevance='high'"):
        load_qrels(q, ["1"], ["a", "b"])


@pytest.mark.parametrize("kind", ["ids", "qrels"])
def test_non_utf8_text_names_the_line(tmp_path: Path, kind: str) -> None:
    f = tmp_path / f"{kind}.txt"
    f.write_bytes(b"a\nb\xe9\n" if kind == "ids" else b"1 0 a 1\n1 0 b\xe9 1\n")
    with pytest.raises(DataError, match=r"line 2 is not UTF-8 text \(byte 0xe9\)\. Re-encode"):
        load_ids(f) if kind == "ids" else load_qrels(f, ["1"], ["a", "b"])


def test_cli_bad_qrels_exit_2(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "docs.npy", rng.standard_normal((20, 4)).astype(np.float32))
    np.save(tmp_path / "q.npy", rng.standard_normal((3, 4)).astype(np.float32))
    (tmp_path / "qrels.txt").write_text("0 0 3 1\n1 0 4 x\n", encoding="utf-8")
    _one_line_error(["recommend", "--task", "retrieval", "--budget", "1KB", "--vectors", str(tmp_path / "docs.npy"),
                     "--queries", str(tmp_path / "q.npy"), "--qrels", str(tmp_path / "qrels.txt"),
                     "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"], "line 2", "relevance")


# --------------------------------------------------------------------------- 2. CTR data of 1-2 rows
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_ctr_too_few_rows_for_the_split(tmp_path: Path, rows: int) -> None:
    with pytest.raises(DataError, match=f"has {rows} rows?, but CTR training needs at least 6 rows"):
        ctr_task_data(_csv(tmp_path / "tiny.csv", rows))
    assert ctr_task_data(_csv(tmp_path / "six.csv", 6)).ctr is not None


def test_cli_train_on_two_rows_exit_2(tmp_path: Path) -> None:
    _one_line_error(["train", "--task", "ctr", "--data", str(_csv(tmp_path / "tiny.csv", 2)), "--threads", "1"],
                    "needs at least 6 rows")


# --------------------------------------------------------------------------- 3. retrieval Parquet: struct, null ids
def test_retrieval_parquet_struct_column(tmp_path: Path) -> None:
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"user": [{"a": i % 5} for i in range(40)], "item": list(range(40))}), p)
    with pytest.raises(DataError, match=r"column 'user' of .* is struct<a: int64>, but id columns must hold "
                                        "integers or strings"):
        retrieval_task_data(p)


@pytest.mark.parametrize("column", ["user", "item"])
def test_retrieval_parquet_null_ids(tmp_path: Path, column: str) -> None:
    p = tmp_path / "n.parquet"
    ids = [i % 7 for i in range(60)]
    holes = [None if i % 10 == 3 else v for i, v in enumerate(ids)]
    pq.write_table(pa.table({"user": holes if column == "user" else ids,
                             "item": holes if column == "item" else list(range(60))}), p)
    with pytest.raises(DataError, match=f"6 interactions have no {column} id .*first at row 4"):
        retrieval_task_data(p)


def test_cli_retrieval_null_user_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "n.parquet"
    pq.write_table(pa.table({"user": [1, None, 2, 3] * 20, "item": list(range(80))}), p)
    _one_line_error(["train", "--task", "retrieval", "--data", str(p), "--threads", "1"], "have no user id")


def test_ctr_parquet_struct_column(tmp_path: Path) -> None:
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"label": [0, 1] * 10, "a": ["x", "y"] * 10, "s": [{"q": 1}, {"q": 2}] * 10}), p)
    with pytest.raises(DataError, match="column 's' of .* is struct<q: int64>.*leave it out with --fields"):
        profile_data(p)
    assert profile_data(p, fields=["a"]).field("a").cardinality == 2


# --------------------------------------------------------------------------- 4. symbolic-link loop
def test_symlink_loop(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(DataError, match="is a symbolic link loop"):
        profile_data(loop)
    for args in (["profile", str(loop)], ["recommend", "--budget", "1MB", "--data", str(loop)],
                 ["train", "--task", "retrieval", "--data", str(loop)]):
        _one_line_error(args, "symbolic link loop")


def test_broken_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link"
    os.symlink(tmp_path / "gone.csv", link)
    with pytest.raises(DataError, match="does not exist: it is a broken symbolic link"):
        open_source(link)


# --------------------------------------------------------------------------- 5. libfm values
@pytest.mark.parametrize(("fmt", "text", "needle"), [
    ("libfm", "1 3:1 4:1\n0 2:x 5:1\n", "line 2: a feature value is not a number ('0 2:x 5:1')"),
    ("libffm", "1 0:3:1 1:4:1\n0 0:2:x 1:5:1\n", "line 2: a feature value is not a number"),
    ("libfm", "1 3:1 4:1\n0 :1 5:1\n", "line 2: a feature has an empty index"),
])
def test_libfm_bad_value(tmp_path: Path, fmt: str, text: str, needle: str) -> None:
    f = tmp_path / f"a.{fmt}"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_ctr(f, fmt=fmt)
    assert needle in str(e.value) and str(f) in str(e.value)


# --------------------------------------------------------------------------- 6. wrong diagnoses
def test_csv_header_longer_than_64k(tmp_path: Path) -> None:
    names = ["label"] + [f"x{i}" for i in range(1, 20001)]  # a cut header would repeat e.g. 'x1'
    f = tmp_path / "wide.csv"
    f.write_text(",".join(names) + "\n" + ",".join(["1"] + ["a"] * 20000) + "\n"
                 + ",".join(["0"] + ["b"] * 20000) + "\n", encoding="utf-8")
    assert len(names[0]) + sum(len(n) + 1 for n in names[1:]) > 1 << 16
    src = open_source(f)
    assert src.layout.label == "label" and len(src.layout.fields) == 20000
    assert profile_data(f, fields=["x1", "x20000"]).num_rows == 2


def test_dev_null_is_not_reported_missing() -> None:
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    with pytest.raises(DataError, match="exists but is a character device, not a regular file"):
        profile_data("/dev/null")
    _one_line_error(["recommend", "--task", "retrieval", "--budget", "1KB", "--vectors", "/dev/null"],
                    "character device")


def test_avazu_without_click_and_label_click(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "ctr/avazu-10k/avazu_train"
    assert open_source(src, label="click").layout.label == "click"  # the actual label column is accepted
    lines = src.read_text(encoding="utf-8").splitlines()[:30]
    f = tmp_path / "noclick.csv"  # Kaggle's avazu test file: id, hour, C1, ... (no click)
    f.write_text("\n".join(",".join(c for j, c in enumerate(ln.split(",")) if j != 1) for ln in lines) + "\n",
                 encoding="utf-8")
    assert open_source(f).layout.label is None
    with pytest.raises(DataError, match=r"has no label column \(its avazu rows have 23 columns and no 'click'\), "
                                        "so label='click' cannot apply"):
        open_source(f, label="click")


# --------------------------------------------------------------------------- 7. a 5 MB field
@pytest.mark.parametrize("fmt", ["csv", "criteo"])
def test_field_of_5mb(tmp_path: Path, fmt: str) -> None:
    big = "z" * 5_000_000
    if fmt == "csv":
        rows = [f"{i % 2},x{i % 3},y" for i in range(40)]
        rows[20] = f"1,{big},y"
        text = "label,a,b\n" + "\n".join(rows) + "\n"
    else:
        cats = [f"{j:08x}" for j in range(26)]
        rows = ["\t".join(["0", *map(str, range(13)), *cats]) for _ in range(40)]
        rows[20] = "\t".join(["1", *map(str, range(13)), big, *cats[1:]])
        text = "\n".join(rows) + "\n"
    f = tmp_path / f"big.{fmt}"
    f.write_text(text, encoding="utf-8")
    prof = profile_data(f, fmt=fmt)
    name = "a" if fmt == "csv" else "C1"
    assert prof.num_rows == 40 and prof.field(name).cardinality == (4 if fmt == "csv" else 2)


# --------------------------------------------------------------------------- 8. huge num_embeddings in a profile
def test_huge_num_embeddings_names_file_and_field(tmp_path: Path) -> None:
    f = tmp_path / "huge.toml"
    f.write_text('version = 1\ntask = "ctr"\n\n[[fields]]\nname = "hour"\nnum_embeddings = 100000000000000000000\n',
                 encoding="utf-8")
    _one_line_error(["methods", "--solve", str(f), "--budget", "64MB"], "huge.toml", "hour.num_embeddings")


# --------------------------------------------------------------------------- 9. torch warnings on one field
def test_one_field_dlrm_trains_without_torch_warnings(tmp_path: Path) -> None:
    import torch

    from embadvisor.tasks.api import train
    from embadvisor.tasks.trainer import TrainConfig

    torch.set_num_threads(1)
    data = ctr_task_data(_csv(tmp_path / "one.csv", 60, fields=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(data, "full", dim=4, config=TrainConfig(batch_size=16, epochs=1, threads=1))
    torch_warnings = [w for w in caught if "torch" in w.filename]
    assert not torch_warnings, [str(w.message) for w in torch_warnings]
    assert np.isfinite(result.fit.validation["auc"])


# --------------------------------------------------------------------------- 10. nothing (or little) to evaluate
def _seq(path: Path, per_user: int, users: int = 30) -> Path:
    path.write_text("".join(" ".join(str(v) for v in [u, *((u + k) % 11 for k in range(per_user))]) + "\n"
                            for u in range(users)), encoding="utf-8")
    return path


def test_leave_last_out_with_single_interactions_is_refused(tmp_path: Path) -> None:
    f = _seq(tmp_path / "one.txt", 1)
    with pytest.raises(DataError, match=r"leaves nothing to evaluate: every user has a single interaction"):
        retrieval_task_data(f, protocol="leave-last-out")
    _one_line_error(["train", "--task", "retrieval", "--data", str(f), "--protocol", "leave-last-out"],
                    "leaves nothing to evaluate")


def test_leave_last_out_without_validation_warns(tmp_path: Path) -> None:
    with pytest.warns(EmbAdvisorWarning, match="leaves no validation interactions: no user has 3 or more"):
        td = retrieval_task_data(_seq(tmp_path / "two.txt", 2), protocol="leave-last-out")
    assert td.retrieval is not None and td.retrieval.test is not None


@pytest.mark.filterwarnings("default::embadvisor.errors.EmbAdvisorWarning")
def test_cli_prints_the_warning_as_one_line(tmp_path: Path) -> None:
    f = _seq(tmp_path / "two.txt", 2)
    res = runner.invoke(app, ["train", "--task", "retrieval", "--data", str(f), "--protocol", "leave-last-out",
                              "--threads", "1", "--epochs", "0.5", "--dim", "4"])
    assert res.exit_code == 0, (res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if "no validation interactions" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "EmbAdvisorWarning" not in res.stderr and "warnings.warn" not in res.stderr
