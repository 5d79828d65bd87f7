"""The client's parts that need no FHE: reading inputs, submitting (manifest last), waiting, predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.decrypt import write_predictions
from client.errors import BundleQuarantined, FheClientError, InputError, WaitTimeout
from client.transfer import submit, wait
from common.bundle.manifest import KeyRef, Manifest, ShardEntry, package_ref, shard_key
from common.bundle.schema import sha256_hex, utc_now
from common.bundle.shards import encode_shard
from common.bundle_store import BundleLayout, write_quarantine_reason
from tests.unit.conftest import UNIT_BUCKET, UNIT_OWNER

FEATURES = ["radius", "texture", "area"]
BUCKET = UNIT_BUCKET
LAYOUT = BundleLayout(BUCKET, UNIT_OWNER)


def test_csv_columns_are_found_by_name_and_others_ignored(tmp_path: Path) -> None:
    from client.encrypt import read_rows

    path = tmp_path / "in.csv"
    path.write_text("id,area,texture,radius,label\n7,3.5,2,1,yes\n8,6,5,4,no\n")
    assert read_rows(path, FEATURES).tolist() == [[1, 2, 3.5], [4, 5, 6]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("radius,texture\n1,2\n", "lacks the feature column"),
        ("radius,texture,area\n1,x,3\n", "'texture' is not a number at data row 1"),
        ("radius,texture,area\n1,,3\n", "'texture' is not a number"),
        ("radius,texture,area\n", "has no rows"),
        ("", "is empty"),
    ],
)
def test_bad_csv_input_is_named(tmp_path: Path, content: str, message: str) -> None:
    from client.encrypt import read_rows

    path = tmp_path / "in.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_rows(path, FEATURES)


def test_npy_input_needs_the_schema_width(tmp_path: Path) -> None:
    from client.encrypt import read_rows

    np.save(tmp_path / "ok.npy", np.ones((4, 3)))
    assert read_rows(tmp_path / "ok.npy", FEATURES).shape == (4, 3)
    np.save(tmp_path / "bad.npy", np.ones((4, 2)))
    with pytest.raises(InputError, match="3 columns"):
        read_rows(tmp_path / "bad.npy", FEATURES)
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan, 2.0]]))
    with pytest.raises(InputError, match="missing or infinite"):
        read_rows(tmp_path / "nan.npy", FEATURES)


def test_predictions_keep_input_order(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    write_predictions(out, ["benign", "malignant"], np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert out.read_text().splitlines() == [
        "row,predicted_class,probability_benign,probability_malignant",
        "0,benign,0.900000,0.100000",
        "1,malignant,0.200000,0.800000",
    ]
    with pytest.raises(FheClientError, match="3 classes"):
        write_predictions(out, ["a", "b", "c"], np.array([[0.9, 0.1]]))


def local_bundle(folder: Path, bundle_id: str, key_uri: str) -> Manifest:
    shards = []
    for index in range(3):
        data = encode_shard([b"c%d" % index, b"d%d" % index])
        (folder / shard_key(index)).parent.mkdir(parents=True, exist_ok=True)
        (folder / shard_key(index)).write_bytes(data)
        shards.append(ShardEntry(index, shard_key(index), 2, sha256_hex(data), len(data)))
    manifest = Manifest(
        "request",
        bundle_id,
        utc_now(),
        package_ref("arn:aws:sagemaker:us-east-1:000000000000:model-package/fhe-models/1"),
        {"python": "3.11.7", "concrete_python": "2.10.0", "concrete_ml": "1.9.0"},
        KeyRef("a" * 64, key_uri, 4),
        tuple(shards),
    )
    (folder / "manifest.json").write_bytes(manifest.to_json())
    return manifest


def test_submit_writes_the_manifest_last_and_only_once(s3: Any, tmp_path: Path) -> None:
    key_uri = str(LAYOUT.evaluation_key("a" * 64))
    manifest = local_bundle(tmp_path, "bundle-1", key_uri)
    with pytest.raises(FheClientError, match="evaluation key"):
        submit(s3, LAYOUT, tmp_path, progress=False)
    s3.put_object(Bucket=BUCKET, Key=LAYOUT.evaluation_key("a" * 64).key, Body=b"ekey")
    order: list[str] = []
    s3.meta.events.register("provide-client-params.s3.PutObject", lambda params, **_: order.append(params["Key"]))
    uri = submit(s3, LAYOUT, tmp_path, progress=False)
    assert str(uri) == f"s3://{BUCKET}/inbox/{UNIT_OWNER}/bundle-1/manifest.json"
    prefix = f"inbox/{UNIT_OWNER}/bundle-1"
    assert order == [f"{prefix}/{s.key}" for s in manifest.shards] + [f"{prefix}/manifest.json"]
    with pytest.raises(FheClientError, match="already submitted"):
        submit(s3, LAYOUT, tmp_path, progress=False)


def test_submit_refuses_a_shard_changed_after_encryption(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key=LAYOUT.evaluation_key("a" * 64).key, Body=b"ekey")
    manifest = local_bundle(tmp_path, "bundle-2", str(LAYOUT.evaluation_key("a" * 64)))
    (tmp_path / manifest.shards[1].key).write_bytes(b"tampered")
    with pytest.raises(Exception, match=r"shards\[1\]"):
        submit(s3, LAYOUT, tmp_path, progress=False)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"inbox/{UNIT_OWNER}/bundle-2/").get("Contents", [])
    assert f"inbox/{UNIT_OWNER}/bundle-2/manifest.json" not in {o["Key"] for o in listed}


def test_wait_times_out_or_reports_the_quarantine_reason(s3: Any) -> None:
    layout = LAYOUT
    with pytest.raises(WaitTimeout, match="bundle-3"):
        wait(s3, layout, "bundle-3", timeout=0.5, progress=False)
    write_quarantine_reason(s3, layout, "bundle-3", {"stage": "validate", "message": "shards[0]: checksum"})
    with pytest.raises(BundleQuarantined, match="checksum") as raised:
        wait(s3, layout, "bundle-3", timeout=5, progress=False)
    assert raised.value.reason["stage"] == "validate"
    s3.put_object(Bucket=BUCKET, Key=f"outbox/{UNIT_OWNER}/bundle-4/manifest.json", Body=json.dumps({}).encode())
    answer = wait(s3, layout, "bundle-4", timeout=5, progress=False)
    assert str(answer).endswith(f"outbox/{UNIT_OWNER}/bundle-4/manifest.json")


def test_a_bundle_goes_only_to_its_owners_inbox_with_its_owners_key(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Encrypted with another owner's evaluation key (keys made under another --owner): refused before any upload,
    naming what to run; a client with no owner named says how to name one."""
    other = BundleLayout(BUCKET, "clinic-b")
    s3.put_object(Bucket=BUCKET, Key=other.evaluation_key("a" * 64).key, Body=b"ekey")
    local_bundle(tmp_path, "bundle-5", str(other.evaluation_key("a" * 64)))
    with pytest.raises(FheClientError, match=f"not owner {UNIT_OWNER}'s.*fhe-client keys --owner {UNIT_OWNER}"):
        submit(s3, LAYOUT, tmp_path, progress=False)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"inbox/{UNIT_OWNER}/bundle-5/")
    from client.cli import main

    for owner, problem in (("", "name the batch owner"), ("Clinic A", "lowercase")):
        with pytest.raises(SystemExit):
            main(["wait", "bundle-5", "--owner", owner, "--bucket", BUCKET, "--timeout", "1"])
        assert problem in capsys.readouterr().err
