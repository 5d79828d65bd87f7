"""The parent's side of the fleet on moto: the model of each shard's package loaded into the enclave from the
registry only when it changes, and refused by name unless registry, file and enclave agree; the parent's loop."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from typing import Any

import pytest
import xgboost
from sklearn.datasets import load_breast_cancer

from common import artifacts, aws
from common.enclave_model import XGBOOST_JSON, EnclaveModelRecord
from containers.enclave import fleet
from containers.enclave.application import ShardRefused
from containers.enclave.models import load_model
from containers.enclave.worker import ServedModel, poll
from tests.unit.conftest import UNIT_BUCKET


class Enclave:
    """The enclave's side of ``load_model`` as its server answers it: the digest of the model it loaded."""

    def __init__(self) -> None:
        self.loads = 0

    def load_model(self, model_format: str, content: bytes) -> str:
        self.loads += 1
        return load_model(model_format, content).digest


def _model(trees: int) -> bytes:
    features, labels = load_breast_cancer(return_X_y=True)
    booster = xgboost.XGBClassifier(n_estimators=trees, max_depth=2).fit(features, labels).get_booster()
    return bytes(booster.save_raw(raw_format="json"))


def _archive(content: bytes) -> bytes:
    record = EnclaveModelRecord.of(XGBOOST_JSON, content, 30, "xgboost")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, body in (
            (record.file, content),
            (artifacts.ENCLAVE_MODEL_JSON, json.dumps(record.to_dict()).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def _register(s3: Any, version_key: str, archive: bytes, digest: str, kind: str = "enclave") -> str:
    s3.put_object(Bucket=UNIT_BUCKET, Key=version_key, Body=archive)
    sagemaker = aws.client("sagemaker")
    groups = sagemaker.list_model_package_groups()["ModelPackageGroupSummaryList"]
    if not groups:
        sagemaker.create_model_package_group(ModelPackageGroupName="g")
    return str(
        sagemaker.create_model_package(
            ModelPackageGroupName="g",
            InferenceSpecification={
                "Containers": [{"Image": "unused:latest", "ModelDataUrl": f"s3://{UNIT_BUCKET}/{version_key}"}],
                "SupportedContentTypes": ["application/json"],
                "SupportedResponseMIMETypes": ["application/octet-stream"],
            },
            ModelApprovalStatus="Approved",
            CustomerMetadataProperties={artifacts.MODEL_KIND_PROPERTY: kind, artifacts.MODEL_DIGEST_PROPERTY: digest},
        )["ModelPackageArn"]
    )


@pytest.fixture(scope="module")
def models() -> tuple[bytes, bytes]:
    return _model(5), _model(6)


def _served(s3: Any, enclave: Enclave) -> ServedModel:
    return ServedModel(aws.client("sagemaker"), s3, enclave)  # type: ignore[arg-type]


def _digest(content: bytes) -> str:
    return EnclaveModelRecord.of(XGBOOST_JSON, content, 30, "xgboost").sha256


def test_the_packages_model_is_loaded_once_and_again_when_a_shard_names_another(
    s3: Any, models: tuple[bytes, bytes]
) -> None:
    first, second = models
    one = _register(s3, "pipelines/a/model/model.tar.gz", _archive(first), _digest(first))
    two = _register(s3, "pipelines/b/model/model.tar.gz", _archive(second), _digest(second))
    enclave = Enclave()
    served = _served(s3, enclave)
    assert served.ensure(one) == _digest(first) and served.ensure(one) == _digest(first)
    assert enclave.loads == 1
    assert served.ensure(two) == _digest(second) and enclave.loads == 2


def test_a_model_other_than_registered_a_revoked_package_and_an_fhe_package_are_refused_by_name(
    s3: Any, models: tuple[bytes, bytes]
) -> None:
    first, second = models
    swapped = _register(s3, "pipelines/c/model/model.tar.gz", _archive(second), _digest(first))
    fhe = _register(s3, "pipelines/d/model/model.tar.gz", _archive(first), _digest(first), kind="fhe")
    revoked = _register(s3, "pipelines/e/model/model.tar.gz", _archive(first), _digest(first))
    aws.client("sagemaker").update_model_package(ModelPackageArn=revoked, ModelApprovalStatus="Rejected")
    enclave = Enclave()
    served = _served(s3, enclave)
    for arn, reason in ((swapped, "model_unusable"), (fhe, "wrong_path"), (revoked, "model_revoked")):
        with pytest.raises(ShardRefused) as refused:
            served.ensure(arn)
        assert refused.value.reason == reason, refused.value.detail
    assert enclave.loads == 0 and served.loaded is None


def test_the_parents_loop_polls_until_stopped_and_leaves_a_message_that_is_no_shard_task(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs = aws.client("sqs")
    queue = sqs.create_queue(QueueName="enclave-shards")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="not a shard task")
    worker = fleet.parent_worker("unix:/nonexistent/enclave.sock", "0" * 96)
    stop = threading.Event()
    polled: list[int] = []

    def stop_after_two(*args: Any, **kwargs: Any) -> int:
        polled.append(1)
        if len(polled) == 2:
            stop.set()
        return 0

    with monkeypatch.context() as patched:
        patched.setattr(fleet, "poll", stop_after_two)
        assert fleet.serve(queue, worker, stop, sqs=sqs, wait_seconds=0) == 0
    assert len(polled) == 2
    assert fleet.serve(queue, worker, stop, sqs=sqs, wait_seconds=0) == 0  # stopped: no poll at all
    # A message that is not a shard task is left to the queue's redrive policy, never deleted unread.
    poll(sqs, queue, worker, wait_seconds=0)
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_the_entry_point_stops_on_its_signal_before_polling(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[str] = []

    def serve(queue_url: str, worker: Any, stop: threading.Event, **kwargs: Any) -> int:
        assert stop.is_set()  # the signal arrived before the loop began
        served.append(queue_url)
        return 0

    monkeypatch.setattr(fleet, "serve", serve)
    fleet.main(
        ["--queue-url", "https://sqs.example/q", "--enclave", "unix:/tmp/e.sock", "--image-sha384", "a" * 96],
        install=lambda signals, stop: stop.set(),
    )
    assert served == ["https://sqs.example/q"]
