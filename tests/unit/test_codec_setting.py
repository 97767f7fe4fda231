"""``MICROSAGA_CODEC_KEYS`` keys as users write them: either base64 alphabet (the
URL-safe one is what ``secrets.token_urlsafe`` prints), padding optional; anything else
is refused as not base64 rather than silently read as another key."""

from __future__ import annotations

import base64

import pytest

from microsaga import ConfigurationError
from microsaga.codecs import codec_from_setting
from microsaga.settings import resolve_options

KEY = bytes([0xFB, 0xFF] * 16)  # both alphabets differ on it: "+/" and "-_"
PADDED = base64.b64encode(bytes(range(32))).decode()  # as openssl rand -base64 32 prints


@pytest.mark.parametrize(
    "written",
    [
        base64.b64encode(KEY).decode(),
        base64.b64encode(KEY).decode().rstrip("="),
        base64.urlsafe_b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
    ],
)
def test_a_key_in_either_alphabet_reads_what_the_other_wrote(written: str) -> None:
    standard = codec_from_setting("k=" + base64.b64encode(KEY).decode())
    codec = codec_from_setting(f"k={written}")
    assert codec.decode(standard.encode(b"secret")) == b"secret"


@pytest.mark.parametrize("written", ["+//7//v/*+//7//v/+//7//v/+//7//v/+//7//v/+/8=", "a key"])
def test_a_key_with_characters_outside_base64_is_refused(written: str) -> None:
    with pytest.raises(ConfigurationError, match="MICROSAGA_CODEC_KEYS: key 'k' is not base64"):
        codec_from_setting(f"k={written}")


@pytest.mark.parametrize(
    "keys",
    [
        PADDED,
        f"k1={base64.b64encode(KEY).decode()},{PADDED}",
        f"{PADDED},{PADDED}",
        f"{PADDED[:-1]}==",
    ],
    ids=["alone", "second", "twice", "double-padding"],
)
def test_a_padded_key_without_its_id_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, keys: str
) -> None:
    """``openssl rand -base64 32`` ends in '=': added to the setting without an id,
    it read as the id of an empty key, and the error printed it."""
    monkeypatch.setenv("MICROSAGA_CODEC_KEYS", keys)
    with pytest.raises(ConfigurationError) as caught:
        resolve_options({})
    message = str(caught.value)
    assert PADDED.rstrip("=") not in message
    number = 2 if keys.startswith("k1=") else 1
    assert message == (
        f"MICROSAGA_CODEC_KEYS: item {number} has no key after its '=' (a key without its "
        "id?): expected id=base64key,id=base64key"
    )
