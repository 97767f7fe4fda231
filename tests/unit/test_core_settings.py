"""Settings: explicit arguments win over MICROSAGA_*; an error names the wrong one."""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import ConfigurationError, Flow


@pytest.mark.parametrize(
    ("environment", "kwargs", "start"),
    [
        ({"MICROSAGA_BROKER": "kafka://x"}, {}, "MICROSAGA_BROKER: unknown scheme"),
        ({}, {"broker": "kafka://x"}, "broker: unknown scheme"),
        ({"MICROSAGA_BROKER": "kafka://x"}, {"broker": "memory://"}, None),
        ({"MICROSAGA_SERVICES": "a=ftp://x"}, {}, "MICROSAGA_SERVICES: service 'a' must be"),
        ({}, {"services": {"a": "ftp://x"}}, "services: service 'a' must be"),
        ({"MICROSAGA_STORE": "mysql://x"}, {}, "MICROSAGA_STORE: unknown scheme"),
        ({"MICROSAGA_STORE": "mysql://x"}, {"store": "memory://"}, None),
        ({"MICROSAGA_STORE": "postgresql://[::1/test"}, {}, "MICROSAGA_STORE: postgresql://[::1"),
        ({}, {"broker": "nats://[::1"}, "broker: nats://[::1: not a valid URL"),
        ({"MICROSAGA_CONCURRENCY": "1.5"}, {}, "MICROSAGA_CONCURRENCY: must be a whole number"),
        ({}, {"concurrency": 1.5}, "concurrency: must be a positive whole number"),
        ({}, {"concurrency": True}, "concurrency: must be a positive whole number"),
        ({}, {"lease_ttl": float("nan")}, "lease_ttl: must be a positive number"),
        ({"MICROSAGA_LEASE_TTL": "inf"}, {}, "MICROSAGA_LEASE_TTL: must be positive"),
        ({"MICROSAGA_HEARTBEAT": "20"}, {}, "MICROSAGA_HEARTBEAT: must be shorter than the lease"),
        (
            {"MICROSAGA_LEASE_TTL": "2"},
            {"heartbeat_interval": 3.0},
            "heartbeat_interval: must be shorter than the lease (MICROSAGA_LEASE_TTL=2.0)",
        ),
        ({}, {"worker": "no"}, "worker: must be True or False"),
        ({}, {"store_retry_for": -1}, "store_retry_for: must be a positive number"),
        ({"MICROSAGA_MAX_PAYLOAD": "64MB"}, {}, "MICROSAGA_MAX_PAYLOAD: must be a whole number"),
        ({"MICROSAGA_MAX_PAYLOAD": "1.5GiB"}, {}, "MICROSAGA_MAX_PAYLOAD: must be a whole"),
        ({"MICROSAGA_MAX_PAYLOAD": "0 KiB"}, {}, "MICROSAGA_MAX_PAYLOAD: must be positive"),
        ({"MICROSAGA_WORKER_ID": "w\udcff"}, {}, "MICROSAGA_WORKER_ID: not valid UTF-8 text"),
        ({}, {"worker_id": "w\udcff"}, "worker_id: not valid UTF-8 text"),
    ],
)
def test_errors_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], kwargs: Any, start: str | None
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    kwargs.setdefault("store", None)
    if start is None:
        Flow(**kwargs)  # the explicit argument wins; the variable is not looked at
        return
    with pytest.raises(ConfigurationError) as err:
        Flow(**kwargs)
    assert str(err.value).startswith(start), str(err.value)


@pytest.mark.parametrize(
    ("written", "size"),
    [
        ("65536", 65536),
        ("100B", 100),
        ("512 KiB", 512 * 1024),
        ("64MiB", 64 * 1024 * 1024),
        ("64 MiB", 64 * 1024 * 1024),  # as the docs write it
        ("2 gib", 2 * 1024**3),
    ],
)
def test_max_payload_from_the_environment_takes_the_units_of_the_docs(
    monkeypatch: pytest.MonkeyPatch, written: str, size: int
) -> None:
    monkeypatch.setenv("MICROSAGA_MAX_PAYLOAD", written)
    assert Flow("memory://").options.max_payload == size


def test_environment_services_merge_under_explicit_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROSAGA_SERVICES", "a=http://env-a,b=http://env-b")
    flow = Flow("memory://", services={"b": "http://mine"})
    assert dict(flow.options.services) == {"a": "http://env-a", "b": "http://mine"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"store": "mysql://admin:s3cret@db/x"},
        {"broker": "kafka://admin:s3cret@mq"},
        {"services": {"a": "ftp://admin:s3cret@files"}},
    ],
)
def test_errors_never_show_a_password(kwargs: Any) -> None:
    with pytest.raises(ConfigurationError) as err:
        Flow(**kwargs)
    assert "s3cret" not in str(err.value)
    assert "admin:***@" in str(err.value)


@pytest.mark.parametrize("from_environment", [True, False])
async def test_errors_found_when_opening_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, from_environment: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}?foo=1"  # the scheme is fine; the store refuses it
    if from_environment:
        monkeypatch.setenv("MICROSAGA_STORE", url)
    flow = Flow() if from_environment else Flow(url)
    with pytest.raises(ConfigurationError) as err:
        await flow.open()
    setting = "MICROSAGA_STORE" if from_environment else "store"
    assert str(err.value).startswith(f"{setting}: {url}: unknown option 'foo'")
    assert err.value.setting == setting
