"""A read-only, bounds-checked reader of Cap'n Proto messages: the binary encoding concrete serializes evaluation
keys and ciphertexts in (concrete's protocol, ``concrete-protocol.capnp``).

The serving app reads the descriptions inside an owner's key and ciphertexts (which keys, with which parameters;
which shape and encryption) before concrete's native code sees them. Concrete ships no schema to read them with
and exposes no accessor on a deserialized key, so the few fields needed are read here, by their place in the
encoding: pure Python, every offset checked against the message's bounds, so a hostile message can only raise
:class:`CapnpError`. Only the unpacked, single-message encoding concrete writes is read; fields are read with a
default of zero, as Cap'n Proto does for a field beyond an older writer's struct.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

WORD_BYTES = 8
MAX_SEGMENTS = 1024
# No list the product reads has more elements than this (a circuit's keys, a tensor's dimensions, a payload's
# blobs); a list of zero-sized elements can claim billions without occupying a word, so counts are capped.
MAX_LIST_ELEMENTS = 1 << 16

_STRUCT, _LIST, _FAR = 0, 1, 2
_COMPOSITE = 7
_BITS_PER_ELEMENT = (0, 1, 8, 16, 32, 64, 64)


class CapnpError(ValueError):
    """The bytes are not a well-formed message of the expected shape."""


def _signed30(value: int) -> int:
    return value - (1 << 30) if value & (1 << 29) else value


class Message:
    """One message: its segments, read in place (no copy of the bytes)."""

    def __init__(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if len(view) < WORD_BYTES:
            raise CapnpError(f"is {len(view)} bytes, shorter than a message header")
        count = int.from_bytes(view[0:4], "little") + 1
        if count > MAX_SEGMENTS:
            raise CapnpError(f"claims {count} segments")
        header = (4 * (count + 1) + WORD_BYTES - 1) // WORD_BYTES * WORD_BYTES
        if len(view) < header:
            raise CapnpError("ends inside its segment table")
        self.segments: list[memoryview] = []
        offset = header
        for index in range(count):
            words = int.from_bytes(view[4 + 4 * index : 8 + 4 * index], "little")
            end = offset + words * WORD_BYTES
            if end > len(view):
                raise CapnpError(f"ends inside segment {index}: {len(view)} bytes, the segment table says {end}")
            self.segments.append(view[offset:end])
            offset = end
        if offset != len(view):
            raise CapnpError(f"has {len(view) - offset} bytes after its message")

    def root(self) -> Struct:
        if not self.segments or len(self.segments[0]) < WORD_BYTES:
            raise CapnpError("has no root pointer")
        return self._struct_at(0, 0)

    def _word(self, segment: int, word: int) -> int:
        if not 0 <= segment < len(self.segments):
            raise CapnpError(f"points to segment {segment}, which it lacks")
        data = self.segments[segment]
        if not 0 <= word < len(data) // WORD_BYTES:
            raise CapnpError(f"points outside segment {segment}")
        return int.from_bytes(data[word * WORD_BYTES : (word + 1) * WORD_BYTES], "little")

    def _check_span(self, segment: int, start: int, words: int) -> None:
        if start < 0 or start + words > len(self.segments[segment]) // WORD_BYTES:
            raise CapnpError(f"an object runs outside segment {segment}")

    def _resolve(self, segment: int, word: int) -> tuple[int, int, int] | None:
        """The pointer at (segment, word) as (segment of its object, first word of its object, pointer word with
        the object's kind and sizes); None for a null pointer. Far pointers are followed."""
        pointer = self._word(segment, word)
        if pointer == 0:
            return None
        if pointer & 3 != _FAR:
            return segment, word + 1 + _signed30((pointer >> 2) & 0x3FFFFFFF), pointer
        double = (pointer >> 2) & 1
        pad_segment, pad_word = pointer >> 32, (pointer >> 3) & 0x1FFFFFFF
        landing = self._word(pad_segment, pad_word)
        if not double:
            if landing & 3 == _FAR:
                raise CapnpError("has a far pointer landing on another far pointer")
            return pad_segment, pad_word + 1 + _signed30((landing >> 2) & 0x3FFFFFFF), landing
        if landing & 3 != _FAR or (landing >> 2) & 1:
            raise CapnpError("has a double-far landing pad that is not a far pointer")
        tag = self._word(pad_segment, pad_word + 1)
        if tag & 3 == _FAR:
            raise CapnpError("has a double-far tag that is a far pointer")
        return landing >> 32, (landing >> 3) & 0x1FFFFFFF, tag

    def _struct_at(self, segment: int, word: int) -> Struct:
        resolved = self._resolve(segment, word)
        if resolved is None:
            return Struct(self, segment, 0, 0, 0)  # a null struct reads as all defaults
        target_segment, start, pointer = resolved
        if pointer & 3 != _STRUCT:
            raise CapnpError("has a list where a struct belongs")
        data_words, pointer_count = (pointer >> 32) & 0xFFFF, pointer >> 48
        if not 0 <= target_segment < len(self.segments):
            raise CapnpError(f"points to segment {target_segment}, which it lacks")
        self._check_span(target_segment, start, data_words + pointer_count)
        return Struct(self, target_segment, start, data_words, pointer_count)

    def _list_at(self, segment: int, word: int) -> tuple[int, int, int, int] | None:
        """(segment, first word, element size code, element count) of the list the pointer points to."""
        resolved = self._resolve(segment, word)
        if resolved is None:
            return None
        target_segment, start, pointer = resolved
        if pointer & 3 != _LIST:
            raise CapnpError("has a struct where a list belongs")
        if not 0 <= target_segment < len(self.segments):
            raise CapnpError(f"points to segment {target_segment}, which it lacks")
        size, count = (pointer >> 32) & 7, pointer >> 35
        if size == _COMPOSITE:
            self._check_span(target_segment, start, 1 + count)
        else:
            self._check_span(target_segment, start, (count * _BITS_PER_ELEMENT[size] + 63) // 64)
        return target_segment, start, size, count


@dataclass(frozen=True)
class Struct:
    """One struct of a message: ``data_words`` of fields, then ``pointer_count`` pointers."""

    message: Message
    segment: int
    start: int
    data_words: int
    pointer_count: int

    def _field(self, byte: int, size: int) -> bytes:
        if byte + size > self.data_words * WORD_BYTES:
            return bytes(size)  # beyond the writer's struct: the default
        base = self.start * WORD_BYTES + byte
        return bytes(self.message.segments[self.segment][base : base + size])

    def uint16(self, byte: int) -> int:
        return int.from_bytes(self._field(byte, 2), "little")

    def uint32(self, byte: int) -> int:
        return int.from_bytes(self._field(byte, 4), "little")

    def float64(self, byte: int) -> float:
        value: float = struct.unpack("<d", self._field(byte, 8))[0]
        return value

    def boolean(self, bit: int) -> bool:
        return bool(self._field(bit // 8, 1)[0] >> (bit % 8) & 1)

    def _pointer_word(self, index: int) -> int | None:
        return self.start + self.data_words + index if index < self.pointer_count else None

    def _list(self, index: int, element_size: int, what: str) -> tuple[int, int, int] | None:
        """Where the list of pointer ``index`` lies (segment, first word, its count: of elements, or of words for a
        list of structs), if it is a list of ``element_size`` (capnp's size code) of at most MAX_LIST_ELEMENTS;
        None for a null pointer."""
        word = self._pointer_word(index)
        found = None if word is None else self.message._list_at(self.segment, word)
        if found is None:
            return None
        segment, start, size, count = found
        if size != element_size:
            raise CapnpError(f"has another list where {what} belongs")
        if element_size != _COMPOSITE and count > MAX_LIST_ELEMENTS:
            raise CapnpError(f"has {what} of {count} elements")
        return segment, start, count

    def struct(self, index: int) -> Struct:
        word = self._pointer_word(index)
        if word is None:
            return Struct(self.message, self.segment, 0, 0, 0)
        return self.message._struct_at(self.segment, word)

    def structs(self, index: int) -> list[Struct]:
        """The elements of a list of structs (an empty list when the pointer is null)."""
        found = self._list(index, _COMPOSITE, "a list of structs")
        if found is None:
            return []
        segment, start, words = found
        tag = self.message._word(segment, start)
        if tag & 3 != _STRUCT:
            raise CapnpError("has a list of structs without its tag")
        count, data_words, pointer_count = (tag >> 2) & 0x3FFFFFFF, (tag >> 32) & 0xFFFF, tag >> 48
        if count > MAX_LIST_ELEMENTS:
            raise CapnpError(f"has a list of {count} structs")
        if count * (data_words + pointer_count) > words:
            raise CapnpError("has a list of structs longer than its words")
        step = data_words + pointer_count
        return [Struct(self.message, segment, start + 1 + i * step, data_words, pointer_count) for i in range(count)]

    def uint32s(self, index: int) -> list[int]:
        found = self._list(index, 4, "a list of 32-bit integers")
        if found is None:
            return []
        segment, start, count = found
        data = self.message.segments[segment][start * WORD_BYTES : start * WORD_BYTES + 4 * count]
        return [int.from_bytes(data[4 * i : 4 * i + 4], "little") for i in range(count)]

    def blob_sizes(self, index: int) -> list[int]:
        """The byte counts of a ``List(Data)`` (concrete's payloads: one or more blobs), without reading them."""
        found = self._list(index, 6, "a list of blobs")
        if found is None:
            return []
        segment, start, count = found
        sizes = []
        for element in range(count):
            blob = self.message._list_at(segment, start + element)
            if blob is None:
                sizes.append(0)
                continue
            if blob[2] != 2:
                raise CapnpError("has another list where a blob belongs")
            sizes.append(blob[3])
        return sizes
