"""``MICROSAGA_CODEC_KEYS`` keys as users write them: either base64 alphabet (the
URL-safe one is what ``secrets.token_urlsafe`` prints), padding optional; anything else
is refused as not base64 rather than silently read as another key."""

from __future__ import annotations

import base64

import pytest

from microsaga import ConfigurationError
from microsaga.codecs import codec_from_setting

KEY = bytes([0xFB, 0xFF] * 16)  # both alphabets differ on it: "+/" and "-_"


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
