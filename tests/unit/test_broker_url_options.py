"""A broker URL's own options (``?maxlen=`` of Redis, ``?exchange=`` of RabbitMQ) are
checked when the broker is made: a bad value or a misspelt name is a configuration
error naming the setting, not an internal error, nor a broker running without it."""

from __future__ import annotations

import pytest

from microsaga.errors import ConfigurationError
from microsaga.transports import open_broker
from microsaga.transports.redis import RedisBroker

REDIS = "redis://127.0.0.1:6379/0"
AMQP = "amqp://guest:secret@127.0.0.1:5672/"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (f"{REDIS}?maxlen=abc", "maxlen must be a whole number from 1, not 'abc'"),
        (f"{REDIS}?maxlen=-1", "maxlen must be a whole number from 1, not '-1'"),
        (f"{REDIS}?maxlen=0", "maxlen must be a whole number from 1, not '0'"),
        (f"{REDIS}?maxlen=%C2%B2", "maxlen must be a whole number from 1, not '\u00b2'"),
        (f"{REDIS}?maxlen={2**64}", f"maxlen must be a whole number from 1, not '{2**64}'"),
        (f"{REDIS}?maxln=5", "unknown option 'maxln'; did you mean maxlen?"),
        (f"{AMQP}?exchang=orders", "unknown option 'exchang'; did you mean exchange?"),
        (f"{AMQP}?exchanges=orders", "unknown option 'exchanges'; did you mean exchange?"),
    ],
)
def test_a_bad_option_names_the_setting(url: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_broker(url)
    text = str(caught.value)
    assert text.startswith("broker: ")
    assert said in text
    assert "secret" not in text


def test_the_setting_named_is_the_one_given() -> None:
    from microsaga.settings import broker_url

    with pytest.raises(ConfigurationError, match=r"^MICROSAGA_BROKER: .*maxlen"):
        open_broker(broker_url(f"{REDIS}?maxlen=x", "MICROSAGA_BROKER"))


def test_good_options_and_the_driver_s_own_are_kept() -> None:
    broker = open_broker(f"{REDIS}?maxlen=1000&health_check_interval=30")
    assert isinstance(broker, RedisBroker)
    assert broker.maxlen == 1000
    assert open_broker(f"{AMQP}?exchange=orders&heartbeat=30").exchange_name == "orders"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("amqp://", "amqp://: no host (write amqp://HOST:PORT)"),  # aio-pika: retried for ever
        ("redis://", "redis://: no host (write redis://HOST:PORT)"),  # was an internal error
        ("nats://", "nats://: no host (write nats://HOST:PORT)"),  # was "cannot connect"
        ("amqps://guest:secret@:5671/", "no host (write amqps://HOST:PORT)"),
        ("redis://127.0.0.1:abc/0", "the port must be a number from 1 to 65535"),
        ("amqp://127.0.0.1:abc/", "the port must be a number from 1 to 65535"),
        ("nats://127.0.0.1:99999", "the port must be a number from 1 to 65535"),
        ("rediss://127.0.0.1:0", "the port must be a number from 1 to 65535"),
    ],
)
def test_a_url_without_a_host_or_port_is_a_bad_setting(url: str, said: str) -> None:
    from microsaga.settings import broker_url

    with pytest.raises(ConfigurationError) as caught:
        open_broker(broker_url(url, "--broker"))
    assert str(caught.value).startswith("--broker: ")
    assert said in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["nats://127.0.0.1:4222", "nats://[::1]:4222", "redis://localhost", "amqp://h/vhost"]
)
def test_a_url_with_a_host_is_accepted(url: str) -> None:
    assert open_broker(url).url == url  # type: ignore[attr-defined]
