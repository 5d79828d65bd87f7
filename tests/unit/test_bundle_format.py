"""Bundle format v1: valid bundles round-trip; malformed manifests, shards and shard requests are refused by
the validator's own error naming the field. The fuzzing part generates well over 10,000 malformed inputs."""

from __future__ import annotations

import copy
import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.bundle.manifest import ShardEntry, parse_manifest
from common.bundle.messages import parse_shard_request
from common.bundle.schema import MAX_SAMPLES_PER_SHARD, MAX_SHARD_BYTES, MAX_SHARDS, BundleError, sha256_hex
from common.bundle.serving import check_versions
from common.bundle.shards import check_object, encode_shard, parse_shard
from common.versions import VersionsRecord
from tests.unit.conftest import UNIT_BUCKET, UNIT_OWNER

PACKAGE_ARN = "arn:aws:sagemaker:us-east-1:000000000000:model-package/fhe-models/3"
SAMPLES = [b"ciphertext-%d" % i * (i + 1) for i in range(3)]
SHARD = encode_shard(SAMPLES)


def valid_manifest(shards: int = 2) -> dict[str, Any]:
    return {
        "format": "fhe-batch-bundle",
        "format_version": 1,
        "kind": "request",
        "bundle_id": "b-20261122-0001",
        "created_at": "2026-11-22T10:00:00Z",
        "model": {"package_arn": PACKAGE_ARN, "package_group": "fhe-models", "package_version": 3},
        "versions": {"python": "3.11.7", "concrete_python": "2.10.0", "concrete_ml": "1.9.0"},
        "evaluation_key": {"sha256": "a" * 64, "uri": "s3://bucket-1/keys/" + "a" * 64 + ".ekey", "size": 64},
        "shards": [
            {"index": i, "key": f"shards/{i:05d}.fhe", "samples": 3, "sha256": sha256_hex(SHARD), "size": len(SHARD)}
            for i in range(shards)
        ],
        "total_samples": 3 * shards,
    }


def test_valid_manifest_round_trips() -> None:
    manifest = parse_manifest(json.dumps(valid_manifest()).encode())
    assert manifest.total_samples == 6
    assert manifest.model.package_version == 3
    assert parse_manifest(manifest.to_json()) == manifest


def test_valid_shard_round_trips() -> None:
    assert parse_shard(SHARD, expected_samples=3) == SAMPLES
    results = encode_shard([b"r1", b"r2"], kind="results")
    assert parse_shard(results, kind="results") == [b"r1", b"r2"]
    with pytest.raises(BundleError, match="results"):
        parse_shard(results)  # a result shard is not a request shard


@pytest.mark.parametrize(
    ("key", "field_code"),
    [
        ("../other-bundle/shards/00000.fhe", "escapes_prefix"),
        ("shards/../../keys/x.ekey", "escapes_prefix"),
        ("/etc/passwd", "escapes_prefix"),
        ("shards\\..\\x", "escapes_prefix"),
        ("./shards/00000.fhe", "escapes_prefix"),
        ("shards//00000.fhe", "invalid"),
        ("shards/00000.fhe/", "invalid"),
        ("shärds/1", "invalid"),
    ],
)
def test_keys_that_climb_out_are_refused(key: str, field_code: str) -> None:
    data = valid_manifest()
    data["shards"][1]["key"] = key
    with pytest.raises(BundleError) as raised:
        parse_manifest(data)
    assert raised.value.field == "shards[1].key"
    assert raised.value.code == field_code


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("shards", 0, "size"), MAX_SHARD_BYTES + 1, "shards[0].size"),
        (("shards", 0, "samples"), MAX_SAMPLES_PER_SHARD + 1, "shards[0].samples"),
        (("shards", 0, "samples"), 10**40, "shards[0].samples"),
        (("evaluation_key", "size"), -1, "evaluation_key.size"),
        (("total_samples",), 7, "total_samples"),
        (("model", "package_version"), 4, "model.package_version"),
        (("format_version",), 2, "format_version"),
        (("evaluation_key", "uri"), "s3://bucket-1/keys/../secret", "evaluation_key.uri"),
    ],
)
def test_absurd_or_inconsistent_values_are_refused(path: tuple[Any, ...], value: Any, field: str) -> None:
    data = valid_manifest()
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(BundleError) as raised:
        parse_manifest(data)
    assert raised.value.field == field


