"""How stores keep bodies and headers: large bodies once, everything through the codec.

A body larger than :data:`INLINE_LIMIT` is kept once in the store's ``payloads`` table
under its SHA-256, and the step and execution rows hold a short reference to it: a
body passed unchanged from step to step, or the same body sent by many executions, is
stored once. ``payload_refs`` says which executions refer to which payloads; pruning an
execution removes the payloads no other execution refers to.

With a codec (:class:`~microsaga.codecs.PayloadCodec`), bodies and headers are stored
encoded. Stored values that are not plain JSON start with a NUL byte, which no JSON
text does, followed by a tag:

- ``REF``: the rest is the hex SHA-256 of a payload in ``payloads`` (of the body, or,
  with a codec that names its current key, of ``key:<id>\x00`` and the body: a key
  rotation stores a body anew under the new key);
- ``ENC``: the rest is the codec's output;
- ``RAW``: the rest is a body of the caller's that itself starts with a NUL byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .codecs import PayloadCodec
from .errors import CodecError, PayloadTooLargeError
from .execution import Execution, StepRun
from .message import Message, Metadata

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_REDACT_HEADERS",
    "INLINE_LIMIT",
    "Bodies",
    "Pending",
    "check_size",
    "redacted",
    "redacted_execution",
    "shows_encrypted",
    "too_large",
]

INLINE_LIMIT = 32 * 1024  # larger bodies are stored once, by reference
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
DEFAULT_REDACT_HEADERS = ("authorization", "cookie", "proxy-authorization")
REDACTED = "[redacted]"

REF = b"\x00ref:"
ENC = b"\x00enc:"
RAW = b"\x00raw:"
_REF_LEN = len(REF) + 64
_ENCRYPTED_HEADER = ":encrypted"  # no header name has a colon
# what a view shows for a body or header it has no codec for
_ENCRYPTED_BODY = b'"[encrypted]"'
# what reading one strictly says without a codec: the setting that gives one
_NO_CODEC = (
    "a stored {} is encrypted and this process has no codec keys: give it "
    "MICROSAGA_CODEC_KEYS (in Python, Flow(codec=...))"
)


def check_size(message: Message, limit: int, what: str) -> None:
    """Raise :class:`PayloadTooLargeError` when ``message``'s body is over ``limit``."""
    size = len(message.body)
    if size > limit:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes, over max_payload {limit}", retryable=False
        )


def too_large(
    response: Message, flow: Any, what: str = "the step's response"
) -> PayloadTooLargeError | None:
    """The error of a step's response over the flow's ``max_payload``, if it is."""
    size = len(response.body)
    limit = flow.options.max_payload if flow is not None else DEFAULT_MAX_PAYLOAD
    if size <= limit:
        return None
    return PayloadTooLargeError(
        f"{what} is {size} bytes, over max_payload {limit}", retryable=False
    )


def redacted(header: Metadata, names: Iterable[str]) -> Metadata:
    """``header`` with the values of ``names`` replaced by ``[redacted]``."""
    hidden = [n for n in names if n in header]
    if not hidden:
        return header
    out = header.copy()
    for name in hidden:
        out.set(name, REDACTED)
    return out


def _redacted_message(msg: Message | None, names: tuple[str, ...]) -> Message | None:
    if msg is None or not any(n in msg.header for n in names):
        return msg
    return Message(msg.body, redacted(msg.header, names))


def _redacted_run(run: StepRun, names: tuple[str, ...]) -> StepRun:
    return replace(
        run,
        request=_redacted_message(run.request, names),
        response=_redacted_message(run.response, names),
        compensation=None if run.compensation is None else _redacted_run(run.compensation, names),
    )


def redacted_execution(info: Execution, names: tuple[str, ...]) -> Execution:
    """``info`` as shown: the values of the headers ``names`` are ``[redacted]``."""
    if not names:
        return info
    request = _redacted_message(info.request, names)
    assert request is not None
    return replace(
        info,
        request=request,
        response=_redacted_message(info.response, names),
        steps={sid: _redacted_run(run, names) for sid, run in info.steps.items()},
    )


def shows_encrypted(info: Execution) -> bool:
    """Whether a view of ``info`` (``strict`` False) shows a body as ``"[encrypted]"``:
    one it could not decrypt, or a body that is that text."""

    def runs(run: StepRun | None) -> Iterator[Message | None]:
        while run is not None:
            yield run.request
            yield run.response
            run = run.compensation

    messages = [info.request, info.response]
    messages += [m for run in info.steps.values() for m in runs(run)]
    return any(m is not None and m.body == _ENCRYPTED_BODY for m in messages)


@dataclass(slots=True)
class Pending:
    """Payloads a commit stores, and which executions refer to them."""

    payloads: dict[str, bytes] = field(default_factory=dict)  # sha256 hex -> stored bytes
    refs: set[tuple[str, str]] = field(default_factory=set)  # (sha256 hex, execution id)

    def __bool__(self) -> bool:
        return bool(self.refs)


