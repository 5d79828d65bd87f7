"""The training pipeline on the local stack, from the SDK's definition to a registered, usable FHE model."""

from __future__ import annotations

import io
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common import aws
from common.archives import extract_tar
from common.enclave_model import EnclaveModelRecord
from common.model_package import client_artifacts_uri, enclave_model_digest, model_kind
from common.preprocessing import PreprocessingRecord
from common.s3uri import S3Uri
from common.settings import PipelineSettings
from local import lifecycle
from pipelines import runs
from tests.integration.helpers import STANDALONE_PIPELINE, ensure_standalone_role

pytestmark = pytest.mark.integration

SETTINGS = STANDALONE_PIPELINE
STEP_TIMEOUT = 900.0


def run_execution(parameters: list[dict[str, str]]) -> str:
    arn = runs.start(SETTINGS, parameters)
    runs.follow(arn, STEP_TIMEOUT, out=io.StringIO())
    return arn


def steps_of(arn: str) -> dict[str, dict[str, Any]]:
    steps = aws.client("sagemaker").list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
    return {s["StepName"]: s for s in steps}


def packages() -> list[dict[str, Any]]:
    return list(
        aws.client("sagemaker").list_model_packages(ModelPackageGroupName=SETTINGS.package_group)[
            "ModelPackageSummaryList"
        ]
    )


@pytest.fixture(scope="module")
def pipeline(local_stack: dict[str, str]) -> PipelineSettings:
    ensure_standalone_role()
    runs.upsert(SETTINGS)
    runs.stage_dataset(SETTINGS, "breast_cancer")
    return SETTINGS


@pytest.fixture(scope="module")
def succeeded(pipeline: PipelineSettings) -> str:
    return run_execution([])


def test_execution_succeeds_and_lists_every_step(succeeded: str) -> None:
    execution = aws.client("sagemaker").describe_pipeline_execution(PipelineExecutionArn=succeeded)
    assert execution["PipelineExecutionStatus"] == "Succeeded"
    steps = steps_of(succeeded)
    assert set(steps) == {"Preprocess", "Train", "Evaluate", "CheckQuality", "Register"}
    assert all(s["StepStatus"] == "Succeeded" for s in steps.values())
    assert steps["CheckQuality"]["Metadata"]["Condition"]["Outcome"] == "True"
    assert steps["Train"]["Metadata"]["TrainingJob"]["Arn"].startswith("arn:aws:sagemaker:")
    assert all(s["EndTime"] >= s["StartTime"] for s in steps.values())