def test_too_many_shards_is_refused_before_reading_them() -> None:
    data = valid_manifest()
    data["shards"] = [None] * (MAX_SHARDS + 1)
    with pytest.raises(BundleError, match=f"over the limit of {MAX_SHARDS}") as raised:
        parse_manifest(data)
    assert raised.value.field == "shards"


def test_deep_nesting_and_duplicates_are_refused() -> None:
    with pytest.raises(BundleError) as raised:
        parse_manifest(b"[" * 100_000 + b"]" * 100_000)
    assert raised.value.field == "manifest"
    text = json.dumps(valid_manifest())
    with pytest.raises(BundleError, match="duplicate"):
        parse_manifest(text[:-1] + ', "kind": "result"}')


def test_object_checks_name_the_problem() -> None:
    entry = ShardEntry(0, "shards/00000.fhe", 3, sha256_hex(SHARD), len(SHARD))
    with pytest.raises(BundleError) as raised:
        check_object(SHARD[:-5], size=entry.size, sha256=entry.sha256, field="shards[0]")
    assert raised.value.code == "truncated"
    tampered = SHARD[:-1] + bytes([SHARD[-1] ^ 1])
    with pytest.raises(BundleError) as raised:
        check_object(tampered, size=entry.size, sha256=entry.sha256, field="shards[0]")
    assert raised.value.code == "checksum"


def test_version_mismatch_names_the_component() -> None:
    manifest = parse_manifest(valid_manifest())
    with pytest.raises(BundleError) as raised:
        check_versions(manifest, VersionsRecord("3.11.9", "2.9.0", "1.9.0"))
    assert raised.value.field == "versions.concrete_python"
    assert raised.value.code == "version_mismatch"
    check_versions(manifest, VersionsRecord("3.11.9", "2.10.0", "1.9.0"))


# --------------------------------------------------------------------------------------------------------
# Fuzzing: every generated input is malformed by construction; each must raise BundleError naming a field.

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
INT_FIELDS = {
    ("format_version",),
    ("total_samples",),
    ("model", "package_version"),
    ("evaluation_key", "size"),
    ("shards", 0, "index"),
    ("shards", 0, "samples"),
    ("shards", 0, "size"),
    ("shards", 1, "samples"),
}
STRING_FIELDS = {
    ("format",),
    ("kind",),
    ("bundle_id",),
    ("created_at",),
    ("model", "package_arn"),
    ("model", "package_group"),
    ("versions", "python"),
    ("versions", "concrete_python"),
    ("versions", "concrete_ml"),
    ("evaluation_key", "sha256"),
    ("evaluation_key", "uri"),
    ("shards", 0, "key"),
    ("shards", 1, "sha256"),
}
CLIMBING_SEGMENTS = st.sampled_from(["..", ".", "", "shards", "00000.fhe", "..\\..", "%2e%2e", "~", " "])
CLIMBING_KEYS = st.lists(CLIMBING_SEGMENTS, min_size=1, max_size=6).map("/".join).filter(
    lambda key: (
        ".." in key.split("/")
        or key.startswith("/")
        or "\\" in key
        or "//" in key
        or "%" in key
        or "~" in key
        or " " in key
        or key in ("", ".")
        or key.endswith("/")
        or "." in key.split("/")
    )
) | st.builds(lambda k: "/" + k, st.text(min_size=1, max_size=30))
ABSURD_INTS = st.one_of(st.integers(max_value=-1), st.integers(min_value=10**10), st.just(2**63), st.just(-(2**63)))
# Values that break a string field's pattern for sure: none of them is a valid value of any string field.
BAD_STRINGS = st.one_of(
    st.just(""),
    st.text(alphabet="\x00\n\t /\\<>\"'{}|", min_size=1, max_size=10),
    st.text(min_size=3000, max_size=3001),
)


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def _delete(data: dict[str, Any], path: tuple[Any, ...]) -> None:
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]


