"""What the served circuit expects of an evaluation key and of a ciphertext, and the checks of an owner's bytes
against it before concrete's native code sees them.

Concrete's native code trusts the keys it is given: a key set that deserializes but lacks a key the circuit uses,
or a key whose payload is shorter than its parameters say, crashes the process that evaluates with it
(SIGSEGV, or an assertion's abort). So a key is compared with the circuit's key set (``ProgramInfo.keyset``:
its bootstrap, keyswitch and packing keyswitch keys, their count, ids, parameters and compression) and each
key's payload with the size its parameters make; a ciphertext with the circuit's input (shape, precision,
encryption parameters, compression, payload size). Both sides are read from concrete's own descriptions: the
circuit's from its ``ProgramInfo`` (JSON), the owner's from the bytes (Cap'n Proto, ``capnp_reader``), field by
field under the protocol's names, so a refusal names what differs.

No concrete import here: the checks run on bytes and JSON only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from common.bundle.schema import BundleError
from containers.inference.capnp_reader import CapnpError, Message, Struct

# Concrete's seeded compression keeps, of each encryption, its body and one 128-bit seed for all the masks.
SEED_BYTES = 16
# A key's encoding around its payloads (segment table, pointers, descriptions): a few hundred bytes a key.
KEY_ENCODING_ALLOWANCE = 64 * 1024

_KEY_TYPES = ("binary", "ternary")
_COMPRESSIONS = ("none", "seed", "paillier")
_MODULI = ("native", "powerOfTwo", "integer")
_VALUE_TYPES = ("lweCiphertext", "plaintext", "index")

Modulus = tuple[str, int]


def _enum(names: Sequence[str], value: int) -> str:
    return names[value] if value < len(names) else f"unknown ({value})"


def _modulus_of_struct(found: Struct) -> Modulus:
    kind = _enum(_MODULI, found.uint16(0))
    return kind, (found.struct(0).uint32(0) if kind != "native" else 0)


def _modulus_of_json(value: Any) -> Modulus:
    union = (value or {}).get("modulus") or {"native": {}}
    kind = next(iter(union))
    inner = union[kind] or {}
    return kind, int(inner.get("power", inner.get("modulus", 0)))


# One field of a key's parameters: its name in the protocol, and how it is read from the encoded struct.
_Reader = Callable[[Struct], object]


def _u32(byte: int) -> _Reader:
    return lambda found: found.uint32(byte)


def _f64(byte: int) -> _Reader:
    return lambda found: found.float64(byte)


def _key_type(byte: int) -> _Reader:
    return lambda found: _enum(_KEY_TYPES, found.uint16(byte))


def _modulus(pointer: int) -> _Reader:
    return lambda found: _modulus_of_struct(found.struct(pointer))


@dataclass(frozen=True)
class _KeyKind:
    """One kind of evaluation key: where a server key set lists it, and its parameters' places (by the
    protocol's struct layout: each field's offset follows from the fields declared before it)."""

    name: str  # what the owner reads
    keyset_field: str  # its list in the protocol's KeysetInfo (JSON)
    server_pointer: int  # its list in the protocol's ServerKeyset
    params: tuple[tuple[str, _Reader], ...]


_KINDS = (
    _KeyKind(
        "bootstrap key",
        "lweBootstrapKeys",
        0,
        (
            ("levelCount", _u32(0)),
            ("baseLog", _u32(4)),
            ("glweDimension", _u32(8)),
            ("polynomialSize", _u32(12)),
            ("inputLweDimension", _u32(32)),
            ("variance", _f64(16)),
            ("integerPrecision", _u32(24)),
            ("modulus", _modulus(0)),
            ("keyType", _key_type(28)),
        ),
    ),
    _KeyKind(
        "keyswitch key",
        "lweKeyswitchKeys",
        1,
        (
            ("levelCount", _u32(0)),
            ("baseLog", _u32(4)),
            ("inputLweDimension", _u32(24)),
            ("outputLweDimension", _u32(28)),
            ("variance", _f64(8)),
            ("integerPrecision", _u32(16)),
            ("modulus", _modulus(0)),
            ("keyType", _key_type(20)),
        ),
    ),
    _KeyKind(
        "packing keyswitch key",
        "packingKeyswitchKeys",
        2,
        (
            ("levelCount", _u32(0)),
            ("baseLog", _u32(4)),
            ("glweDimension", _u32(8)),
            ("polynomialSize", _u32(12)),
            ("inputLweDimension", _u32(16)),
            ("innerLweDimension", _u32(20)),
            ("variance", _f64(24)),
            ("integerPrecision", _u32(32)),
            ("modulus", _modulus(0)),
            ("keyType", _key_type(36)),
        ),
    ),
)

# A key's description before its parameters: LweBootstrapKeyInfo, LweKeyswitchKeyInfo and PackingKeyswitchKeyInfo
# share this layout.
_INFO_FIELDS: tuple[tuple[str, _Reader], ...] = (
    ("id", _u32(0)),
    ("inputId", _u32(4)),
    ("outputId", _u32(8)),
    ("compression", lambda found: _enum(_COMPRESSIONS, found.uint16(12))),
)


def _key_description_of_json(kind: _KeyKind, info: Mapping[str, Any]) -> dict[str, object]:
    params = info.get("params") or {}
    described: dict[str, object] = {
        "id": int(info.get("id", 0)),
        "inputId": int(info.get("inputId", 0)),
        "outputId": int(info.get("outputId", 0)),
        "compression": str(info.get("compression", "none")),
    }
    for name, _ in kind.params:
        if name == "modulus":
            described[name] = _modulus_of_json(params.get("modulus"))
        elif name == "keyType":
            described[name] = str(params.get("keyType", "binary"))
        elif name == "variance":
            described[name] = float(params.get("variance", 0.0))
        else:
            described[name] = int(params.get(name, 0))
    return described


def _key_description_of_struct(kind: _KeyKind, key: Struct) -> dict[str, object]:
    info = key.struct(0)
    described = {name: read(info) for name, read in _INFO_FIELDS}
    params = info.struct(0)
    described.update({name: read(params) for name, read in kind.params})
    return described


def _payload_bytes(kind: _KeyKind, described: Mapping[str, Any], *, decompressed: bool = False) -> int | None:
    """The bytes of a key's payload as its parameters make them (``decompressed``: as concrete holds it to
    evaluate); None where the product cannot say (packing keyswitch keys, which no model it trains uses)."""
    element = math.ceil(int(described["integerPrecision"]) / 8)
    compression = "none" if decompressed else described["compression"]
    if compression not in ("none", "seed"):
        return None
    seeded = compression == "seed"
    if kind.keyset_field == "lweBootstrapKeys":
        glwe_size = int(described["glweDimension"]) + 1
        rows = int(described["inputLweDimension"]) * int(described["levelCount"]) * glwe_size
        per_row = int(described["polynomialSize"]) * (1 if seeded else glwe_size)
        return rows * per_row * element + (SEED_BYTES if seeded else 0)
    if kind.keyset_field == "lweKeyswitchKeys":
        rows = int(described["inputLweDimension"]) * int(described["levelCount"])
        per_row = 1 if seeded else int(described["outputLweDimension"]) + 1
        return rows * per_row * element + (SEED_BYTES if seeded else 0)
    return None


def _shown(value: object) -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return value[0] if value[0] == "native" else f"{value[0]} {value[1]}"
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ")"
    return repr(value) if isinstance(value, float) else str(value)


def _first_difference(theirs: Mapping[str, object], ours: Mapping[str, object], whose: str) -> str | None:
    for name, expected in ours.items():
        if theirs.get(name) != expected:
            return f"its {name} is {_shown(theirs.get(name))}, {whose} is {_shown(expected)}"
    return None


# The places of a ciphertext's description in the protocol's Value (payload, rawInfo, typeInfo) and
# LweCiphertextTypeInfo.
def _value_description_of_struct(value: Struct) -> dict[str, object]:
    raw = value.struct(1)
    type_info = value.struct(2)
    kind = _enum(_VALUE_TYPES, type_info.uint16(0))
    described: dict[str, object] = {
        "rawInfo.shape": tuple(raw.struct(0).uint32s(0)),
        "rawInfo.integerPrecision": raw.uint32(0),
        "rawInfo.isSigned": raw.boolean(32),
        "typeInfo": kind,
    }
    if kind == "lweCiphertext":
        lwe = type_info.struct(0)
        encryption = lwe.struct(2)
        described.update(
            {
                "abstractShape": tuple(lwe.struct(0).uint32s(0)),
                "concreteShape": tuple(lwe.struct(1).uint32s(0)),
                "integerPrecision": lwe.uint32(0),
                "encryption.keyId": encryption.uint32(0),
                "encryption.lweDimension": encryption.uint32(4),
                "encryption.variance": encryption.float64(8),
                "encryption.modulus": _modulus_of_struct(encryption.struct(0)),
                "compression": _enum(_COMPRESSIONS, lwe.uint16(4)),
            }
        )
    return described


def _value_description_of_json(gate: Mapping[str, Any]) -> dict[str, object]:
    raw = gate.get("rawInfo") or {}
    type_info = gate.get("typeInfo") or {}
    kind = next(iter(type_info), "lweCiphertext")
    described: dict[str, object] = {
        "rawInfo.shape": tuple(int(d) for d in (raw.get("shape") or {}).get("dimensions", [])),
        "rawInfo.integerPrecision": int(raw.get("integerPrecision", 0)),
        "rawInfo.isSigned": bool(raw.get("isSigned", False)),
        "typeInfo": kind,
    }
    if kind == "lweCiphertext":
        lwe = type_info[kind] or {}
        encryption = lwe.get("encryption") or {}
        described.update(
            {
                "abstractShape": tuple(int(d) for d in (lwe.get("abstractShape") or {}).get("dimensions", [])),
                "concreteShape": tuple(int(d) for d in (lwe.get("concreteShape") or {}).get("dimensions", [])),
                "integerPrecision": int(lwe.get("integerPrecision", 0)),
                "encryption.keyId": int(encryption.get("keyId", 0)),
                "encryption.lweDimension": int(encryption.get("lweDimension", 0)),
                "encryption.variance": float(encryption.get("variance", 0.0)),
                "encryption.modulus": _modulus_of_json(encryption.get("modulus")),
                "compression": str(lwe.get("compression", "none")),
            }
        )
    return described


@dataclass(frozen=True)
class CircuitSpecs:
    """The served circuit's evaluation key set and its input, as concrete describes them."""

    keys: tuple[tuple[_KeyKind, tuple[dict[str, object], ...]], ...]
    input: dict[str, object]

    @classmethod
    def from_program_info(cls, program_info: Mapping[str, Any]) -> CircuitSpecs:
        """From concrete's ``ProgramInfo`` as JSON (``fhe.Server.program_info.serialize()``)."""
        keyset = program_info.get("keyset") or {}
        keys = tuple(
            (kind, tuple(_key_description_of_json(kind, info) for info in keyset.get(kind.keyset_field) or []))
            for kind in _KINDS
        )
        circuits = program_info.get("circuits") or []
        if len(circuits) != 1 or len(circuits[0].get("inputs") or []) != 1:
            # Every model the product trains compiles to one circuit of one encrypted input, and a shard holds
            # one ciphertext per sample.
            raise ValueError("the serving app evaluates a program of one circuit with one input")
        return cls(keys, _value_description_of_json(circuits[0]["inputs"][0]))

    def _payloads(self, *, decompressed: bool) -> list[int | None]:
        return [
            _payload_bytes(kind, described, decompressed=decompressed)
            for kind, expected in self.keys
            for described in expected
        ]

    @property
    def key_bytes(self) -> int | None:
        """The most bytes an evaluation key of this circuit takes serialized; None where it cannot be said."""
        payloads = self._payloads(decompressed=False)
        return None if None in payloads else sum(p for p in payloads if p is not None) + KEY_ENCODING_ALLOWANCE

    @property
    def key_memory_bytes(self) -> int:
        """What a loaded key of this circuit holds in memory: concrete keeps the payloads it read and, once it
        evaluates, the keys decompressed (a seeded bootstrap key grows by its GLWE size)."""
        read = self._payloads(decompressed=False)
        unpacked = self._payloads(decompressed=True)
        return sum((r or 0) + (u or 0) for r, u in zip(read, unpacked, strict=True))

    def check_evaluation_key(self, data: bytes | memoryview) -> None:
        """Raise a ``bad_key`` BundleError naming the first thing in which ``data`` differs from this circuit's
        key set."""
        try:
            root = Message(data).root()
            for kind, expected in self.keys:
                found = root.structs(kind.server_pointer)
                if len(found) != len(expected):
                    raise BundleError(
                        "evaluation_key",
                        f"{kind.name}s: the key has {len(found)}, the served circuit uses {len(expected)}; it is not "
                        "a key of this model, run `fhe-client keys` for it",
                        "bad_key",
                    )
                for index, (key, ours) in enumerate(zip(found, expected, strict=True)):
                    theirs = _key_description_of_struct(kind, key)
                    difference = _first_difference(theirs, ours, "the served circuit's")
                    if difference is not None:
                        raise BundleError(
                            "evaluation_key",
                            f"{kind.name} {index}: {difference}; it is not a key of this model, run `fhe-client "
                            "keys` for it",
                            "bad_key",
                        )
                    carried, made = sum(key.struct(1).blob_sizes(0)), _payload_bytes(kind, ours)
                    if made is not None and carried != made:
                        raise BundleError(
                            "evaluation_key",
                            f"{kind.name} {index} carries {carried} payload bytes, its parameters make {made}",
                            "bad_key",
                        )
        except CapnpError as error:
            raise BundleError("evaluation_key", f"is not a serialized evaluation key: it {error}", "bad_key") from None

    def check_ciphertext(self, data: bytes | memoryview, field: str) -> None:
        """Raise a ``bad_ciphertext`` BundleError naming the first thing in which ``data`` differs from this
        circuit's input."""
        try:
            value = Message(data).root()
            theirs = _value_description_of_struct(value)
            difference = _first_difference(theirs, self.input, "the served circuit's input's")
            if difference is not None:
                raise BundleError(
                    field,
                    f"{difference}: it is not a ciphertext of this model's "
                    "input; encrypt it with `fhe-client encrypt` for this model",
                    "bad_ciphertext",
                )
            shape = cast(tuple[int, ...], self.input["rawInfo.shape"])
            precision = cast(int, self.input["rawInfo.integerPrecision"])
            made = math.prod(shape) * math.ceil(precision / 8)
            carried = sum(value.struct(0).blob_sizes(0))
            if carried != made:
                raise BundleError(
                    field, f"carries {carried} payload bytes, its shape and precision make {made}", "bad_ciphertext"
                )
        except CapnpError as error:
            raise BundleError(field, f"is not a serialized ciphertext: it {error}", "bad_ciphertext") from None
