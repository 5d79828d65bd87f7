"""The batch owner's client: reading inputs, submitting (manifest last), waiting, predictions, the CLI's parsing
and printing, and the library (``BatchClient``) from keys to predictions with real Concrete on moto."""

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
from common.bundle.store import BundleLayout, write_quarantine_reason
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


def test_ids_and_labels_stay_on_the_client_and_come_back_next_to_the_predictions(tmp_path: Path) -> None:
    """An input with an id column, the owner's labels and a column the model does not use: only the features are
    read as numbers (the ids may be text), the rest is named; predictions.csv starts with the ids; the owner's
    labels are scored after decryption; what is kept is the owner's only (0600)."""
    from client.encrypt import read_input
    from client.kept import KeptColumns, accuracy, keep, kept_for

    path = tmp_path / "scoring.csv"
    path.write_text("id,texture,note,area,radius,diagnosis\nP-1,2,x,3,1,M\nP-2,5,y,6,4,B\n")
    rows = read_input(path, FEATURES, ["id"], "diagnosis")
    assert rows.x.tolist() == [[1, 2, 3], [4, 5, 6]] and rows.ids == {"id": ["P-1", "P-2"]}
    assert rows.labels == ["M", "B"] and rows.ignored == ["note"]
    with pytest.raises(InputError, match="no column 'patient'"):
        read_input(path, FEATURES, ["patient"])
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1]])
    out = tmp_path / "predictions.csv"
    write_predictions(out, ["B", "M"], probabilities, rows.ids)
    assert out.read_text().splitlines() == [
        "id,row,predicted_class,probability_B,probability_M",
        "P-1,0,M,0.200000,0.800000",
        "P-2,1,B,0.900000,0.100000",
    ]
    with pytest.raises(FheClientError, match="1 values for 2 predictions"):
        write_predictions(out, ["B", "M"], probabilities, {"id": ["P-1"]})
    assert accuracy(["B", "M"], probabilities, ["M", "M"]) == {"accuracy": 0.5, "correct": 1, "rows": 2}
    assert accuracy(["0", "1"], probabilities, ["1.0", "0"])["correct"] == 2  # 1.0 names class 1
    kept = keep(tmp_path / "home", "bundle-9", KeptColumns(rows.ids, "diagnosis", rows.labels))
    assert kept is not None and kept.stat().st_mode & 0o777 == 0o600
    assert kept_for(tmp_path / "home", "bundle-9") == KeptColumns(rows.ids, "diagnosis", rows.labels)
    assert kept_for(tmp_path / "home", "elsewhere") == KeptColumns()
    assert keep(tmp_path / "home", "bundle-10", KeptColumns()) is None


def test_an_estimate_is_made_of_measured_costs_the_endpoints_limits_and_a_dated_price(tmp_path: Path) -> None:
    from common.estimate import EstimateError, EstimateTable, ModelCosts, Serving, estimate

    table = EstimateTable.load()  # the shipped table
    assert table.as_of and table.hourly("ml.c7i.4xlarge") > 0
    costs = ModelCosts.from_metrics(
        {
            "fhe_seconds_per_sample_served": {"value": 4.0},
            "input_ciphertext_bytes_per_sample": 1000.0,
            "evaluation_key_bytes": 5000,
        }
    )
    warm = Serving("e-v1", "ml.c7i.4xlarge", max_instances=2, invocations_per_instance=2, scale_in_cooldown=600,
                   instances_now=1)  # fmt: skip
    made = estimate(20, 5, costs, warm, table)
    # 80 s of work is shorter than starting a second instance: 4 shards in 2 rounds on the one instance up.
    assert (made.shards, made.waves, made.instances, made.fhe_seconds) == (4, 2, 1, 80.0)
    assert made.seconds == table.seconds_per_bundle + 2 * table.seconds_per_wave + 80.0 and not made.instance_start
    billed = 80.0 + 2 * table.seconds_per_wave + 600
    assert made.cost == round(billed / 3600 * table.hourly("ml.c7i.4xlarge"), 6)
    assert made.upload_bytes == 20_000
    cold = estimate(
        20, 5, costs, Serving("e-v1", "ml.c7i.4xlarge", 2, 2, 600, instances_now=0), table, key_uploaded=False
    )
    assert cold.instance_start and cold.seconds == made.seconds + table.instance_start_seconds
    assert cold.cost == round((billed + table.instance_start_seconds) / 3600 * table.hourly("ml.c7i.4xlarge"), 6)
    assert cold.upload_bytes == 25_000
    # 800 s of work outlasts a start: a second instance joins once started and the 4 shards go in one round.
    long = estimate(200, 50, costs, warm, table)
    start = table.instance_start_seconds
    assert (long.shards, long.waves, long.instances) == (4, 1, 2)
    assert long.fhe_seconds == round((800 + start) / 2, 3) and start < long.fhe_seconds < 800
    # 9 shards on the one instance up, 2 at a time: five rounds; an instance that takes one at a time: nine.
    assert estimate(45, 5, costs, warm, table).waves == 5
    single = estimate(45, 5, costs, Serving("e-v1", "ml.c7i.4xlarge", 1, 1, 0, 1), table)
    assert (single.waves, single.instances, single.fhe_seconds) == (9, 1, 180.0)
    assert single.seconds == table.seconds_per_bundle + 9 * table.seconds_per_wave + 180.0
    line = made.line()
    assert "20 samples in 4 shards" in line and f"prices of {table.as_of}" in line and "USD" in line
    with pytest.raises(EstimateError, match=r"no price for ml\.x1\.huge"):
        estimate(20, 5, costs, Serving("e-v1", "ml.x1.huge", 1, 1, 0, 1), table)
    with pytest.raises(EstimateError, match="evaluated by an older pipeline"):
        ModelCosts.from_metrics({"fhe_seconds_per_sample_served": 1.0})
    broken = tmp_path / "table.json"
    broken.write_text("{}")
    with pytest.raises(EstimateError, match="not usable"):
        EstimateTable.load(broken)


