"""``MICROSAGA_CODEC_KEYS`` with a key id given twice is refused: the second key of
that id replaced the first, so what the first had encrypted could no longer be read
(and with the id first in the list, the second key encrypted in its place)."""

from __future__ import annotations

import base64

import pytest

from microsaga.codecs import AesGcmCodec
from microsaga.errors import ConfigurationError
from microsaga.settings import resolve_options

OLD = base64.b64encode(b"o" * 32).decode()
NEW = base64.b64encode(b"n" * 32).decode()


@pytest.mark.parametrize(
    "keys", [f"k1={OLD},k2={NEW},k1={NEW}", f"k1={OLD}, k1 = {NEW}"], ids=["apart", "spaced"]
)
def test_a_key_id_given_twice_is_refused(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv("MICROSAGA_CODEC_KEYS", keys)
    with pytest.raises(ConfigurationError) as caught:
        resolve_options({})
    assert str(caught.value) == "MICROSAGA_CODEC_KEYS: key id 'k1' is given twice"


def test_distinct_key_ids_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROSAGA_CODEC_KEYS", f"k2={NEW},k1={OLD}")
    codec = resolve_options({}).codec
    assert isinstance(codec, AesGcmCodec)
    assert codec.current == "k2"