def _field_name(path: tuple[Any, ...]) -> str:
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name


@st.composite
def malformed_manifests(draw: st.DrawFn) -> tuple[bytes | dict[str, Any], str]:
    """A malformed manifest and the field prefix the error must name ('' when any field will do)."""
    data = valid_manifest(shards=draw(st.integers(2, 4)))
    mutation = draw(
        st.sampled_from(
            ["delete", "wrong_type_int", "wrong_type_str", "absurd_int", "bad_string", "climb", "unknown", "truncate"]
        )
    )
    if mutation == "delete":
        path = draw(st.sampled_from(sorted(INT_FIELDS | STRING_FIELDS, key=str)))
        _delete(data, path)
        return data, ""
    if mutation == "wrong_type_int":
        path = draw(st.sampled_from(sorted(INT_FIELDS, key=str)))
        _set(data, path, draw(JSON_VALUES.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))))
        return data, ""
    if mutation == "wrong_type_str":
        path = draw(st.sampled_from(sorted(STRING_FIELDS, key=str)))
        _set(data, path, draw(JSON_VALUES.filter(lambda v: not isinstance(v, str))))
        return data, ""
    if mutation == "absurd_int":
        path = draw(st.sampled_from(sorted(INT_FIELDS, key=str)))
        _set(data, path, draw(ABSURD_INTS))
        return data, ""
    if mutation == "bad_string":
        path = draw(st.sampled_from(sorted(STRING_FIELDS, key=str)))
        _set(data, path, draw(BAD_STRINGS))
        return data, _field_name(path)
    if mutation == "climb":
        index = draw(st.integers(0, len(data["shards"]) - 1))
        data["shards"][index]["key"] = draw(CLIMBING_KEYS)
        return data, f"shards[{index}].key"
    if mutation == "unknown":
        section = draw(st.sampled_from(["", "model", "versions", "evaluation_key", "shards"]))
        name = draw(st.text(min_size=1, max_size=10).filter(lambda n: n not in ("request",)))
        target = data if not section else (data["shards"][0] if section == "shards" else data[section])
        if name in target:
            name += "_x"
        target[name] = draw(JSON_VALUES)
        return data, ""
    raw = json.dumps(data).encode()
    return raw[: draw(st.integers(0, len(raw) - 1))], "manifest"


def _assert_refused(value: Any, field_prefix: str) -> None:
    with pytest.raises(BundleError) as raised:
        parse_manifest(value)
    assert raised.value.field, "the error must name a field"
    assert raised.value.field.startswith(field_prefix), (raised.value.field, field_prefix)


FUZZ = settings(max_examples=6000, deadline=5000, suppress_health_check=list(HealthCheck), database=None)


@FUZZ
@given(malformed_manifests())
def test_fuzz_malformed_manifests_are_refused(case: tuple[bytes | dict[str, Any], str]) -> None:
    value, field_prefix = case
    _assert_refused(copy.deepcopy(value), field_prefix)


