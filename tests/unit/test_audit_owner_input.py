"""The audit report renders whatever a batch owner wrote: its estimate.json and its manifests are read with a limit
and shown only as the types the report expects, so no content (text where a number belongs, a missing field, a
huge number or text, deep nesting, not JSON at all) can break the report or its JSON. Fuzzed with hypothesis
against moto's S3."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from audit import report as audit_report
from audit.collect import ESTIMATE_FIELDS, MAX_ESTIMATE_BYTES, estimate_shown, read_manifest_if_any
from common.bundle.store import BundleLayout
from tests.unit.conftest import UNIT_BUCKET, UNIT_OWNER

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
LAYOUT = BundleLayout(UNIT_BUCKET, UNIT_OWNER)
ESTIMATE = LAYOUT.estimate("b-1")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any JSON value, with the awkward ones weighted in: huge and non-finite numbers, long text, nesting.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(min_size=200, max_size=1500),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=12,
)
# A value of the wrong type for any estimate field (or absent: the key is then left out).
wrong_values = st.one_of(
    st.text(max_size=1500),
    st.integers(min_value=10**20, max_value=10**400),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300, True, None]),
    st.lists(json_values, max_size=3),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)
estimates = st.dictionaries(st.sampled_from([*ESTIMATE_FIELDS, "extra"]), json_values, max_size=9)
all_wrong = st.fixed_dictionaries({}, optional=dict.fromkeys(ESTIMATE_FIELDS, wrong_values))
raw_bodies = st.one_of(
    st.binary(max_size=2000),
    st.just(b"[" * 20_000),  # nested past any parser's recursion limit
    st.just(b'{"seconds": ' + b"[" * 5_000 + b"1" + b"]" * 5_000 + b"}"),
    st.just(b'{"seconds": 1, "cost": ' + b"9" * 5000 + b"}"),  # an integer too large for any float
    st.just(b" " * (MAX_ESTIMATE_BYTES + 1)),
)


def _document(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _report(estimate: dict[str, Any] | None) -> dict[str, Any]:
    """The smallest report with one delivered bundle carrying ``estimate``, as build() shapes it."""
    bundle = {
        "bundle": f"{UNIT_OWNER}/b-1",
        "owner": UNIT_OWNER,
        "bundle_id": "b-1",
        "status": "SUCCEEDED",
        "outcome": "delivered",
        "started": T0.isoformat(),
        "ended": (T0 + timedelta(seconds=30)).isoformat(),
        "seconds": 30.0,
        "submitted_by": "arn:aws:sts::000000000000:assumed-role/fhe-owner-clinic-a/s",
        "submitted_from": "127.0.0.1",
        "model_package_version": 3,
        "endpoint": "fhe-inference-v3",
        "shards": 2,
        "samples": 4,
        "stages": {"Validate": {"seconds": 1.0}},
        "estimate": estimate,
        "input_objects": [],
        "output_objects": [],
    }
    audit_log = {"records": 0, "head_seq": 0, "head_digest": None, "integrity": "hash chain"}
    return {
        "report": {
            "generated_at": (T0 + timedelta(minutes=5)).isoformat(),
            "window": {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()},
            "pipeline": "fhe-training",
            "state_machine": "arn:aws:states:us-east-1:000000000000:stateMachine:fhe-batch-inference",
            "bundle_bucket": UNIT_BUCKET,
            "audit_log": audit_log,
        },
        "ok": True,
        "checks": [],
        "pipeline_executions": [],
        "model_packages": [],
        "approvals": [],
        "endpoints": [],
        "refused_events": [],
        "bundles": [bundle],
        "inbox": [],
    }


def _shown_and_rendered(s3: Any, body: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], str]:
    s3.put_object(Bucket=ESTIMATE.bucket, Key=ESTIMATE.key, Body=body)
    shown = estimate_shown(s3, ESTIMATE)
    assert shown is not None
    # The timeline chart shows no estimate: drawn once for real below, left out of the many fuzzed renders.
    monkeypatch.setattr(audit_report, "timeline_svg", lambda report: "<svg></svg>")
    report = _report(shown)
    json.dumps(report, allow_nan=False)  # the report's JSON stays JSON (no NaN or Infinity)
    html = audit_report.render_html(report)
    assert "<code>b-1</code>" in html
    return shown, html


def _check_shown(shown: dict[str, Any]) -> None:
    """What the report shows of an estimate: unusable, or each known field as a finite number or short text."""
    if "unusable" in shown:
        assert shown == {"unusable": str(ESTIMATE)}
        return
    assert set(shown) == set(ESTIMATE_FIELDS)
    assert isinstance(shown["seconds"], int | float)
    for name, value in shown.items():
        assert (
            value is None
            or (isinstance(value, int | float) and not isinstance(value, bool))
            or (isinstance(value, str) and len(value) <= 64)
        ), (name, value)
        if isinstance(value, float):
            assert abs(value) < float("inf")


@FUZZ
@given(estimate=estimates)
@example(estimate={"seconds": 12.5, "cost": "0.01"})  # the issue's case: a cost written as text
@example(estimate={"seconds": 12.5})  # its cost missing
@example(estimate={"seconds": 12.5, "cost": 10**400, "currency": ["USD"], "prices_as_of": {"a": {"b": 1}}})
def test_any_estimate_document_renders(s3: Any, monkeypatch: pytest.MonkeyPatch, estimate: dict[str, Any]) -> None:
    document = _document(estimate)
    shown, _ = _shown_and_rendered(s3, document, monkeypatch)
    _check_shown(shown)
    seconds = estimate.get("seconds")
    usable = isinstance(seconds, int | float) and not isinstance(seconds, bool) and abs(seconds) <= 1e15
    if usable and len(document) <= MAX_ESTIMATE_BYTES:
        assert shown.get("seconds") == seconds, "a usable estimate is shown as written"
    else:
        assert "unusable" in shown, "no seconds to show, or more than an estimate may be"


@FUZZ
@given(estimate=all_wrong, seconds=st.floats(min_value=0, max_value=1e6))
def test_an_estimate_with_every_other_field_wrong_renders_its_seconds(
    s3: Any, monkeypatch: pytest.MonkeyPatch, estimate: dict[str, Any], seconds: float
) -> None:
    document = _document({**estimate, "seconds": seconds})
    shown, html = _shown_and_rendered(s3, document, monkeypatch)
    _check_shown(shown)
    if len(document) > MAX_ESTIMATE_BYTES:
        assert shown == {"unusable": str(ESTIMATE)}
        return
    assert shown["seconds"] == seconds and shown["cost"] is None
    assert "unusable" not in html.split('id="bundles-table"')[1]


@FUZZ
@given(estimate=all_wrong)
def test_an_estimate_with_every_field_wrong_is_shown_as_unusable(
    s3: Any, monkeypatch: pytest.MonkeyPatch, estimate: dict[str, Any]
) -> None:
    shown, html = _shown_and_rendered(s3, _document(estimate), monkeypatch)
    assert shown == {"unusable": str(ESTIMATE)}
    assert ">unusable</td>" in html


@FUZZ
@given(body=raw_bodies)
def test_any_estimate_bytes_render(s3: Any, monkeypatch: pytest.MonkeyPatch, body: bytes) -> None:
    shown, _ = _shown_and_rendered(s3, body, monkeypatch)
    _check_shown(shown)


def test_the_issues_estimate_renders_with_its_timeline(s3: Any) -> None:
    """The case the issue names, rendered whole (chart included): a cost written as text, then none at all."""
    for estimate in ({"seconds": 12.5, "cost": "0.01", "currency": "USD"}, {"seconds": 12.5, "currency": "USD"}):
        s3.put_object(Bucket=ESTIMATE.bucket, Key=ESTIMATE.key, Body=_document(estimate))
        shown = estimate_shown(s3, ESTIMATE)
        assert shown is not None and shown["cost"] is None and shown["seconds"] == 12.5
        html = audit_report.render_html(_report(shown))
        assert "<svg" in html and "<code>b-1</code>" in html


@FUZZ
@given(document=json_values, body=raw_bodies)
def test_any_request_manifest_is_read_as_a_manifest_or_none(s3: Any, document: Any, body: bytes) -> None:
    uri = LAYOUT.request_manifest("b-1")
    for data in (_document(document), body, _document({"format": "fhe-bundle", "shards": document})):
        s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=data)
        assert read_manifest_if_any(s3, uri) is None
