"""A stored value cut short (a damaged row, a copy gone wrong) is a CodecError like any
other changed value: ``show`` and the API mark it ``[encrypted]``, a worker reports the
error; never a ValueError from the cipher, which they would not expect."""

from __future__ import annotations

import pytest

from microsaga import CodecError, Message, Metadata
from microsaga.codecs import AesGcmCodec
from microsaga.payloads import ENC, Bodies

CODEC = AesGcmCodec({"k": b"k" * 32})


@pytest.mark.parametrize("keep", [2, 3, 10, 3 + 12, 3 + 12 + 15])
def test_a_value_cut_short_fails_its_authentication(keep: int) -> None:
    sealed = CODEC.encode(b'{"card": "4111"}')
    with pytest.raises(CodecError) as caught:
        CODEC.decode(sealed[:keep])
    assert caught.value.code == "codec_tampered"


def test_a_view_shows_a_value_cut_short_as_encrypted() -> None:
    bodies = Bodies(CODEC)
    stored = ENC + CODEC.encode(b'{"card": "4111"}')[:5]
    assert Message(bodies.body_in(stored, {}, strict=False)).json() == "[encrypted]"


def test_a_damaged_stored_header_is_a_codec_error_and_shown_as_encrypted() -> None:
    bodies = Bodies(CODEC)
    damaged = Metadata({":encrypted": "abc"})  # not even base64 any more
    assert bodies.header_in(damaged, strict=False) == Metadata(
        {"x-microsaga-encrypted": "[encrypted]"}
    )
    with pytest.raises(CodecError, match="damaged"):
        bodies.header_in(damaged)
