"""Objects are read by one bounded GET: the bytes whose size and hash are checked are the object's that is used."""

from __future__ import annotations

from typing import Any

import pytest

from common.bundle.schema import BundleError
from common.bundle.store import get_bytes
from common.s3uri import S3Uri
from tests.unit.conftest import UNIT_BUCKET


def test_an_object_is_read_by_one_get_and_refused_beyond_its_limit_before_reading(s3: Any) -> None:
    uri = S3Uri(UNIT_BUCKET, "inbox/clinic-a/keys/object")
    s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=b"k" * 100)
    calls: list[str] = []
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    assert get_bytes(s3, uri, field="evaluation_key", limit=100) == b"k" * 100
    with pytest.raises(BundleError) as refused:
        get_bytes(s3, uri, field="evaluation_key", limit=99)
    assert (refused.value.field, refused.value.code) == ("evaluation_key", "too_large")
    assert "more than 99" in refused.value.problem
    assert calls == ["GetObject", "GetObject"]  # no HEAD: nothing to replace between a check and the read


def test_a_missing_object_is_named(s3: Any) -> None:
    with pytest.raises(BundleError) as refused:
        get_bytes(s3, S3Uri(UNIT_BUCKET, "inbox/clinic-a/nothing"), field="manifest", limit=10)
    assert (refused.value.field, refused.value.code) == ("manifest", "missing_object")