def test_an_enclave_bundles_estimate_is_made_of_the_models_pace_the_fleets_limits_and_ec2_prices(
    tmp_path: Path,
) -> None:
    import json

    from common.estimate import EstimateError, EstimateTable, FleetSizing, ModelCosts, estimate_enclave

    table = EstimateTable.load()  # the shipped table, with its enclave section and EC2 prices
    assert table.enclave is not None
    costs = ModelCosts.from_enclave_metrics({"enclave_seconds_per_sample": 0.01, "input_bytes_per_sample": 240.0})
    fleet = FleetSizing.parse(
        '{"instance_type": "m5.xlarge", "max_instances": 4, "shards_per_instance": 2, "wake_after_seconds": 120}'
    )
    made = estimate_enclave(100, 25, costs, fleet, table)
    # 1 s of work on the one instance woken from zero (no more: the work is shorter than a start), 4 shards two at
    # a time: two rounds.
    start = 120 + table.enclave["instance_start_seconds"]
    assert (made.path, made.shards, made.waves, made.instances, made.instance_start) == ("enclave", 4, 2, 1, True)
    assert made.seconds == round(table.seconds_per_bundle + 2 * table.enclave["seconds_per_wave"] + start + 1.0, 1)
    billed = 1.0 + 2 * table.enclave["seconds_per_wave"] + table.enclave["scale_in_seconds"] + start
    assert made.cost == round(billed / 3600 * table.hourly("m5.xlarge"), 6) and made.upload_bytes == 24_000
    assert "of inference in the enclave on 1 m5.xlarge" in made.line()
    for text in ("", "{}", '{"instance_type": "m5.xlarge", "max_instances": 0, "shards_per_instance": 1, '
                 '"wake_after_seconds": 1}'):  # fmt: skip
        with pytest.raises(EstimateError, match="enclave fleet's sizing"):
            FleetSizing.parse(text)
    with pytest.raises(EstimateError, match="seconds and bytes per sample"):
        ModelCosts.from_enclave_metrics({"fhe_seconds_per_sample_served": 1.0})
    older = tmp_path / "table.json"
    data = json.loads(Path(table.path).read_text())
    del data["enclave"]
    older.write_text(json.dumps(data))
    with pytest.raises(EstimateError, match="has no enclave section"):
        estimate_enclave(100, 25, costs, fleet, EstimateTable.load(older))


