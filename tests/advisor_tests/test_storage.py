"""Storage URLs: passwords never shown or stored, the README's PostgreSQL form works, worker log names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from embadvisor.advisor.cli import app
from embadvisor.advisor.distributed import log_name
from embadvisor.advisor.storage import display_url, normalise_url, open_storage
from embadvisor.errors import EmbAdvisorError

runner = CliRunner()
SECRET = "s3cr3t-pw"


@pytest.mark.parametrize("url", [f"postgresql://u:{SECRET}@h/db", f"postgresql+psycopg2://u:{SECRET}@h:5432/db",
                                 f"mysql://u:{SECRET}@h/db", f"postgresql://u:{SECRET}@host:notaport/db"])
def test_display_url_hides_the_password(url) -> None:
    shown = display_url(url)
    assert SECRET not in shown and "***" in shown and "u:" in shown


@pytest.mark.parametrize("url", ["sqlite:////tmp/a.db", "/tmp/studies.log", "postgresql://u@h/db"])
def test_display_url_keeps_urls_without_a_password(url) -> None:
    assert display_url(url) == url


@pytest.mark.parametrize("url", [f"postgresql://u:{SECRET}@127.0.0.1:1/db", f"postgresql://u:{SECRET}@h:notaport/db",
                                 f"mysql://u:{SECRET}@127.0.0.1:1/db"])
def test_storage_errors_do_not_print_the_password(url) -> None:
    with pytest.raises(EmbAdvisorError) as e:
        open_storage(url)
    assert SECRET not in str(e.value) and "***" in str(e.value)
    res = runner.invoke(app, ["history", "--storage", url])
    assert res.exit_code == 2 and SECRET not in res.output


def test_a_driverless_postgresql_url_names_the_installed_driver() -> None:
    for url in ("postgresql://u:p@h/db", "postgres://u:p@h/db"):
        assert normalise_url(url).split("://")[0] in ("postgresql+psycopg", "postgresql+psycopg2")
    assert normalise_url("postgresql+psycopg2://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert normalise_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "a/b", ".hidden", "", "ok-name_1.2"])
def test_worker_log_names_stay_in_their_folder(name, tmp_path) -> None:
    safe = log_name(name)
    assert "/" not in safe and not safe.startswith(".") and safe
    assert (tmp_path / f"{safe}-0.log").resolve().parent == tmp_path.resolve()
    if name == "ok-name_1.2":
        assert safe == name
    assert log_name("a/b") != log_name("a_b")  # distinct studies keep distinct logs


@pytest.mark.slow
def test_workers_of_a_study_named_like_a_path_log_inside_the_logs_folder(shared_data, tmp_path, monkeypatch) -> None:
    home = tmp_path / "home" / "deep"
    monkeypatch.setenv("EMBADVISOR_HOME", str(home))
    name = "../../escaped"
    res = runner.invoke(app, ["recommend", "--budget", "40kB", "--data", str(shared_data / "ctr/movielens-100k/u.data"),
                              "--methods", "hash", "--trials", "2", "--rungs", "2048", "--threads", "2",
                              "--workers", "2", "--storage", str(tmp_path / "s.log"), "--study", name, "--json"])
    assert res.exit_code == 0, res.output
    logs = sorted((home / "workers").iterdir())
    assert len(logs) == 2 and all(p.name.endswith(("-0.log", "-1.log")) for p in logs)
    assert not list(tmp_path.glob("escaped*")) and not list((tmp_path / "home").glob("escaped*"))


@pytest.fixture(scope="module")
def pg_readme_url() -> str:
    """The README's form, postgresql://user:pass@host/db, on the server CI starts (.ci/postgres)."""
    url = os.environ.get("EMBADVISOR_TEST_POSTGRES", "")
    if not url:
        script = Path(__file__).resolve().parents[2] / ".ci" / "postgres"
        import subprocess

        res = subprocess.run([str(script)], capture_output=True, text=True, timeout=900)
        url = res.stdout.strip().rpartition("EMBADVISOR_TEST_POSTGRES=")[2] if res.returncode == 0 else ""
        if not url:
            msg = f"no PostgreSQL for the storage tests ({script} failed: {res.stderr.strip()[-200:]})"
            if os.environ.get("CI", "").lower() in ("1", "true"):
                pytest.fail(msg)
            pytest.skip(msg)
    from sqlalchemy.engine import make_url

    u = make_url(url)  # the CI server trusts loopback, so any password is accepted
    return f"postgresql://{u.username}:{SECRET}@{u.host}:{u.port}/{u.database}"


@pytest.mark.slow
def test_readme_postgresql_url_works_and_its_password_is_never_stored(pg_readme_url, shared_data, tmp_path,
                                                                       monkeypatch) -> None:
    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path))
    name = f"readme-{os.getpid()}-{tmp_path.name}"
    out = tmp_path / "c.toml"
    res = runner.invoke(app, ["recommend", "--budget", "40kB", "--data", str(shared_data / "ctr/movielens-100k/u.data"),
                              "--methods", "hash,qr", "--trials", "2", "--rungs", "2048", "--storage", pg_readme_url,
                              "--study", name, "--json", "-o", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert SECRET not in res.output and rec["storage"].endswith("/embadvisor") and "***" in rec["storage"]
    assert SECRET not in out.read_text()
    study = optuna.load_study(study_name=name, storage=open_storage(pg_readme_url))
    assert SECRET not in json.dumps(study.user_attrs, default=str)
    for cmd in (["history", name], ["export", name, "-o", str(tmp_path / "e.json")]):
        r = runner.invoke(app, [*cmd, "--storage", pg_readme_url])
        assert r.exit_code == 0 and SECRET not in r.output, r.output
    assert SECRET not in (tmp_path / "e.json").read_text()
    # a worker given the URL through the environment joins the same study
    monkeypatch.setenv("EMBADVISOR_STORAGE", pg_readme_url)
    w = runner.invoke(app, ["worker", "--study", name, "--quiet"])
    assert w.exit_code == 0 and SECRET not in w.output, w.output
