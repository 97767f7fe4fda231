"""The data that travels between steps: :class:`Message` and :class:`Metadata`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from .errors import ConfigurationError

__all__ = [
    "Message",
    "Metadata",
    "check_finite",
    "decode_json_body",
    "encode_json",
    "frozen_message",
    "huge_number",
    "json_message",
    "out_of_range",
    "raw_message",
]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode_json(value: Any) -> bytes:
    """JSON-encode a value compactly; a clear TypeError when it cannot be, a
    ConfigurationError when it holds NaN or infinity (see :func:`check_finite`)."""
    try:
        body = _encoder.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from None
    check_finite(value, body)
    return body


# a float that is NaN or infinity as msgpack writes it: 0xcb, then the 8 bytes of a
# float64 with every exponent bit set (valid UTF-8 never has 0x7f or 0xff after 0xcb;
# other bytes that match, in an int or a bytes value, only cost the walk)
_NON_FINITE = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")


def check_finite(value: Any, body: bytes, enc_hook: Any = None) -> None:
    """Refuse a ``value`` holding NaN or infinity, which msgspec encodes (as ``body``) as
    null: JSON has neither, and null would be another value than the one given.

    Raises:
        ConfigurationError: of ``body``, naming where the number is (``$.x[2]``).
    """
    if b"null" not in body:  # the usual case, and a quick look
        return
    # msgpack keeps NaN and infinity, and msgspec writes it at C speed: a look for them
    # there first spares a walk of the value in Python (50x slower on a large body)
    try:
        packed: bytes | None = msgspec.msgpack.encode(value, enc_hook=enc_hook)
    except Exception:  # what msgpack cannot hold (an int over 64 bits): the walk tells
        packed = None
    if packed is not None and _NON_FINITE.search(packed) is None:
        return
    found = _non_finite(msgspec.to_builtins(value, enc_hook=enc_hook))
    if found is not None:
        where, number = found
        raise ConfigurationError(
            "body", f"{number} at `{where}` is not JSON (JSON has no NaN or infinity)"
        )


def _non_finite(value: Any) -> tuple[str, float] | None:
    """The first NaN or infinity in ``value`` (builtins only) and where it is."""
    todo: list[tuple[Any, str]] = [(value, "$")]
    while todo:
        node, where = todo.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                return where, node
        elif isinstance(node, dict):
            todo.extend(reversed([(v, f"{where}.{k}") for k, v in node.items()]))
        elif isinstance(node, list | tuple):
            todo.extend(reversed([(v, f"{where}[{i}]") for i, v in enumerate(node)]))
    return None


def decode_json_body(body: bytes) -> Any:
    """Decode a body for embedding in another JSON document.

    An empty body is ``None``; a body that is not JSON is kept as a string.
    """
    if not body:
        return None
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", errors="replace")


def huge_number(body: bytes) -> str | None:
    """The first number of ``body`` (JSON) too large for a float, as written
    (``1e999``), or None when there is none or the body is not JSON. JSON sets no
    limit, but msgspec, which reads every body, cannot read such a number: a request
    holding one would fail the step that reads it, not the call that sent it."""
    found: list[str] = []

    def real(text: str) -> None:
        if math.isinf(float(text)):
            found.append(text)

    def whole(text: str) -> None:
        try:
            int(text)
        except ValueError:  # more digits than Python reads (4300)
            found.append(text)

    try:
        json.loads(body, parse_float=real, parse_int=whole)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None


def out_of_range(number: str) -> str:
    """What is wrong with a body holding ``number`` (see :func:`huge_number`)."""
    shown = number if len(number) <= 30 else f"{number[:20]}... ({len(number)} characters)"
    return f"the number {shown} is out of range (a float holds at most about 1.8e308)"


_new_object = object.__new__

Frozen = tuple[tuple[str, str, tuple[str, ...]], ...]
"""A header as :meth:`Metadata.frozen` gives it."""


def _bad_value(key: Any, value: Any) -> TypeError:
    if isinstance(value, list | tuple):
        value = next(v for v in value if not isinstance(v, str))
        what = f"{type(value).__name__} (in the list)"
    else:
        what = type(value).__name__
    hint = " (decode bytes first)" if isinstance(value, bytes) else ""
    return TypeError(f"header {key!r}: values must be str or a list of str, not {what}{hint}")


class Metadata(Mapping[str, str]):
    """Message headers: case-insensitive keys, several values per key.

    As a ``Mapping[str, str]`` it shows one entry per distinct key, whose value is the
    first one; :meth:`getall` gives every value. Keys keep the spelling they were
    first set with.

    Values are text: a ``str`` or a list (or tuple) of ``str``. Anything else, bytes
    included, is a ``TypeError`` naming the key: headers cross HTTP and brokers as
    text, and guessing an encoding or calling ``str()`` would store something else
    than what was meant (``b"x"`` is not ``"b'x'"``).
    """

    # Two forms, either of which may be missing (never both): the tables (``_values``
    # by lower-case key, ``_names`` the first spelling), which lookups and changes use,
    # and the frozen form (see frozen()), which stores keep and the engine builds step
    # headers from. A header nobody reads (most of those the engine makes) never
    # builds its tables.
    __slots__ = ("_frozen", "_names", "_values")

    _values: dict[str, tuple[str, ...]] | None
    _names: dict[str, str] | None
    _frozen: Frozen | None

    def __init__(
        self, mapping: Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]] | None = None
    ) -> None:
        self._values = self._names = None
        if mapping is None:
            self._frozen = ()
            return
        if isinstance(mapping, Metadata):
            self._frozen = mapping.frozen()
            return
        # tuples, not lists: dicts of strings and tuples of strings are not tracked by
        # the garbage collector
        self._frozen = None
        self._values, self._names = {}, {}
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        for key, value in items:
            if isinstance(value, str):
                self.add(key, value)
            elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                for one in value:
                    self.add(key, one)
            else:
                raise _bad_value(key, value)

    def _tables(self) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        values, names = self._values, self._names
        if values is None or names is None:
            frozen = self._frozen or ()
            names = self._names = {low: name for low, name, _ in frozen}
            values = self._values = {low: v for low, _, v in frozen}
        return values, names

    def _changing(self) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        tables = self._tables()
        self._frozen = None  # the frozen form no longer matches
        return tables

    def __getitem__(self, key: str) -> str:
        return self._tables()[0][key.lower()][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables()[1].values())

    def __len__(self) -> int:
        if self._values is None:
            return len(self._frozen or ())
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._tables()[0]

    def __delitem__(self, key: str) -> None:
        values, names = self._changing()
        low = key.lower()
        del values[low]
        del names[low]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Metadata):
            return self._tables()[0] == other._tables()[0]
        if isinstance(other, Mapping):
            return self == Metadata(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Metadata({self.to_dict()!r})"

    def get(self, key: str, default: Any = None) -> Any:
        values = self._tables()[0].get(key.lower())
        return values[0] if values else default

    def getall(self, key: str) -> list[str]:
        """Every value of ``key``, ``[]`` when it is absent."""
        return list(self._tables()[0].get(key.lower(), ()))

    def set(self, key: str, value: str) -> None:
        """Replace every value of ``key`` with ``value``."""
        if not isinstance(value, str):
            raise _bad_value(key, value)
        values, names = self._changing()
        low = key.lower()
        values[low] = (value,)
        names.setdefault(low, key)

    def add(self, key: str, value: str) -> None:
        """Append ``value`` to the values of ``key``."""
        if not isinstance(value, str):
            raise _bad_value(key, value)
        values, names = self._changing()
        low = key.lower()
        found = values.get(low)
        if found is None:
            values[low] = (value,)
            names[low] = key
        else:
            values[low] = (*found, value)

    def frozen(self) -> Frozen:
        """The header as tuples of strings, ``((key, spelling, values), ...)``, kept
        until the next change: a form the garbage collector stops tracking, for a
        store that keeps many headers (a dict inside a tuple would stay tracked)."""
        found = self._frozen
        if found is None:
            values, names = self._tables()
            found = self._frozen = tuple([(low, names[low], v) for low, v in values.items()])
        return found

    @staticmethod
    def from_frozen(frozen: Frozen) -> Metadata:
        """The inverse of :meth:`frozen`."""
        new = _new_object(Metadata)
        new._frozen = frozen
        new._values = new._names = None
        return new

    def copy(self) -> Metadata:
        return Metadata.from_frozen(self.frozen())

    def with_entries(self, entries: Frozen) -> Metadata:
        """A copy with each of ``entries`` (in the frozen form) set: a key it has keeps
        its place and first spelling, a new one comes last."""
        new = self.copy()
        for _, name, values in entries:
            new.set(name, values[0])
        return new

    def to_dict(self) -> dict[str, list[str]]:
        """The headers as ``{key: [values]}``, keys in their first spelling."""
        if self._values is None:
            return {name: list(values) for _, name, values in self._frozen or ()}
        names = self._tables()[1]
        return {names[low]: list(values) for low, values in self._values.items()}


class Message:
    """A step's request or response: a raw JSON body and a header.

    Args:
        body: raw bytes, kept byte for byte; any other value (dict, list, str,
            number, bool) is JSON-encoded; ``None`` is an empty body. A value holding
            NaN or infinity is a :class:`~microsaga.ConfigurationError` naming where
            (JSON has neither).
        header: a :class:`Metadata` or a dict of ``str`` or ``list[str]`` values.
    """

    __slots__ = ("body", "header")

    def __init__(self, body: Any = b"", header: Metadata | Mapping[str, Any] | None = None) -> None:
        if isinstance(body, bytes):
            self.body = body
        elif body is None:
            self.body = b""
        elif isinstance(body, bytearray | memoryview):
            self.body = bytes(body)
        else:
            self.body = encode_json(body)
        # type() first: Metadata is a Mapping, and isinstance against an ABC is slow
        if header is None:
            self.header = Metadata()
        elif type(header) is Metadata or isinstance(header, Metadata):
            self.header = header
        else:
            self.header = Metadata(header)

    @classmethod
    def of(cls, value: Any) -> Message:
        """``value`` itself when it is a Message, else ``Message(body=value)``."""
        return value if isinstance(value, Message) else cls(value)

    def json(self) -> Any:
        """The decoded body; ``None`` when the body is empty.

        Raises:
            ValueError: the body is not valid JSON.
        """
        if not self.body:
            return None
        try:
            return _decoder.decode(self.body)
        except msgspec.DecodeError as exc:
            raise ValueError(f"message body is not valid JSON: {exc}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.body == other.body and self.header == other.header

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 80 else self.body[:77] + b"..."
        return f"Message(body={body!r}, header={self.header.to_dict()!r})"


def raw_message(body: bytes, header: Metadata) -> Message:
    """A Message of a body already bytes and a header already a Metadata, made without
    the constructor's checks: the engine's own messages."""
    msg: Message = _new_object(Message)
    msg.body, msg.header = body, header
    return msg


def json_message(value: Any) -> Message:
    """``Message(value)`` for a value to JSON-encode (a function step's dict), made in
    one call: the engine makes one for every step that returns a value."""
    try:
        body = _encoder.encode(value)
    except (TypeError, msgspec.EncodeError):
        return Message(value)  # the constructor raises the clear error
    check_finite(value, body)
    return frozen_message(body, ())


def frozen_message(body: bytes, header: Frozen) -> Message:
    """``raw_message(body, Metadata.from_frozen(header))`` in one call: the engine makes
    one for every step it starts."""
    md: Metadata = _new_object(Metadata)
    md._frozen, md._values, md._names = header, None, None
    msg: Message = _new_object(Message)
    msg.body, msg.header = body, md
    return msg
