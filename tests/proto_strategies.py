"""Hypothesis strategies for any protobuf message, built by walking its descriptor.

A fuzz test should not have to be edited when a request message grows a field: each
strategy here reads ``DESCRIPTOR.fields`` and draws, for every field, either nothing or a
value of its type chosen to be awkward: integers at the edges of their width, NaN and the
infinities, empty, huge and odd unicode strings, repeated fields from empty to past the
server's limits, nested messages (``google.protobuf.Struct`` and ``Value`` included, so
attribute and filter values nest), map fields, and enum numbers the schema does not name.
``vocabulary`` mixes in words the server knows (ids, tenants, channels, event kinds,
attribute keys), so some requests get past validation and reach the engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = FieldDescriptor
INT_RANGES: dict[int, tuple[int, int]] = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1), F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1), F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}
"""The range each protobuf integer type can carry."""

ODD_STRINGS = [
    "", " ", "\t\n\r", "\x00", "a\x00b", "\u202e\u202dtxet", "\ufeff", "\u200b", "\U0001f600" * 3,
    "e\u0301", "\ufb01", "\u0130", "\u00df", "Z\u0324\u0354\u0367\u0311\u0313", "%s%n%x{}",
    "' OR 1=1 --", "../../etc/passwd", "${jndi:ldap://x}", "\U0010ffff", "\ud7ff\ue000",
    "\x7f\x1b[2J", "NaN", "-Infinity", "1e309", "9223372036854775808", "a" * 129, "a" * 513,
    "\u00e9" * 201, "x" * 5_000, "word " * 2_000, "\U0001f600" * 600, "z" * 70_000,
]
"""Strings that have broken parsers before: control and format characters, combining marks,
astral planes, numbers as text, and lengths just past each of the server's limits."""

EDGE_FLOATS = [
    math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308,
    1.7976931348623157e308, -1.7976931348623157e308, 3.4028234663852886e38, 3.4028235e38 * 2,
    1e-45, 0.5, 1.0, -1.0, 2.0**53, 2.0**53 + 2, 2.0**63, -(2.0**63), 2.0**64, 1e20, 1e300,
]
"""Doubles at the edges: NaN, the infinities, signed zero, subnormals, the largest values of
double and float, and the integers where exactness and int64 end."""

LONG_REPEATS = [21, 101, 1025, 3000]
"""Lengths of a repeated field just past the server's limits (ids, conditions, any_of)."""


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in [low, high]: the edges and their neighbours, small ones, and any."""
    edges = {low, low + 1, high - 1, high, 0, 1, 2, 3, 5, 10, 49, 50, 51, 1000, 1001, 10_000,
             10_001, 60_000, 2**31 - 1, 2**31, 2**32 - 1, 2**53, 2**53 + 1, 2**63 - 1, -1, -2}
    return st.one_of(st.sampled_from(sorted(e for e in edges if low <= e <= high)),
                     st.integers(0, 64).filter(lambda i: low <= i <= high),
                     st.integers(low, high))


def strings(vocabulary: Sequence[str]) -> st.SearchStrategy[str]:
    """Known words, odd strings and arbitrary text (no lone surrogates: protobuf refuses
    them on the client before anything is sent)."""
    text = st.text(st.characters(codec="utf-8"), max_size=40)
    choices = [st.sampled_from(ODD_STRINGS), text]
    if vocabulary:
        choices.insert(0, st.sampled_from(list(vocabulary)))
    return st.one_of(*choices)


def byte_strings(samples: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Given samples (valid and broken images, say) and random bytes."""
    choices = [st.binary(max_size=96)]
    if samples:
        choices.insert(0, st.sampled_from(list(samples)))
    return st.one_of(*choices)


