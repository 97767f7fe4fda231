"""Payload codecs: what stored bodies and headers go through on their way to the store.

A codec turns bytes into other bytes and back (:class:`PayloadCodec`).
:class:`AesGcmCodec` encrypts with AES-GCM (the ``cryptography`` package, the
``microsaga[crypto]`` extra), under named keys: it encrypts with the current key and
decrypts with whichever key a stored value names, so keys rotate by adding a new one
(last, then first once every process has it) and keeping the old ones until nothing
stored needs them (docs/operations.md).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from .errors import CodecError, ConfigurationError

__all__ = ["AesGcmCodec", "PayloadCodec", "codec_from_setting"]

_VERSION = b"\x01"
_NONCE = 12
_TAG = 16  # AES-GCM's authentication tag


@runtime_checkable
class PayloadCodec(Protocol):
    """Encodes stored bodies and headers, and decodes them back.

    ``decode(encode(data)) == data``; ``decode`` raises :class:`~microsaga.CodecError`
    for data it cannot decode.
    """

    def encode(self, data: bytes) -> bytes: ...

    def decode(self, data: bytes) -> bytes: ...


class AesGcmCodec:
    """AES-GCM encryption under named keys.

    Args:
        keys: key id -> key of 16, 24 or 32 bytes.
        current: the id of the key that encrypts; the first one when omitted. The
            others only decrypt what they once encrypted.

    Raises:
        ConfigurationError: no keys, a key of a wrong size, an unknown ``current``, or
            the ``cryptography`` package missing (``pip install 'microsaga[crypto]'``).
    """

    def __init__(self, keys: Mapping[str, bytes], current: str | None = None) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigurationError(
                "codec",
                "AesGcmCodec needs the cryptography package: pip install 'microsaga[crypto]'",
            ) from None
        if not keys:
            raise ConfigurationError("codec", "AesGcmCodec needs at least one key")
        self._ciphers = {}
        for kid, key in keys.items():
            if not isinstance(kid, str) or not kid or len(kid.encode()) > 255:
                raise ConfigurationError("codec", f"key id {kid!r}: a non-empty string")
            if not isinstance(key, bytes) or len(key) not in (16, 24, 32):
                raise ConfigurationError("codec", f"key {kid!r}: must be 16, 24 or 32 bytes")
            self._ciphers[kid.encode()] = AESGCM(key)
        current = next(iter(keys)) if current is None else current
        if current not in keys:
            raise ConfigurationError("codec", f"current key {current!r} is not among the keys")
        self.current = current
        self._kid = current.encode()

    def __repr__(self) -> str:  # never the keys
        return f"AesGcmCodec(current={self.current!r}, keys={len(self._ciphers)})"

    def encode(self, data: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[self._kid].encrypt(nonce, data, self._kid)
        return b"".join((_VERSION, bytes((len(self._kid),)), self._kid, nonce, sealed))

    def decode(self, data: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(data) < 2 or data[:1] != _VERSION:
            raise CodecError("not a value encrypted by AesGcmCodec")
        end = 2 + data[1]
        if len(data) < end + _NONCE + _TAG:  # cut short: the cipher would raise ValueError
            raise CodecError(
                "stored value is too short to be one AesGcmCodec encrypted",
                code="codec_tampered",
            )
        kid = bytes(data[2:end])
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise CodecError(
                f"stored value encrypted with key {kid.decode(errors='replace')!r}, "
                "which the codec does not have",
                code="codec_key_unknown",
            )
        nonce = bytes(data[end : end + _NONCE])
        try:
            return cipher.decrypt(nonce, bytes(data[end + _NONCE :]), kid)
        except InvalidTag:
            raise CodecError(
                "stored value fails its authentication: changed, or another key",
                code="codec_tampered",
            ) from None


def _key_bytes(text: str, kid: str, setting: str) -> bytes:
    """A key in base64, of either alphabet (``+/`` or the URL-safe ``-_`` that
    ``secrets.token_urlsafe`` writes), padding optional."""
    padded = text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(padded, altchars=b"-_", validate=True)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(setting, f"key {kid!r} is not base64") from None


def codec_from_setting(text: str, setting: str = "MICROSAGA_CODEC_KEYS") -> AesGcmCodec:
    """An :class:`AesGcmCodec` from ``id=base64key,id=base64key`` (the first encrypts);
    a key may be written in either base64 alphabet (standard or URL-safe)."""
    keys: dict[str, bytes] = {}
    for number, item in enumerate(filter(None, (p.strip() for p in text.split(","))), 1):
        kid, sep, value = item.partition("=")
        if not sep or not kid.strip():
            raise ConfigurationError(setting, "expected id=base64key,id=base64key")
        if not value.strip().rstrip("="):
            # a padded key written without its id ("KEY=") reads as the id KEY with no
            # key: naming that "id" would print the key in the error
            raise ConfigurationError(
                setting,
                f"item {number} has no key after its '=' (a key without its id?): "
                "expected id=base64key,id=base64key",
            )
        keys[kid.strip()] = _key_bytes(value.strip(), kid.strip(), setting)
    try:
        return AesGcmCodec(keys)
    except ConfigurationError as exc:
        raise ConfigurationError(setting, exc.reason or exc.message) from None
