"""A wrong store URL is a configuration error naming the URL (its password hidden):
``error[configuration]`` and exit status 2 from the CLI, never a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from microsaga import ConfigurationError, Flow
from microsaga._urls import redact_url
from microsaga.stores import open_store
from tests.integration import pg

ROOT = Path(__file__).resolve().parents[2]


def needs_driver() -> None:
    if pg.asyncpg is None:
        pg.skip_or_fail("asyncpg is not installed (pip install 'microsaga[postgres]')")


@pytest.mark.parametrize(
    ("url", "shown", "words"),
    [
        ("postgresql://127.0.0.1:abc/test", "postgresql://127.0.0.1:abc/test", "port 'abc'"),
        ("postgresql://127.0.0.1:99999/test", "postgresql://127.0.0.1:99999/test", "99999"),
        ("postgresql://127.0.0.1:0/test", "postgresql://127.0.0.1:0/test", "port '0'"),
        ("postgresql://[::1/test", "postgresql://[::1/test", "not a valid URL"),
        ("postgresql://[::1]x/test", "postgresql://[::1]x/test", "IPv6"),
        ("postgresql://u:s3cret@127.0.0.1:abc/x", "postgresql://u:***@127.0.0.1:abc/x", "port"),
        ("postgresql://h1:5432,h2:x/db", "postgresql://h1:5432,h2:x/db", "port 'x'"),
        ("postgresql://h/db?port=5x", "postgresql://h/db?port=5x", "port '5x'"),
        ("postgresql://h/db?sslmode=bogus", "postgresql://h/db?sslmode=bogus", "verify-full"),
        ("postgresql://h/db?pool_size=0", "postgresql://h/db?pool_size=0", "pool_size"),
        ("postgresql://h/db?a=1&&b=2", "postgresql://h/db?a=1&&b=2", "not a valid URL"),
    ],
)
def test_a_malformed_postgresql_url_is_a_configuration_error(
    url: str, shown: str, words: str
) -> None:
    needs_driver()
    with pytest.raises(ConfigurationError) as wrong:
        open_store(url)
    message = str(wrong.value)
    assert message.startswith(f"store: {shown}: "), message
    assert words in message
    assert "s3cret" not in message
    assert "\n" not in message


def test_good_postgresql_urls_are_taken() -> None:
    needs_driver()
    for url in (
        "postgresql://app:s3cret@db:5432/orders?pool_size=3&sslmode=prefer",
        "postgres://[::1]:5432/orders",
        "postgresql://h1:5432,h2/orders?application_name=x",
        "postgresql:///orders?host=/var/run/postgresql",
    ):
        assert open_store(url).url == redact_url(url)


async def test_a_flow_on_a_malformed_url_raises_a_configuration_error() -> None:
    needs_driver()
    with pytest.raises(ConfigurationError, match="port 'abc'"):
        async with Flow("postgresql://127.0.0.1:abc/test"):
            pass


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("bogus_setting=1", 'unrecognized configuration parameter "bogus_setting"'),
        ("synchronous_commit=bogus", 'invalid value for parameter "synchronous_commit"'),
        ("ssl_min_protocol_version=TLSv9", "TLSv9"),
        ("search_path=nosuch", "create the schema its search_path names"),
    ],
)
async def test_a_setting_the_server_refuses_is_a_configuration_error(
    query: str, words: str
) -> None:
    async with pg.fresh_database() as url:
        store = open_store(f"{url}?{query}")
        with pytest.raises(ConfigurationError) as wrong:
            await store.open()
    message = str(wrong.value)
    assert message.startswith(f"store: {url}?{query}: "), message
    assert words in message
    assert "\n" not in message


def test_a_malformed_postgresql_url_names_the_setting_the_caller_gives() -> None:
    needs_driver()
    from microsaga.stores.postgres import PostgresStore

    with pytest.raises(ConfigurationError) as wrong:
        PostgresStore("postgresql://u:s3cret@h:abc/x", setting="--store")
    assert wrong.value.setting == "--store"
    assert str(wrong.value).startswith("--store: postgresql://u:***@h:abc/x: port 'abc'")


@pytest.mark.postgres
async def test_a_setting_the_server_refuses_names_the_setting_the_caller_gives() -> None:
    from microsaga.stores.postgres import PostgresStore

    async with pg.fresh_database() as url:
        store = PostgresStore(f"{url}?bogus_setting=1", setting="MICROSAGA_STORE")
        with pytest.raises(ConfigurationError) as wrong:
            await store.open()
    assert wrong.value.setting == "MICROSAGA_STORE"
    assert str(wrong.value).startswith(f"MICROSAGA_STORE: {url}?bogus_setting=1: ")


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("role", 'role "no_such_role" does not exist'),
        ("database", 'database "no_such_database" does not exist'),
    ],
)
async def test_a_role_or_database_the_server_does_not_know_is_a_configuration_error(
    where: str, words: str
) -> None:
    srv = await pg.server()
    if where == "role":
        bad = f"postgresql://no_such_role:s3cret@{pg.HOST}:{pg.PORT}/postgres"
    else:
        bad = srv.url("no_such_database")
    store = open_store(bad)
    with pytest.raises(ConfigurationError) as wrong:
        await store.open()
    message = str(wrong.value)
    assert message.startswith(f"store: {redact_url(bad)}: "), message
    assert words in message
    assert "s3cret" not in message
    assert "\n" not in message


async def test_a_sqlite_store_in_a_missing_folder_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}"
    with pytest.raises(ConfigurationError) as wrong:
        await open_store(url).open()
    assert str(wrong.value) == f"store: {url}: folder {tmp_path / 'no' / 'such'} does not exist"


async def test_a_file_that_is_not_a_sqlite_database_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database, it is text" * 100)
    with pytest.raises(ConfigurationError) as wrong:
        await open_store(f"sqlite:///{path}").open()
    assert str(wrong.value) == f"store: sqlite:///{path}: {path} is not a SQLite database"
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cret@127.0.0.1:abc/x",
        "postgresql://u:s3cret@[::1/x",
        "postgresql://u:s3cret@h:99999/x?a=b",
        "postgresql://u:s3cret@h1:1,h2:2/x",
    ],
)
def test_passwords_are_hidden_even_in_malformed_urls(url: str) -> None:
    shown = redact_url(url)
    assert "s3cret" not in shown
    assert shown == url.replace("s3cret", "***")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microsaga", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment(),
        timeout=60,
        check=False,
    )


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSAGA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def assert_configuration_error(done: subprocess.CompletedProcess[str], shown: str) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error[configuration]: --store: {shown}: "), lines[0]
    return lines[0]


def test_the_cli_reports_a_malformed_store_url_as_a_configuration_error() -> None:
    needs_driver()
    done = cli("--store", "postgresql://u:s3cret@127.0.0.1:abc/x", "worker")
    line = assert_configuration_error(done, "postgresql://u:***@127.0.0.1:abc/x")
    assert "s3cret" not in line


@pytest.mark.postgres
async def test_the_cli_reports_a_setting_the_server_refuses_as_a_configuration_error() -> None:
    async with pg.fresh_database() as url:
        done = cli("--store", f"{url}?bogus_setting=1", "worker")
    line = assert_configuration_error(done, f"{url}?bogus_setting=1")
    assert "bogus_setting" in line


@pytest.mark.postgres
async def test_the_cli_reports_a_missing_search_path_schema_as_a_configuration_error() -> None:
    async with pg.fresh_database() as url:
        done = cli("--store", f"{url}?search_path=nosuch", "list")
    assert "InvalidSchemaNameError" in assert_configuration_error(done, f"{url}?search_path=nosuch")


def test_the_cli_refuses_an_unknown_sqlite_option(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}?foo=1"
    line = assert_configuration_error(cli("--store", url, "list"), url)
    assert "unknown option 'foo'; known: inline_commit, synchronous" in line
    assert not (tmp_path / "x.db").exists()