class MessageStrategies:
    """Strategies for the messages of one proto schema, with shared vocabularies.

    Three kinds of message: :meth:`wild` (every field awkward), :meth:`tame` (values a
    server accepts more often than not: known words, small numbers, valid images) and
    :meth:`one_wild` (a tame message with one field made wild, so each field's own check
    is what the server must get right). ``max_depth`` bounds nesting of message fields
    (past it, message fields stay unset, which for ``google.protobuf.Value`` is itself an
    odd case: a value of no kind).
    """

    def __init__(self, vocabulary: Sequence[str] = (), byte_samples: Sequence[bytes] = (),
                 valid_bytes: Sequence[bytes] = (), max_depth: int = 4) -> None:
        self.wild_strings = strings(vocabulary)
        self.wild_bytes = byte_strings(byte_samples)
        words = list(vocabulary) or ["x"]
        self.tame_strings = st.one_of(st.sampled_from(words),
                                      st.text("abcxyz 019-", min_size=1, max_size=12))
        self.tame_bytes = st.sampled_from(list(valid_bytes) or [b""])
        self.max_depth = max_depth

    def wild(self, descriptor: Descriptor) -> st.SearchStrategy[Message]:
        """A message with any subset of its fields set to awkward values."""
        return self._message(descriptor, 0, tame=False)

    def tame(self, descriptor: Descriptor) -> st.SearchStrategy[Message]:
        """A message with any subset of its fields set to ordinary values."""
        return self._message(descriptor, 0, tame=True)

    def one_wild(self, descriptor: Descriptor) -> st.SearchStrategy[Message]:
        """A tame message whose one field (any of them) holds an awkward value."""
        if not descriptor.fields:
            return self.tame(descriptor)

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            message = draw(self.tame(descriptor))
            field = draw(st.sampled_from(list(descriptor.fields)))
            message.ClearField(field.name)
            return _fill(message, {field.name: draw(self._field(field, 0, tame=False))})

        return build()

    def any(self, descriptor: Descriptor) -> st.SearchStrategy[Message]:
        """Wild, tame or one-wild, in equal shares."""
        return st.one_of(self.wild(descriptor), self.tame(descriptor),
                         self.one_wild(descriptor))

    def _message(self, descriptor: Descriptor, depth: int, *, tame: bool
                 ) -> st.SearchStrategy[Message]:
        cls = GetMessageClass(descriptor)
        limit = self.max_depth - 1 if tame else self.max_depth
        fields = [f for f in descriptor.fields if f.type != F.TYPE_MESSAGE or depth < limit]
        if not fields:
            return st.builds(cls)
        parts = {f.name: st.one_of(st.none(), self._field(f, depth, tame=tame)) for f in fields}
        return st.fixed_dictionaries(parts).map(lambda values: _fill(cls(), values))

    def _field(self, field: FieldDescriptor, depth: int, *, tame: bool
               ) -> st.SearchStrategy[Any]:
        """The value of one field: a scalar, a message, a list (repeated) or a dict (map)."""
        if _is_map(field):
            entry = field.message_type.fields_by_name
            return st.dictionaries(self._single(entry["key"], depth + 1, tame=tame),
                                   self._single(entry["value"], depth + 1, tame=tame),
                                   max_size=3 if tame else 5)
        single = self._single(field, depth, tame=tame)
        if not field.is_repeated:
            return single
        if tame:
            return st.lists(single, max_size=3)
        long = st.tuples(self._single(field, depth, tame=True), st.sampled_from(LONG_REPEATS))
        return st.one_of(st.lists(single, max_size=5), long.map(lambda p: [p[0]] * p[1]))

    def _single(self, field: FieldDescriptor, depth: int, *, tame: bool
                ) -> st.SearchStrategy[Any]:
        """One value of ``field``'s type (ignoring whether it repeats)."""
        kind = field.type
        if kind == F.TYPE_MESSAGE:
            return st.deferred(lambda: self._message(field.message_type, depth + 1, tame=tame))
        if kind == F.TYPE_BOOL:
            return st.booleans()
        if kind == F.TYPE_ENUM:
            known = [v.number for v in field.enum_type.values]
            if tame:
                return st.sampled_from(known)
            return st.one_of(st.sampled_from(known),
                             st.sampled_from([max(known) + 1, -1, 99, 2**31 - 1, -(2**31)]),
                             st.integers(-(2**31), 2**31 - 1))
        if tame:
            return self._tame_scalar(kind)
        if kind in INT_RANGES:
            return _ints(*INT_RANGES[kind])
        if kind == F.TYPE_DOUBLE:
            return st.one_of(st.sampled_from(EDGE_FLOATS), st.floats())
        if kind == F.TYPE_FLOAT:
            return st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(width=32))
        if kind == F.TYPE_STRING:
            return self.wild_strings
        if kind == F.TYPE_BYTES:
            return self.wild_bytes
        raise NotImplementedError(f"field {field.full_name}: type {kind} (groups are proto2)")

    def _tame_scalar(self, kind: int) -> st.SearchStrategy[Any]:
        if kind in INT_RANGES:
            return st.integers(0, 40)
        if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return st.one_of(st.integers(0, 5).map(float), st.floats(0.0, 2.0, width=32))
        if kind == F.TYPE_STRING:
            return self.tame_strings
        if kind == F.TYPE_BYTES:
            return self.tame_bytes
        raise NotImplementedError(f"type {kind} (groups are proto2)")


def _is_map(field: FieldDescriptor) -> bool:
    return (field.type == F.TYPE_MESSAGE and field.is_repeated
            and field.message_type.GetOptions().map_entry)


def _fill(message: Message, values: dict[str, Any]) -> Message:
    """``message`` with each non-None value set on its field (last member of a oneof wins)."""
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        if value is None:
            continue
        field = fields[name]
        target = getattr(message, name)
        if _is_map(field):
            for key, item in value.items():
                if field.message_type.fields_by_name["value"].type == F.TYPE_MESSAGE:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            (target.extend if field.type != F.TYPE_MESSAGE else _add_all(target))(value)
        elif field.type == F.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _add_all(container: Any) -> Callable[[list[Message]], None]:
    """A function that appends copies of messages to a repeated message field."""
    def add(values: list[Message]) -> None:
        for value in values:
            container.add().CopyFrom(value)
    return add


def length_delimited(number: int, payload: bytes) -> bytes:
    """One field of wire type 2 (a string, bytes or message) holding ``payload``."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def nested_values(depth: int) -> bytes:
    """The bytes of a ``google.protobuf.Value`` holding lists nested ``depth`` deep, built by
    hand because protobuf refuses to build (or parse) one past its recursion limit."""
    data = b""
    for _ in range(depth):  # Value.list_value (6) holding ListValue.values (1)
        data = length_delimited(1, length_delimited(6, data))
    return length_delimited(6, data)


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)