def test_the_cli_parses_calls_the_library_and_prints_its_answer(
    s3: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fhe-client wait``: settings from the environment, the answer as JSON on stdout; a quarantined bundle is the
    owner's to act on: its reason on stderr, exit status 2."""
    from client.cli import main

    monkeypatch.setenv("FHE_OWNER", UNIT_OWNER)
    monkeypatch.setenv("FHE_BUCKET", BUCKET)
    s3.put_object(Bucket=BUCKET, Key=f"outbox/{UNIT_OWNER}/bundle-6/manifest.json", Body=b"{}")
    main(["wait", "bundle-6", "--timeout", "5", "--quiet"])
    assert json.loads(capsys.readouterr().out) == {
        "result": f"s3://{BUCKET}/outbox/{UNIT_OWNER}/bundle-6/manifest.json"
    }
    write_quarantine_reason(s3, LAYOUT, "bundle-7", {"stage": "validate", "message": "shards[0]: checksum"})
    with pytest.raises(SystemExit) as exited:
        main(["wait", "bundle-7", "--timeout", "5", "--quiet"])
    printed = capsys.readouterr()
    assert exited.value.code == 2 and not printed.out
    assert printed.err.strip() == "fhe-client wait: bundle bundle-7 was quarantined: shards[0]: checksum"


def test_settings_come_from_the_environment_or_a_deployments_outputs(tmp_path: Path) -> None:
    from client.batch_client import BatchClient, ClientSettings

    settings = ClientSettings.from_environment({"FHE_OWNER": "clinic-b", "FHE_BUCKET": "b", "FHE_ENDPOINT_NAME": "e"})
    assert (settings.owner, settings.bucket, settings.endpoint, settings.home) == ("clinic-b", "b", "e", None)
    outputs = {"BundleBucketName": "bundles", "ModelPackageGroup": "g", "EndpointName": "fhe-x"}
    made = ClientSettings.for_deployment(outputs, UNIT_OWNER, home=tmp_path)
    assert made == ClientSettings(UNIT_OWNER, "bundles", "g", "fhe-x", tmp_path)
    assert BatchClient(made).layout == LAYOUT.__class__("bundles", UNIT_OWNER)
    with pytest.raises(FheClientError, match="lack EndpointName"):
        ClientSettings.for_deployment({"BundleBucketName": "b", "ModelPackageGroup": "g"}, UNIT_OWNER)
    with pytest.raises(FheClientError, match="name the batch owner"):
        _ = BatchClient(ClientSettings()).layout
    with pytest.raises(FheClientError, match="run `fhe-client keys` first"):
        BatchClient(made).model()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real compiled model (logistic regression on breast cancer), as the training step leaves it."""
    from containers.training.data import builtin_dataset_csv
    from containers.training.preprocess import preprocess
    from containers.training.train import train
    from containers.training.training_settings import TrainingSettings

    root = tmp_path_factory.mktemp("model")
    source = builtin_dataset_csv("breast_cancer", root / "in" / "bc.csv")
    preprocess(source.parent, root / "splits", "label", 0.25, 3)
    train(TrainingSettings(model_type="logistic_regression"), root / "splits/train", root / "splits/preprocessing",
          root / "m")  # fmt: skip
    return root / "m"


def test_the_client_library_runs_a_bundle_from_keys_to_predictions(
    s3: Any, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On moto: an Approved package with its published client artifacts; the library lists versions, makes keys
    (real Concrete) and uploads the evaluation key once, encrypts a CSV with ids and labels, submits it; the
    product's serving app answers each shard and the result manifest is assembled as the workflow does; the
    library waits, decrypts to the clear model's classes, keyed by the ids, scored against the labels."""
    from concrete.ml.common.serialization.loaders import loads
    from sklearn.datasets import load_breast_cancer

    from client.batch_client import BatchClient, ClientSettings
    from common import artifacts, aws
    from common.bundle.messages import parse_shard_result
    from common.bundle.store import read_manifest, result_manifest, write_result_manifest
    from common.preprocessing import PreprocessingRecord
    from containers.inference.app import create_app
    from containers.inference.engine import InferenceEngine
    from containers.inference.handlers import Handlers

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    sagemaker = aws.client("sagemaker")
    s3.create_bucket(Bucket="models")
    sagemaker.create_model_package_group(ModelPackageGroupName="g")
    recorded = {artifacts.CLIENT_ARTIFACTS_PROPERTY: "s3://models/pipelines/p/exec-1/client"}
    package_arn = sagemaker.create_model_package(
        ModelPackageGroupName="g",
        InferenceSpecification={
            "Containers": [{"Image": "fhe-inference:latest", "ModelDataUrl": "s3://models/model.tar.gz"}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        CustomerMetadataProperties=recorded,
    )["ModelPackageArn"]
    notes: list[str] = []
    client = BatchClient(ClientSettings(UNIT_OWNER, BUCKET, "g", "fhe-e", tmp_path / "home"), notes=notes.append)
    assert client.versions().approved_not_served == ()  # pending: nothing to fetch yet
    # Given again: moto's update drops the properties it is not given (SageMaker keeps them).
    sagemaker.update_model_package(
        ModelPackageArn=package_arn, ModelApprovalStatus="Approved", CustomerMetadataProperties=recorded
    )
    for name in artifacts.CLIENT_ARTIFACTS:  # what the approval publishes (pipelines/approval.py)
        s3.upload_file(str(trained / name), "models", f"published/g/1/{name}")

    keys = client.keys()
    assert keys.model_package == package_arn and keys.uploaded and keys.newer_version_served is None
    assert keys.evaluation_key is not None and keys.model.kind == "fhe"
    assert keys.evaluation_key.uri == str(LAYOUT.evaluation_key(keys.evaluation_key.sha256))
    uploaded = s3.head_object(Bucket=BUCKET, Key=LAYOUT.evaluation_key(keys.evaluation_key.sha256).key)
    assert uploaded["ContentLength"] == keys.evaluation_key.size
    assert client.keys().uploaded is False  # the same key set, already there
    listed = client.versions()
    assert (listed.served, listed.approved_not_served, listed.local_keys) == ((), (1,), (1,))

    record = PreprocessingRecord.load(trained / artifacts.PREPROCESSING_JSON)
    data = load_breast_cancer()
    x, labels = data.data[:5], data.target[:5]
    source = tmp_path / "scoring.csv"
    source.write_text(
        "\n".join(
            [",".join(["patient", "diagnosis", "ward", *record.feature_names])]
            + [
                ",".join([f"P-{i}", str(label), "east", *map(repr, row.tolist())])
                for i, (row, label) in enumerate(zip(x, labels, strict=True))
            ]
        )
        + "\n"
    )
    encrypted = client.encrypt(
        source, tmp_path / "bundle", shard_size=2, id_columns=["patient"], label_column="diagnosis"
    )
    assert (encrypted.manifest.total_samples, len(encrypted.manifest.shards)) == (5, 3)
    assert (encrypted.id_columns, encrypted.ignored_columns, encrypted.estimate) == (("patient",), ("ward",), None)
    assert any(note.startswith("no estimate: the limits of endpoint fhe-e-v1") for note in notes), notes
    submitted = client.submit(encrypted.folder)
    assert submitted.manifest == LAYOUT.request_manifest(encrypted.bundle_id)
    with pytest.raises(FheClientError, match="already submitted"):
        client.submit(encrypted.folder)

    # The service's side: the serving app answers each shard request, Assemble writes the result manifest.
    engine = InferenceEngine(trained, evaluators=1, threads=1)
    try:
        app = create_app(Handlers(engine, aws.client("s3"), package_arn)).test_client()
        results = []
        for entry in encrypted.manifest.shards:
            shard = LAYOUT.shard_request(encrypted.bundle_id, entry.index).to_json()
            response = app.post("/invocations", data=shard, content_type="application/json")
            assert response.status_code == 200, response.get_data()
            results.append(parse_shard_result(response.get_data()))
    finally:
        engine.close()
    request, request_sha256 = read_manifest(s3, submitted.manifest)
    prefix = LAYOUT.result_prefix(encrypted.bundle_id)
    write_result_manifest(s3, LAYOUT, result_manifest(request, request_sha256, prefix, results))

    assert client.wait(encrypted.bundle_id, timeout=5).result == LAYOUT.result_manifest(encrypted.bundle_id)
    decrypted = client.decrypt(encrypted.bundle_id, tmp_path / "predictions.csv")
    clear = loads((trained / artifacts.MODEL_JSON).read_text()).predict(record.transform(x), fhe="disable")
    assert decrypted.predicted_classes == [decrypted.classes[int(c)] for c in clear]
    lines = decrypted.predictions.read_text().splitlines()
    assert lines[0].startswith("patient,row,predicted_class,") and [line.split(",")[0] for line in lines[1:]] == [
        f"P-{i}" for i in range(5)
    ]
    assert decrypted.accuracy is not None and decrypted.accuracy.rows == 5
    assert decrypted.accuracy.correct == sum(
        p == str(label) for p, label in zip(decrypted.predicted_classes, labels, strict=True)
    )
