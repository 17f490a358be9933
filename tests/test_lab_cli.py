"""`vsml-lab`: the launcher of the service."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from server import cli
from server.config import Settings, check_bind, get_settings, is_loopback
from server.db import session_scope
from server.models import Experiment
from server.presets import seed_presets
from vsml.config import preset_names


def test_refuses_a_reachable_bind_without_a_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Binding beyond loopback without VSML_API_TOKEN exits 2 with the reason."""
    code = cli.main(["--host", "0.0.0.0", "--data", str(tmp_path), "up"])
    assert code == 2
    assert "VSML_API_TOKEN" in capsys.readouterr().err
    assert not (tmp_path / "lab.db").exists()  # refused before touching anything


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.5"])
def test_loopback_binds_need_no_token(host: str) -> None:
    """Loopback addresses are allowed without a token."""
    assert is_loopback(host)
    check_bind(Settings(host=host))


def test_a_token_allows_any_bind() -> None:
    """With a token the service may listen on all interfaces."""
    check_bind(Settings(host="0.0.0.0", api_token="secret"))


def test_migrate_builds_the_embedded_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vsml-lab migrate` creates the SQLite database under --data."""
    assert cli.main(["--data", str(tmp_path), "migrate"]) == 0
    assert (tmp_path / "lab.db").is_file()
    assert "newest schema" in capsys.readouterr().out


def test_presets_are_seeded_once(tmp_path: Path) -> None:
    """Every preset becomes an experiment, and seeding twice adds nothing."""
    settings = Settings(artifact_dir=tmp_path / "artifacts")
    cli.prepare(settings)
    url = settings.resolved_database_url
    with session_scope(url) as session:
        names = sorted(session.scalars(select(Experiment.name)))
        again = seed_presets(session)
    assert names == sorted(preset_names())
    assert again == []


def test_worker_refuses_more_gpus_than_the_host_shows(capsys) -> None:
    """`vsml-lab worker --gpus N` checks the GPUs before it takes a run."""
    from server.cli import main, visible_gpus

    too_many = visible_gpus() + 1
    assert main(["worker", "--gpus", str(too_many)]) == 2
    error = capsys.readouterr().err
    assert f"--gpus {too_many} but this host shows" in error


@pytest.mark.parametrize("bad", ["-1", "two", "2000"])
def test_worker_gpus_must_be_a_count(bad: str, capsys) -> None:
    from server.cli import main

    with pytest.raises(SystemExit):
        main(["worker", "--gpus", bad])
    assert "is not a GPU count" in capsys.readouterr().err


def test_bad_setting_names_the_variable(monkeypatch, capsys) -> None:
    from server.cli import main

    monkeypatch.setenv("VSML_WORKER_GPUS", "abc")
    get_settings.cache_clear()
    try:
        assert main(["worker"]) == 2
    finally:
        get_settings.cache_clear()
    assert "VSML_WORKER_GPUS='abc': Input should be a valid integer" in (
        capsys.readouterr().err
    )
