"""Bad CLI inputs of issue #18: each ends as one clear stderr line and exit code 2, never a traceback or a hang.

Most cases pass a data path that does not exist: the input under test must be refused before any data is
read (the old code read the data first, or trained, or started processes). Inputs that used to hang run in
a subprocess with a timeout, so a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embadvisor.advisor.cli import app

runner = CliRunner()
NO_DATA = "/no/such/data.csv"


def one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert "Traceback" not in res.output and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess (a hang fails the test through the timeout)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "embadvisor", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def sub_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------------------- 1. budgets
@pytest.mark.parametrize("budget", ["1e400", "1e400MB", "2000PB"])
@pytest.mark.parametrize("cmd", [["methods", "--solve", "criteo-kaggle", "--budget"],
                                 ["recommend", "--data", NO_DATA, "--budget"],
                                 ["pareto", "--data", NO_DATA, "--budgets"]])
def test_budgets_that_overflow_floats_are_refused(cmd: list[str], budget: str) -> None:
    # 1e400 used to raise OverflowError in the solvers (int too large to convert to float)
    one_line_error(runner.invoke(app, [*cmd, budget]), "larger than 1 EB")


@pytest.mark.parametrize("budget", ["1e999999999", "1e-999999999", "0e999999999"])
def test_budgets_with_huge_exponents_do_not_hang(budget: str) -> None:
    # Fraction("1e999999999") built an integer of a billion digits
    sub_one_line_error(run_cli("methods", "--solve", "criteo-kaggle", "--budget", budget), "budget must be")


# ---------------------------------------------------------------------------- 2. dims
def test_profile_dim_is_bounded_and_named(tmp_path: Path) -> None:
    p = tmp_path / "bigdim.json"
    p.write_text(json.dumps({"version": 1, "task": "ctr", "embedding_dim": 10**9,
                             "fields": [{"name": "a", "num_embeddings": 1000}]}))
    # used to hang in DPQ's divisor search, linear in the dim
    sub_one_line_error(run_cli("methods", "--solve", str(p), "--budget", "64MB"),
                       str(p), "`embedding_dim` must be an integer in [1, 65536]", "embedding_dim=1000000000")
    one_line_error(runner.invoke(app, ["profile", NO_DATA, "--dim", "100000"]), "--dim must be at most 65536")


def test_factor_searches_are_sublinear_in_the_dim() -> None:
    code = ("from embadvisor.methods._pq import divisors\n"
            "from embadvisor.methods.optembed import choose_dim\n"
            "assert divisors(36) == [1, 2, 3, 4, 6, 9, 12, 18, 36] and divisors(1) == [1] and divisors(49)[-2:] == [7, 49]\n"
            "assert divisors(10**12)[-1] == 10**12 and len(divisors(10**12)) == 169\n"
            "assert choose_dim(1000, 10**12, 1000, 4000 * 37, 4, 0) == 37\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------- 3. memory
def test_train_refuses_tables_larger_than_memory_naming_the_estimate(shared_data: Path) -> None:
    proc = run_cli("train", "--task", "ctr", "--data", str(shared_data / "ctr/movielens-100k/u.data"),
                   "--dim", "100000000", "--threads", "1", timeout=120)
    err = sub_one_line_error(proc, "training full on", "at dim 100000000", "needs about", "TiB",
                             "this machine has", "Lower --dim")
    assert "analytic estimate" in err


def test_train_memory_check_uses_physical_memory(shared_data: Path, monkeypatch) -> None:
    import embadvisor._checks as checks

    monkeypatch.setattr(checks, "physical_memory_bytes", lambda: 100_000)
    res = runner.invoke(app, ["train", "--task", "ctr", "--data", str(shared_data / "ctr/movielens-100k/u.data"),
                              "--method", "hash", "--threads", "1"])
    one_line_error(res, "training hash on", "at dim 16", "but this machine has 97.7 KiB")


# ---------------------------------------------------------------------------- 4. workers
def test_workers_are_capped_before_anything_starts(tmp_path: Path) -> None:
    cap = 4 * (os.cpu_count() or 1)
    res = runner.invoke(app, ["recommend", "--budget", "1MB", "--data", NO_DATA, "--workers", str(cap + 1),
                              "--storage", str(tmp_path / "s.log")])
    one_line_error(res, f"`workers` must be an integer in [1, {cap}]", f"workers={cap + 1}")
    assert not (tmp_path / "s.log").exists()


# ---------------------------------------------------------------------------- 5. outputs
def test_outputs_into_missing_folders_are_refused_first(tmp_path: Path) -> None:
    missing = tmp_path / "nodir"
    needle = f"({str(missing)!r} does not exist)"
    one_line_error(runner.invoke(app, ["profile", "--preset", "avazu", "-o", str(missing / "p.toml")]), needle)
    one_line_error(runner.invoke(app, ["profile", NO_DATA, "-o", str(missing / "p.toml")]), needle)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    one_line_error(runner.invoke(app, ["export", "no-such-study", "--storage", storage, "-o", str(missing / "c.toml")]),
                   needle)
    # before the search (and before the data is read), not after it
    one_line_error(runner.invoke(app, ["recommend", "--budget", "1MB", "--data", NO_DATA, "--storage", storage,
                                       "-o", str(missing / "c.toml")]), needle)
    (tmp_path / "dir.toml").mkdir()
    one_line_error(runner.invoke(app, ["export", "s", "--storage", storage, "-o", str(tmp_path / "dir.toml")]),
                   "which is a directory")


def test_profile_written_to_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    from embadvisor.errors import DataError
    from embadvisor.profiles import get_preset, save_profile

    with pytest.raises(DataError, match="must be in an existing directory"):
        save_profile(get_preset("avazu"), tmp_path / "nodir" / "p.json")


# ---------------------------------------------------------------------------- 6. seeds
@pytest.mark.parametrize("seed", ["-1", str(2**70), str(2**32)])
@pytest.mark.parametrize("cmd", [["train", "--task", "ctr", "--data", NO_DATA],
                                 ["recommend", "--budget", "1MB", "--data", NO_DATA],
                                 ["pareto", "--budgets", "1MB", "--data", NO_DATA],
                                 ["synth", "avazu", "--rows", "10", "-o", "/no/such/dir/x.parquet"]])
def test_seeds_outside_32_bits_are_refused(cmd: list[str], seed: str) -> None:
    one_line_error(runner.invoke(app, [*cmd, "--seed", seed]), "`seed` must be an integer in [0, 4294967295]",
                   f"seed={seed}")


def test_the_largest_seed_is_accepted() -> None:
    from embadvisor._checks import MAX_SEED, check_seed

    assert check_seed(0) == 0 and check_seed(MAX_SEED) == 2**32 - 1


# ---------------------------------------------------------------------------- 7. profiles (see profiles_tests)
@pytest.mark.parametrize(("value", "needle"), [("true", "a.num_embeddings=True"),
                                               ("1" + "0" * 30, "a.num_embeddings=1" + "0" * 30)])
def test_bad_num_embeddings_name_the_file_and_field(tmp_path: Path, value: str, needle: str) -> None:
    p = tmp_path / "p.toml"
    p.write_text(f'task = "ctr"\n[[fields]]\nname = "a"\nnum_embeddings = {value}\n')
    one_line_error(runner.invoke(app, ["methods", "--solve", str(p), "--budget", "64MB"]),
                   str(p), "fields[0]", needle, "Fix that value in the file")


def test_deeply_nested_profile_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "deep.json"
    p.write_text('{"task": "ctr", "fields": ' + "[" * 100_000 + "]" * 100_000 + "}")
    one_line_error(runner.invoke(app, ["methods", "--solve", str(p), "--budget", "64MB"]), str(p), "nests")


# ---------------------------------------------------------------------------- 8. storage
@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "", " "])
@pytest.mark.parametrize("cmd", [["history"], ["history", "s"], ["export", "s", "-o", "c.toml"], ["plot", "s", "-o", "p.png"],
                                 ["worker", "--study", "s"], ["recommend", "--budget", "1MB", "--data", NO_DATA],
                                 ["pareto", "--budgets", "1MB", "--data", NO_DATA]])
def test_storages_that_lose_the_study_are_refused(cmd: list[str], url: str) -> None:
    # sqlite:// ran in memory (the study was lost; the heartbeat thread raised); '' silently meant the default
    one_line_error(runner.invoke(app, [*cmd, "--storage", url]), f"--storage={url!r}")


def test_storage_url_check() -> None:
    from embadvisor.advisor.storage import check_storage_url
    from embadvisor.errors import InvalidConfigError

    for ok in (None, "sqlite:///studies.db", "sqlite:////tmp/s.db", "postgresql://u:p@h/db", "runs/s.log"):
        assert check_storage_url(ok) == ok
    for bad in ("sqlite://x.db", "sqlite:///x.db?mode=memory", "sqlite+pysqlite://"):
        with pytest.raises(InvalidConfigError, match="in-memory database"):
            check_storage_url(bad)


# ---------------------------------------------------------------------------- 9. ignored options
@pytest.mark.parametrize(("extra", "needle"), [
    (["--vectors", "/no/such.npy", "--query-ids", "/no/ids.txt"], "--query-ids needs --queries"),
    (["--query-ids", "/no/ids.txt"], "--query-ids needs --queries"),
    (["--doc-ids", "/no/ids.txt"], "need --vectors"),
    (["--vectors", "/no/such.npy", "--workers", "2", "--storage", "x.log"], "--workers applies to searches that train"),
    (["--vectors", "/no/such.npy", "--heartbeat", "5"], "--heartbeat applies to searches that train"),
])
def test_options_that_would_be_ignored_are_refused(extra: list[str], needle: str) -> None:
    res = runner.invoke(app, ["recommend", "--task", "retrieval", "--budget", "1KB", *extra])
    one_line_error(res, needle)


# ---------------------------------------------------------------------------- 10. model
@pytest.mark.parametrize("cmd", [["recommend", "--budget", "1MB", "--data", NO_DATA],
                                 ["pareto", "--budgets", "1MB", "--data", NO_DATA],
                                 ["train", "--task", "ctr", "--data", NO_DATA]])
def test_unknown_model_is_refused_before_any_training(cmd: list[str]) -> None:
    one_line_error(runner.invoke(app, [*cmd, "--model", "dlmr"]), "`model` must be one of dcn, deepfm, dlrm, wdl",
                   "Did you mean 'dlrm'?")


# ---------------------------------------------------------------------------- 11. history
def test_unknown_study_lists_a_few_close_matches_not_all(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for i in range(40):
        optuna.create_study(study_name=f"ctr-criteo-kaggle-{i:03d}-0123456789abcdef", storage=storage)
    err = one_line_error(runner.invoke(app, ["history", "ctr-criteo-kaggle-017-0123456789abcdeX", "--storage", storage]),
                         "40 studies", "closest: ctr-criteo-kaggle-017-0123456789abcdef", "embadvisor history")
    assert len(err) < 400 and err.count("ctr-criteo-kaggle-") <= 4
    err = one_line_error(runner.invoke(app, ["history", "zzz", "--storage", storage]), "(40 studies)")
    assert len(err) < 250


# ---------------------------------------------------------------------------- 12. full at its own size
@pytest.mark.parametrize("scope", ["serve", "train"])
def test_full_fits_a_budget_of_exactly_the_full_tables(scope: str) -> None:
    from embadvisor.profiles import get_preset

    def solve(budget: int) -> dict:
        res = runner.invoke(app, ["methods", "--solve", "criteo-kaggle", "--budget", str(budget), "--scope", scope,
                                  "--json"])
        assert res.exit_code == 0, res.output
        return {r["name"]: r for r in json.loads(res.stdout)}

    full_bytes = solve(10**18)["full"]["full_bytes"]
    if scope == "serve":  # the profile's "full tables" and the plans' full_bytes are one number
        assert full_bytes == get_preset("criteo-kaggle").full_table_bytes()
    rows = solve(full_bytes)
    full = rows["full"]
    assert full["feasible"] and full["layout"] == "global" and full["ratio"] == 1.0
    assert full[f"{scope}_bytes"] == full_bytes == full["budget_bytes"] == full["min_budget_bytes"]
    assert all(r["full_bytes"] == full_bytes for r in rows.values())
    assert not solve(full_bytes - 1)["full"]["feasible"]