def test_model_package_is_registered_with_metrics_pending_approval(succeeded: str) -> None:
    sagemaker = aws.client("sagemaker")
    package_arn = steps_of(succeeded)["Register"]["Metadata"]["RegisterModel"]["Arn"]
    assert package_arn in [p["ModelPackageArn"] for p in packages()]
    package = sagemaker.describe_model_package(ModelPackageName=package_arn)
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    report_uri = S3Uri.parse(package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"])
    report = json.loads(aws.client("s3").get_object(Bucket=report_uri.bucket, Key=report_uri.key)["Body"].read())
    metrics = {k: v["value"] for k, v in report["multiclass_classification_metrics"].items()}
    assert metrics["accuracy"] > 0.9
    assert metrics["accuracy_fhe_simulation"] > 0.9
    assert metrics["accuracy_fhe"] > 0.5
    assert metrics["evaluation_key_bytes"] > 0
    assert metrics["input_ciphertext_bytes_per_sample"] > 0
    assert metrics["fhe_latency_seconds_per_sample"] > 0 and metrics["fhe_seconds_per_sample_served"] > 0
    # The Train step searched the unset levers: a linear model's circuit has no bootstrap, so it kept them; the
    # certification rows bound its loss, and the test split's check of the budget is in the report.
    assert report["levers"] == {"n_bits": 8}
    assert report["search"]["explored"] == 1 and report["search"]["stop_reason"] == "no_bootstrap"
    certified = report["search"]["certified_loss"]
    assert certified["candidate"] == 0 and certified["bound"] >= certified["loss"]
    assert report["search"]["confidence"] == 0.95 and report["search"]["certification_rows"] > 0
    budget = report["budget"]
    assert budget["accuracy_budget"] == 0.01 and budget["lower"] <= budget["loss"] <= budget["upper"]
    assert metrics["accuracy_loss_vs_float_lower"] <= metrics["accuracy_budget"]  # CheckQuality let it through


def test_the_uci_file_with_its_id_named_trains_a_model_without_it(pipeline: PipelineSettings) -> None:
    """The breast-cancer file as UCI distributes it (id, diagnosis as M/B, the features) with IdColumns=id: the
    registered model's preprocessing.json has no id feature and says why, the evaluation report too, and the
    client artifacts carry the measured costs an owner's estimate is made of."""
    source = runs.stage_dataset(SETTINGS, "breast_cancer_uci")
    parameters = {"InputDataUri": source, "LabelColumn": "diagnosis", "IdColumns": "id", "NBits": "6"}
    arn = run_execution([{"Name": k, "Value": v} for k, v in parameters.items()])
    steps = steps_of(arn)
    assert all(s["StepStatus"] == "Succeeded" for s in steps.values()), {
        n: s.get("FailureReason") for n, s in steps.items()
    }
    package = aws.client("sagemaker").describe_model_package(
        ModelPackageName=steps["Register"]["Metadata"]["RegisterModel"]["Arn"]
    )
    client_artifacts = client_artifacts_uri(package)
    s3 = aws.client("s3")
    record = PreprocessingRecord.from_json(_read_text(client_artifacts.join("preprocessing.json")))
    assert "id" not in record.feature_names and record.n_features == 30 and record.classes == ["B", "M"]
    assert record.id_columns == ["id"] and "IdColumns" in record.left_out["id"] and record.warnings == []
    report_uri = S3Uri.parse(package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"])
    report = json.loads(s3.get_object(Bucket=report_uri.bucket, Key=report_uri.key)["Body"].read())
    assert report["columns"]["left_out"] == record.left_out
    assert report["levers"] == {"n_bits": 6} and report["search"]["pinned"] == ["n_bits"]  # given: pinned
    costs = json.loads(_read_text(client_artifacts.join("costs.json")))
    assert costs["fhe_seconds_per_sample_served"] > 0 and costs["input_ciphertext_bytes_per_sample"] > 0


def _read_text(uri: S3Uri) -> str:
    return str(aws.client("s3").get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read().decode())


def test_an_enclave_model_is_trained_evaluated_in_clear_and_registered_with_its_kind_and_digest(
    pipeline: PipelineSettings,
) -> None:
    """ModelKind=enclave through the same pipeline: a 50-tree XGBoost model saved as XGBoost JSON (no circuit, no
    pickle), evaluated in clear, registered with model_kind=enclave and the SHA-256 of the very file the package's
    model.tar.gz holds; its client artifacts are the model's record, never the model."""
    parameters = {"ModelKind": "enclave", "ModelType": "xgboost", "NEstimators": "50"}
    arn = run_execution([{"Name": k, "Value": v} for k, v in parameters.items()])
    steps = steps_of(arn)
    assert all(s["StepStatus"] == "Succeeded" for s in steps.values()), {
        n: s.get("FailureReason") for n, s in steps.items()
    }
    package = aws.client("sagemaker").describe_model_package(
        ModelPackageName=steps["Register"]["Metadata"]["RegisterModel"]["Arn"]
    )
    assert model_kind(package) == "enclave"
    digest = enclave_model_digest(package)
    model_uri = S3Uri.parse(package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"])
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "model.tar.gz"
        aws.client("s3").download_file(model_uri.bucket, model_uri.key, str(archive))
        extract_tar(archive, Path(scratch) / "model")
        record, content = EnclaveModelRecord.load(Path(scratch) / "model")
        names = {path.name for path in (Path(scratch) / "model").iterdir()}
    assert record.sha256 == digest and record.format == "xgboost-json" and record.features == 30
    assert "server.zip" not in names and not any(name.endswith((".pkl", ".pickle")) for name in names)
    assert json.loads(content)["learner"]["gradient_booster"]["model"]["gbtree_model_param"]["num_trees"] == "50"
    report_uri = S3Uri.parse(package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"])
    report = json.loads(aws.client("s3").get_object(Bucket=report_uri.bucket, Key=report_uri.key)["Body"].read())
    metrics = {k: v["value"] for k, v in report["multiclass_classification_metrics"].items()}
    assert report["model_kind"] == "enclave" and metrics["accuracy_served"] == metrics["accuracy"] > 0.9
    client = client_artifacts_uri(package)
    assert EnclaveModelRecord.from_dict(json.loads(_read_text(client.join("enclave_model.json")))) == record


def test_registered_model_runs_in_real_fhe(succeeded: str) -> None:
    """client.zip + server.zip from the registered model.tar.gz: keygen, encrypt, server run, decrypt."""
    from concrete.ml.common.serialization.loaders import loads
    from concrete.ml.deployment import FHEModelClient, FHEModelServer
    from sklearn.datasets import load_breast_cancer

    sagemaker = aws.client("sagemaker")
    package_arn = steps_of(succeeded)["Register"]["Metadata"]["RegisterModel"]["Arn"]
    package = sagemaker.describe_model_package(ModelPackageName=package_arn)
    model_uri = S3Uri.parse(package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"])
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "model.tar.gz"
        aws.client("s3").download_file(model_uri.bucket, model_uri.key, str(archive))
        files = Path(scratch) / "model"
        extract_tar(archive, files)
        record = PreprocessingRecord.load(files / "preprocessing.json")
        x_raw, _ = load_breast_cancer(return_X_y=True)
        x = record.transform(np.random.default_rng(7).permutation(x_raw)[:40])

        client = FHEModelClient(path_dir=str(files), key_dir=str(Path(scratch) / "keys"))
        client.generate_private_and_evaluation_keys()
        evaluation_keys = client.get_serialized_evaluation_keys()
        server = FHEModelServer(path_dir=str(files))
        server.load()
        decrypted = []
        for row in x:
            encrypted = client.quantize_encrypt_serialize(row[None, :])
            result = server.run(encrypted, evaluation_keys)
            assert isinstance(result, bytes) and result != encrypted
            decrypted.append(client.deserialize_decrypt_dequantize(result)[0])
        fhe_predictions = np.asarray(decrypted).argmax(axis=1)
        clear_model = loads((files / "model.json").read_text())
        clear_predictions = clear_model.sklearn_model.predict(x)
    agreement = float((fhe_predictions == clear_predictions).mean())
    assert agreement >= 0.95, f"FHE agrees with the clear model on only {agreement:.0%} of samples"


def test_local_sagemaker_runs_exactly_the_sdk_definition(pipeline: PipelineSettings) -> None:
    stored = aws.client("sagemaker").describe_pipeline(PipelineName=pipeline.pipeline_name)["PipelineDefinition"]
    expected = runs.definition_json(pipeline)
    assert json.loads(stored) == json.loads(expected)
    assert {s["Name"] for s in json.loads(stored)["Steps"]} == {"Preprocess", "Train", "Evaluate", "CheckQuality"}


def test_threshold_above_reach_fails_with_reason_and_registers_nothing(pipeline: PipelineSettings) -> None:
    before = len(packages())
    arn = run_execution([{"Name": "AccuracyThreshold", "Value": "1.01"}])
    execution = aws.client("sagemaker").describe_pipeline_execution(PipelineExecutionArn=arn)
    assert execution["PipelineExecutionStatus"] == "Failed"
    steps = steps_of(arn)
    assert "Register" not in steps
    assert steps["CheckQuality"]["Metadata"]["Condition"]["Outcome"] == "False"
    reason = steps["QualityTooLow"]["FailureReason"]
    assert "required >= 1.01" in reason
    assert "served accuracy (FHE-simulated, or clear for an enclave model) 0." in reason
    assert steps["QualityTooLow"]["StepStatus"] == "Failed"
    assert len(packages()) == before


def _put_text(key: str, text: str) -> str:
    aws.client("s3").put_object(Bucket=SETTINGS.artifact_bucket, Key=key, Body=text.encode())
    return f"s3://{SETTINGS.artifact_bucket}/{key}"


BAD_INPUTS = {
    "unknown model type": (
        [{"Name": "ModelType", "Value": "random_forest_deluxe"}],
        "Train",
        "unknown model type 'random_forest_deluxe'",
    ),
    "no label column": (
        [{"Name": "InputDataUri", "Value": "bad/nolabel.csv"}],
        "Preprocess",
        "label column 'label' not found",
    ),
    "non-numeric feature": (
        [{"Name": "InputDataUri", "Value": "bad/text.csv"}],
        "Preprocess",
        "feature column 'b' has the non-numeric value 'seven'",
    ),
    "empty file": ([{"Name": "InputDataUri", "Value": "bad/empty.csv"}], "Preprocess", "is empty"),
    "identifier-like feature": (
        [{"Name": "InputDataUri", "Value": "bad/idfirst.csv"}],
        "Preprocess",
        "feature column 'a' of idfirst.csv looks like a record identifier",
    ),
}


def test_bad_input_fails_the_step_with_a_reason_and_the_stack_keeps_running(pipeline: PipelineSettings) -> None:
    rows = "\n".join(f"{i},{i % 3},{i % 2}" for i in range(40))
    files = {
        "bad/nolabel.csv": "a,b,c\n" + rows + "\n",
        "bad/text.csv": "a,b,label\n" + rows + "\n1,seven,0\n",
        "bad/empty.csv": "",
        "bad/idfirst.csv": "a,b,label\n" + rows + "\n",  # a: a unique whole number per row, in no parameter
    }
    uris = {key: _put_text(key, text) for key, text in files.items()}
    started = {}
    for case, (parameters, _, _) in BAD_INPUTS.items():
        resolved = [{"Name": p["Name"], "Value": uris.get(p["Value"], p["Value"])} for p in parameters]
        started[case] = runs.start(SETTINGS, resolved)
    for case, (_, step_name, phrase) in BAD_INPUTS.items():
        runs.follow(started[case], STEP_TIMEOUT, out=io.StringIO())
        steps = steps_of(started[case])
        assert steps[step_name]["StepStatus"] == "Failed", case
        assert phrase in steps[step_name]["FailureReason"], (case, steps[step_name]["FailureReason"])
        execution = aws.client("sagemaker").describe_pipeline_execution(PipelineExecutionArn=started[case])
        assert execution["PipelineExecutionStatus"] == "Failed"
        assert phrase in execution["FailureReason"]
    assert lifecycle.local_sagemaker().healthy() and lifecycle.local_aws().healthy()


def test_kill_and_restart_keeps_pipelines_executions_and_packages(succeeded: str) -> None:
    sagemaker = aws.client("sagemaker")
    executions_before = sagemaker.list_pipeline_executions(PipelineName=SETTINGS.pipeline_name)
    packages_before = packages()
    service = lifecycle.local_sagemaker()
    pid = service.pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while service.healthy() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not service.healthy()
    lifecycle.up()
    sagemaker = aws.client("sagemaker")
    assert sagemaker.describe_pipeline(PipelineName=SETTINGS.pipeline_name)["PipelineStatus"] == "Active"
    executions_after = sagemaker.list_pipeline_executions(PipelineName=SETTINGS.pipeline_name)
    assert [e["PipelineExecutionArn"] for e in executions_after["PipelineExecutionSummaries"]] == [
        e["PipelineExecutionArn"] for e in executions_before["PipelineExecutionSummaries"]
    ]
    assert packages() == packages_before
    assert set(steps_of(succeeded)) == {"Preprocess", "Train", "Evaluate", "CheckQuality", "Register"}