class Bodies:
    """Bodies and headers to stored values and back, for one store.

    Args:
        codec: encodes what is stored; None stores bodies and headers as they are.
        inline_limit: bodies larger than this are stored once, by reference.
    """

    def __init__(self, codec: PayloadCodec | None = None, inline_limit: int = INLINE_LIMIT):
        self.codec = codec
        self.inline_limit = inline_limit
        # the digests of the last large bodies seen, by identity: a body passed from
        # step to step is one bytes object, hashed once. Two: each entry keeps its
        # body alive, and a chain passes one body at a time
        self._digests: OrderedDict[int, tuple[bytes, str]] = OrderedDict()

    @property
    def plain(self) -> bool:
        """Whether small bodies and headers are stored as they are."""
        return self.codec is None

    # writing ---------------------------------------------------------------------------

    def _digest(self, body: bytes) -> str:
        found = self._digests.get(id(body))
        if found is not None and found[0] is body:
            self._digests.move_to_end(id(body))
            return found[1]
        hashed = hashlib.sha256(self._key_prefix())
        hashed.update(body)  # not prefix + body: a copy of a body of megabytes
        digest = hashed.hexdigest()
        self._digests[id(body)] = (body, digest)
        if len(self._digests) > 2:
            self._digests.popitem(last=False)
        return digest

    def _seal(self, body: bytes) -> bytes:
        if self.codec is not None:
            return ENC + self.codec.encode(body)
        if body[:1] == b"\x00":
            return RAW + body
        return body

    def _key_prefix(self) -> bytes:
        """What a payload's address is hashed from before its body: the id of the key
        that encrypts (a codec's ``current``, as :class:`~microsaga.codecs.AesGcmCodec`
        has), so that after a key rotation a body is stored again under the new key
        rather than referred to under the old one, which would then stay needed by
        executions written after the rotation; nothing without a codec."""
        current = getattr(self.codec, "current", None) if self.codec is not None else None
        if not isinstance(current, str):
            return b""
        return b"key:" + current.encode() + b"\x00"

    def body_out(self, body: bytes, execution_id: str, pending: Pending | None) -> bytes:
        """The stored value of ``body``; a large one goes to ``pending`` (by reference)."""
        if len(body) > self.inline_limit and pending is not None:
            digest = self._digest(body)
            if digest not in pending.payloads:
                pending.payloads[digest] = body
            pending.refs.add((digest, execution_id))
            return REF + digest.encode()
        if self.codec is None and body[:1] != b"\x00":
            return body
        return self._seal(body)

    def payload_out(self, body: bytes) -> bytes:
        """The stored value of a payload (the ``payloads`` table's body)."""
        return self._seal(body)

    def header_out(self, header: Metadata) -> Metadata:
        """The header as stored: with a codec, one encrypted entry."""
        if self.codec is None or not len(header):
            return header
        from .message import encode_json

        sealed = self.codec.encode(encode_json(header.to_dict()))
        return Metadata({_ENCRYPTED_HEADER: base64.b64encode(sealed).decode()})

    # reading ---------------------------------------------------------------------------

    @staticmethod
    def refs(rows: Iterable[Sequence[Any]]) -> set[str]:
        """The payloads that rows refer to (any column)."""
        out = set()
        for row in rows:
            for value in row:
                if isinstance(value, bytes) and len(value) == _REF_LEN and value.startswith(REF):
                    out.add(value[len(REF) :].decode())
        return out

    def _open(self, value: bytes, strict: bool) -> bytes:
        if value.startswith(ENC):
            if self.codec is None:
                if strict:
                    raise CodecError(_NO_CODEC.format("body"))
                return _ENCRYPTED_BODY
            if not strict:
                try:
                    return self.codec.decode(value[len(ENC) :])
                except CodecError:
                    return _ENCRYPTED_BODY
            return self.codec.decode(value[len(ENC) :])
        if value.startswith(RAW):
            return value[len(RAW) :]
        return value

    def body_in(self, value: bytes, found: Mapping[str, bytes], strict: bool = True) -> bytes:
        """A body from its stored value; ``found`` holds the stored payloads referred
        to. ``strict`` False (views) shows ``"[encrypted]"`` where it cannot decode."""
        if value[:1] != b"\x00":
            return value
        if value.startswith(REF) and len(value) == _REF_LEN:
            digest = value[len(REF) :].decode()
            stored = found.get(digest)
            if stored is None:
                raise CodecError(f"payload {digest} is missing from the store")
            return self._open(stored, strict)
        return self._open(value, strict)

    def header_in(self, header: Metadata, strict: bool = True) -> Metadata:
        sealed = header.get(_ENCRYPTED_HEADER) if len(header) == 1 else None
        if sealed is None:
            return header
        from .message import decode_json_body

        encrypted = Metadata({"x-microsaga-encrypted": "[encrypted]"})
        if self.codec is None:
            if strict:
                raise CodecError(_NO_CODEC.format("header"))
            return encrypted
        try:
            try:
                sealed_bytes = base64.b64decode(sealed, validate=True)
            except (binascii.Error, ValueError):
                raise CodecError("a stored header is damaged: not base64") from None
            plain = self.codec.decode(sealed_bytes)
        except CodecError:
            if strict:
                raise
            return encrypted
        return Metadata(decode_json_body(plain))


PLAIN = Bodies()
