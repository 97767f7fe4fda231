"""A service's address: an http(s) URL with a host, a valid port and known
placeholders, refused where it is given otherwise (it failed every call, one with an
unreadable ExceptionGroup), and never shown with its password in a step's error
(stored, listed, logged)."""

from __future__ import annotations

import httpx
import pytest

from microsaga import DefinitionError, Message, load_definition
from microsaga.errors import ConfigurationError, StepError
from microsaga.settings import check_services
from microsaga.transports.http import HttpClient

BAD = [
    ("http://", "must name a host"),
    ("http://:8001", "must name a host"),
    ("https://in ventory:8001", "must name a host"),
    ("http://127.0.0.1:abc", "must have a port from 1 to 65535"),
    ("http://127.0.0.1:99999", "must have a port from 1 to 65535"),
    ("http://127.0.0.1:0", "must have a port from 1 to 65535"),
    ("ftp://127.0.0.1:21", "must be an http:// or https:// URL"),
    (
        "http://127.0.0.1:8001/rpc/{nme}/{method}",
        "must use {name}, {method}, {endpoint} or {service} as placeholders, not {nme}",
    ),
]


@pytest.mark.parametrize(("url", "said"), BAD)
def test_a_definition_names_the_service(url: str, said: str) -> None:
    text = f'id: x\nservices: {{inv: "{url}"}}\nsteps: [{{call: inv.A.B}}]\n'
    with pytest.raises(DefinitionError) as caught:
        load_definition(text)
    assert str(caught.value).startswith(f"services.inv: {said}")


@pytest.mark.parametrize(("url", "said"), BAD)
def test_a_setting_names_the_service(url: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_services({"inv": url}, "MICROSAGA_SERVICES")
    assert str(caught.value).startswith(f"MICROSAGA_SERVICES: service 'inv' {said}")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8001",
        "https://inventory.internal",
        "http://[::1]:8001/base/",
        "http://{service}.svc:8080/rpc/{name}/{method}",
        "http://user:secret@127.0.0.1:8001",
    ],
)
def test_good_addresses_are_kept(url: str) -> None:
    assert check_services({"inv": url}) == {"inv": url}


async def test_a_failed_call_does_not_show_the_password() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "nope", "message": "no such"}})

    client = HttpClient(
        {"inv": "http://user:secret@127.0.0.1:8001"}, transport=httpx.MockTransport(answer)
    )
    try:
        with pytest.raises(StepError) as caught:
            await client.call("inv", "Inventory.Reserve", Message({"a": 1}))
    finally:
        await client.close()
    assert "http://user:***@127.0.0.1:8001/Inventory/Reserve" in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "inv=http://127.0.0.1:8001,inv=http://127.0.0.1:8002",
        '{"inv": "http://127.0.0.1:8001", "inv": "http://127.0.0.1:8002"}',
    ],
)
def test_a_service_given_twice_is_refused(text: str) -> None:
    from microsaga.settings import parse_services

    with pytest.raises(ConfigurationError) as caught:
        parse_services(text, "--services")
    assert str(caught.value) == "--services: service 'inv' is given twice"