@settings(max_examples=1500, deadline=5000, suppress_health_check=list(HealthCheck), database=None)
@given(st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_fuzz_arbitrary_bytes_are_refused_as_manifests(raw: bytes) -> None:
    _assert_refused(raw, "")


@st.composite
def malformed_shards(draw: st.DrawFn) -> bytes:
    mutation = draw(st.sampled_from(["truncate", "append", "flip_header", "count", "length", "random"]))
    if mutation == "truncate":
        return SHARD[: draw(st.integers(0, len(SHARD) - 1))]
    if mutation == "append":
        return SHARD + draw(st.binary(min_size=1, max_size=50))
    if mutation == "flip_header":
        position = draw(st.integers(0, 15))
        return SHARD[:position] + bytes([SHARD[position] ^ draw(st.integers(1, 255))]) + SHARD[position + 1 :]
    if mutation == "count":
        count = draw(st.integers(0, 2**32 - 1).filter(lambda c: c != len(SAMPLES)))
        return SHARD[:12] + struct.pack("<I", count) + SHARD[16:]
    if mutation == "length":
        which = draw(st.integers(0, len(SAMPLES) - 1))
        original = len(SAMPLES[which])
        length = draw(st.integers(0, 2**64 - 1).filter(lambda n: n != original))
        offset = 16 + 8 * which
        return SHARD[:offset] + struct.pack("<Q", length) + SHARD[offset + 8 :]
    data = draw(st.binary(max_size=200))
    return data if data != SHARD else data[:-1]


@settings(max_examples=4000, deadline=5000, suppress_health_check=list(HealthCheck), database=None)
@given(malformed_shards())
def test_fuzz_malformed_shards_are_refused(data: bytes) -> None:
    with pytest.raises(BundleError) as raised:
        parse_shard(data, expected_samples=len(SAMPLES), field="shards[0]")
    assert raised.value.field.startswith("shards[0]")


def _not_all_valid(request: dict[str, Any]) -> bool:
    return not (
        request["manifest_uri"].startswith("s3://bucket-1/")
        and 0 <= request["shard_index"] <= 3
        and request["result_uri"].startswith("s3://bucket-1/")
    )


@settings(max_examples=500, deadline=5000, suppress_health_check=list(HealthCheck), database=None)
@given(
    st.fixed_dictionaries(
        {
            "fhe_request": st.just("fhe-shard"),
            "format_version": st.just(1),
            "manifest_uri": st.just("s3://bucket-1/inbox/b-1/manifest.json") | BAD_STRINGS,
            "shard_index": st.integers(0, 3) | ABSURD_INTS,
            "result_uri": st.just("s3://bucket-1/outbox/b-1/shards/00000.out") | CLIMBING_KEYS.map("s3://b-1/".__add__),
        }
    ).filter(_not_all_valid)
)
def test_fuzz_malformed_shard_requests_are_refused(request: dict[str, Any]) -> None:
    with pytest.raises(BundleError) as raised:
        parse_shard_request(json.dumps(request))
    assert raised.value.field in ("manifest_uri", "shard_index", "result_uri")


def test_shard_results_are_read_at_their_fixed_keys_for_the_requests_shards_only(s3: Any) -> None:
    """Assemble's read: every record of the request's shards, a page of keys at a time; a record an earlier drop
    of the same bundle id left for a shard this request does not have is not read."""
    from common.bundle.messages import ShardResult
    from common.bundle.store import BundleLayout, read_shard_results, write_shard_plan, write_shard_result

    layout = BundleLayout(UNIT_BUCKET, UNIT_OWNER)
    for index in range(1003):  # more than one listing page
        uri = f"s3://{UNIT_BUCKET}/outbox/{UNIT_OWNER}/b-001/shards/{index:05d}.out"
        write_shard_result(s3, layout, ShardResult("b-001", index, uri, 1, "0" * 64, 10))
    results = read_shard_results(s3, layout, "b-001", range(1001))
    assert sorted(r.shard_index for r in results) == list(range(1001))
    plan = write_shard_plan(s3, layout, "b-001", [0, 1, 2])
    assert plan.key == f"requests/{UNIT_OWNER}/b-001/plan.json"
    body = s3.get_object(Bucket=plan.bucket, Key=plan.key)["Body"].read()
    assert json.loads(body) == [{"shard_index": 0}, {"shard_index": 1}, {"shard_index": 2}]
