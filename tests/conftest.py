from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from echopanel.testing.postgres import postgres_server

from support import SMALL_MESSAGE_BYTES, ServerProcess, run_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real EchoPanel server (packaged model, default settings) shared by the integration tests."""
    with run_server(tmp_path_factory.mktemp("server")) as srv:
        yield srv


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("token"), env={"ECHOPANEL_TOKEN": "s3cret"}) as srv:
        yield srv


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server (Debian's, started for this test run on loopback); tests make their own databases
    on it (``echopanel.testing.postgres.fresh_database``)."""
    with postgres_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with small limits (one session, 64 KiB messages), so limits are tested at N and N+1."""
    env = {"ECHOPANEL_MAX_MESSAGE_BYTES": str(SMALL_MESSAGE_BYTES)}
    with run_server(tmp_path_factory.mktemp("small"), env=env, args=["--max-sessions", "1"]) as srv:
        yield srv


@pytest.fixture(scope="session")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Disconnects clients that take no event for 2 s."""
    with run_server(tmp_path_factory.mktemp("impatient"), env={"ECHOPANEL_SEND_TIMEOUT_S": "2"}) as srv:
        yield srv


@pytest.fixture(scope="session")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Ends connections that send nothing for 2 s."""
    with run_server(tmp_path_factory.mktemp("idle"), env={"ECHOPANEL_IDLE_TIMEOUT_S": "2"}) as srv:
        yield srv
