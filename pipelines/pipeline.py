"""The training pipeline: Preprocess → Train (a lever search, then the fit) → Evaluate → CheckQuality →
Register | Fail. With ModelKind=enclave it trains a float model for the attested enclave (no circuit, no search),
evaluated in clear and registered with its kind and digest.

This module only assembles steps; each step's work lives in ``containers/training``.
"""

from __future__ import annotations

from typing import Any

from common.artifacts import CLIENT_ARTIFACTS_PROPERTY, MODEL_DIGEST_PROPERTY, MODEL_KIND_PROPERTY
from common.settings import PipelineSettings

TRAINING_ENTRYPOINT = ["python", "-m", "containers.training"]
EVALUATION_FILE = "evaluation.json"
METRIC_PATH = "multiclass_classification_metrics.{}.value"


def build_pipeline(settings: PipelineSettings, sagemaker_session: Any = None) -> Any:
    """The pipeline object; ``.definition()`` gives the JSON that SageMaker (or the local SageMaker) runs."""
    import os

    # The SDK creates a SageMaker client while it is imported, which needs a region even offline.
    os.environ.setdefault("AWS_DEFAULT_REGION", settings.region)
    # Building a definition must work offline; SageMaker itself checks the role when the pipeline is upserted.
    os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")
    import boto3
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.core.processing import Processor
    from sagemaker.core.shapes import (
        OutputDataConfig,
        ProcessingInput,
        ProcessingOutput,
        ProcessingS3Input,
        ProcessingS3Output,
    )
    from sagemaker.core.workflow import (
        ConditionGreaterThanOrEqualTo,
        ConditionLessThanOrEqualTo,
        Join,
        JsonGet,
        ParameterFloat,
        ParameterInteger,
        ParameterString,
        PropertyFile,
    )
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep, TrainingStep
    from sagemaker.serve.model_builder import ModelBuilder
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import Compute, InputData

    session = sagemaker_session or PipelineSession(
        boto_session=boto3.Session(region_name=settings.region), default_bucket=settings.artifact_bucket
    )

    input_data = ParameterString("InputDataUri", default_value=settings.data_uri)
    label_column = ParameterString("LabelColumn", default_value="label")
    # Comma-separated column names (empty: none); a feature that looks like an identifier is refused unless kept.
    feature_columns = ParameterString("FeatureColumns", default_value="")
    ignore_columns = ParameterString("IgnoreColumns", default_value="")
    id_columns = ParameterString("IdColumns", default_value="")
    identifier_features = ParameterString("IdentifierFeatures", default_value="refuse")
    # "fhe" (a compiled circuit) or "enclave" (a float model served in the attested enclave); checked by Train.
    model_kind = ParameterString("ModelKind", default_value="fhe")
    # No enum here: the Train step checks the model type and names the allowed ones in its FailureReason.
    model_type = ParameterString("ModelType", default_value="logistic_regression")
    # The FHE levers. Their defaults leave them unset: the Train step's search chooses them within AccuracyBudget
    # (with SearchSeconds=0, the model type's defaults apply). A lever given a value is pinned.
    n_bits = ParameterInteger("NBits", default_value=0)
    max_depth = ParameterInteger("MaxDepth", default_value=0)
    n_estimators = ParameterInteger("NEstimators", default_value=0)
    n_w_bits = ParameterInteger("NetworkWeightBits", default_value=0)
    n_a_bits = ParameterInteger("NetworkActivationBits", default_value=0)
    hidden_multiplier = ParameterFloat("NetworkHiddenMultiplier", default_value=0.0)
    pruning = ParameterFloat("NetworkPruning", default_value=-1.0)  # -1: unset, as 0 means no pruning
    n_accum_bits = ParameterInteger("NetworkAccumulatorBits", default_value=32)  # 32: unbounded; never searched
    rounding = ParameterString("NetworkRounding", default_value="auto")
    p_error = ParameterFloat("PError", default_value=0.0)
    # Points of accuracy (0.01 = one) the circuit may lose against the float model, how sure the search must be
    # of it (1 - δ: the search certifies its choice on rows it did not choose on), and the seconds it may take.
    # CheckQuality fails a model whose test-split loss is above the budget beyond its interval.
    accuracy_budget = ParameterFloat("AccuracyBudget", default_value=0.01)
    budget_confidence = ParameterFloat("BudgetConfidence", default_value=0.95)
    search_seconds = ParameterInteger("SearchSeconds", default_value=300)
    accuracy_threshold = ParameterFloat("AccuracyThreshold", default_value=0.85)
    max_gap = ParameterFloat("MaxAccuracyGap", default_value=0.03)
    fhe_samples = ParameterInteger("FheSampleSize", default_value=5)
    package_group = ParameterString("ModelPackageGroupName", default_value=settings.package_group)

    run_prefix = Join(
        on="/",
        values=[
            f"s3://{settings.artifact_bucket}",
            "pipelines",
            settings.pipeline_name,
            ExecutionVariables.PIPELINE_EXECUTION_ID,
        ],
    )

    def processor(job: str) -> Processor:
        return Processor(
            role=settings.role_arn,
            image_uri=settings.training_image,
            entrypoint=[*TRAINING_ENTRYPOINT, job],
            instance_count=1,
            instance_type=settings.job_instance_type,
            base_job_name=f"fhe-{job}",
            sagemaker_session=session,
        )

    def s3_input(name: str, source: Any, local_path: str) -> ProcessingInput:
        return ProcessingInput(
            input_name=name,
            s3_input=ProcessingS3Input(
                s3_uri=source, local_path=local_path, s3_data_type="S3Prefix", s3_input_mode="File"
            ),
        )

    def s3_output(name: str, local_path: str) -> ProcessingOutput:
        return ProcessingOutput(
            output_name=name,
            s3_output=ProcessingS3Output(
                s3_uri=Join(on="/", values=[run_prefix, name]), local_path=local_path, s3_upload_mode="EndOfJob"
            ),
        )

    preprocess = ProcessingStep(
        name="Preprocess",
        step_args=processor("preprocess").run(
            inputs=[s3_input("data", input_data, "/opt/ml/processing/input/data")],
            outputs=[
                s3_output("train", "/opt/ml/processing/output/train"),
                s3_output("test", "/opt/ml/processing/output/test"),
                s3_output("preprocessing", "/opt/ml/processing/output/preprocessing"),
            ],
            # "--name=value" keeps an empty value one argument.
            arguments=[
                "--label-column",
                label_column,
                Join(on="=", values=["--feature-columns", feature_columns]),
                Join(on="=", values=["--ignore-columns", ignore_columns]),
                Join(on="=", values=["--id-columns", id_columns]),
                Join(on="=", values=["--identifier-features", identifier_features]),
            ],
        ),
    )

    def preprocess_output(name: str) -> Any:
        return preprocess.properties.ProcessingOutputConfig.Outputs[name].S3Output.S3Uri

    trainer = ModelTrainer(
        training_image=settings.training_image,
        role=settings.role_arn,
        compute=Compute(instance_type=settings.job_instance_type, instance_count=1),
        base_job_name="fhe-train",
        sagemaker_session=session,
        output_data_config=OutputDataConfig(s3_output_path=Join(on="/", values=[run_prefix, "model"])),
        hyperparameters={
            "model_kind": model_kind,
            "model_type": model_type,
            "n_bits": n_bits,
            "max_depth": max_depth,
            "n_estimators": n_estimators,
            "module__n_w_bits": n_w_bits,
            "module__n_a_bits": n_a_bits,
            "module__n_hidden_neurons_multiplier": hidden_multiplier,
            "module__n_prune_neurons_percentage": pruning,
            "module__n_accum_bits": n_accum_bits,
            "rounding": rounding,
            "p_error": p_error,
            "accuracy_budget": accuracy_budget,
            "budget_confidence": budget_confidence,
            "search_seconds": search_seconds,
        },
        input_data_config=[
            InputData(channel_name="train", data_source=preprocess_output("train")),
            InputData(channel_name="preprocessing", data_source=preprocess_output("preprocessing")),
        ],
    )
    train = TrainingStep(name="Train", step_args=trainer.train())
    model_artifacts = train.properties.ModelArtifacts.S3ModelArtifacts

    evaluation_report = PropertyFile(name="EvaluationReport", output_name="evaluation", path=EVALUATION_FILE)
    evaluate = ProcessingStep(
        name="Evaluate",
        step_args=processor("evaluate").run(
            inputs=[
                s3_input("model", model_artifacts, "/opt/ml/processing/model"),
                s3_input("train", preprocess_output("train"), "/opt/ml/processing/train"),
                s3_input("test", preprocess_output("test"), "/opt/ml/processing/test"),
            ],
            outputs=[
                s3_output("evaluation", "/opt/ml/processing/evaluation"),
                s3_output("client", "/opt/ml/processing/client"),
            ],
            arguments=["--fhe-samples", fhe_samples.to_string()],
        ),
        property_files=[evaluation_report],
    )

    def evaluation_metric(name: str) -> Any:
        return JsonGet(step_name=evaluate.name, property_file=evaluation_report, json_path=METRIC_PATH.format(name))

    # What is served: the circuit (its FHE simulation) for an FHE model, the float model itself for an enclave one.
    served_accuracy = evaluation_metric("accuracy_served")
    accuracy_gap = evaluation_metric("accuracy_gap_clear_vs_served")
    budget_loss = evaluation_metric("accuracy_loss_vs_float")
    budget_loss_lower = evaluation_metric("accuracy_loss_vs_float_lower")
    budget_loss_upper = evaluation_metric("accuracy_loss_vs_float_upper")

    evaluation_uri = Join(
        on="/",
        values=[evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri, EVALUATION_FILE],
    )
    model_builder = ModelBuilder(
        s3_model_data_url=model_artifacts,
        image_uri=settings.inference_image,
        role_arn=settings.role_arn,
        sagemaker_session=session,
    )
    # Without a bucket the builder asks S3 for the session's default bucket, which needs credentials.
    model_builder.bucket = settings.artifact_bucket
    register = ModelStep(
        name="Register",
        step_args=model_builder.register(
            model_package_group_name=package_group,
            content_types=["application/json"],
            response_types=["application/octet-stream"],
            inference_instances=[settings.job_instance_type],
            transform_instances=[settings.job_instance_type],
            model_metrics=ModelMetrics(
                model_statistics=MetricsSource(content_type="application/json", s3_uri=evaluation_uri)
            ),
            approval_status="PendingManualApproval",
            customer_metadata_properties={
                "model_type": model_type,
                MODEL_KIND_PROPERTY: model_kind,
                # What serves the model (server.zip, or the enclave model's file), as Evaluate hashed it: what an
                # enclave attests to, and what the audit checks a served bundle against.
                MODEL_DIGEST_PROPERTY: JsonGet(
                    step_name=evaluate.name, property_file=evaluation_report, json_path="model_digest"
                ),
                "pipeline_execution": run_prefix,
                # The run's client artifacts, apart from model.tar.gz (and so server.zip): what the approval
                # publishes to batch owners (pipelines/approval.py).
                CLIENT_ARTIFACTS_PROPERTY: evaluate.properties.ProcessingOutputConfig.Outputs["client"].S3Output.S3Uri,
            },
            skip_model_validation="None",
        ),
    )
    fail = FailStep(
        name="QualityTooLow",
        error_message=Join(
            on="",
            values=[
                "Model quality below the bar: served accuracy (FHE-simulated, or clear for an enclave model) ",
                served_accuracy,
                " (required >= ",
                accuracy_threshold,
                "), clear-vs-served accuracy gap ",
                accuracy_gap,
                " (allowed <= ",
                max_gap,
                "), loss against the float model on the test split ",
                budget_loss,
                " (interval ",
                budget_loss_lower,
                " to ",
                budget_loss_upper,
                " at confidence ",
                budget_confidence,
                "; budget ",
                accuracy_budget,
                ": fails when the whole interval is above it)",
            ],
        ),
    )
    check_quality = ConditionStep(
        name="CheckQuality",
        conditions=[
            ConditionGreaterThanOrEqualTo(left=served_accuracy, right=accuracy_threshold),
            ConditionLessThanOrEqualTo(left=accuracy_gap, right=max_gap),
            # The budget's promise: the test split's loss is not above the budget beyond its interval.
            ConditionLessThanOrEqualTo(left=budget_loss_lower, right=accuracy_budget),
        ],
        if_steps=[register],
        else_steps=[fail],
    )

    return Pipeline(
        name=settings.pipeline_name,
        parameters=[
            input_data,
            label_column,
            feature_columns,
            ignore_columns,
            id_columns,
            identifier_features,
            model_kind,
            model_type,
            n_bits,
            max_depth,
            n_estimators,
            n_w_bits,
            n_a_bits,
            hidden_multiplier,
            pruning,
            n_accum_bits,
            rounding,
            p_error,
            accuracy_budget,
            budget_confidence,
            search_seconds,
            accuracy_threshold,
            max_gap,
            fhe_samples,
            package_group,
        ],
        steps=[preprocess, train, evaluate, check_quality],
        sagemaker_session=session,
    )
