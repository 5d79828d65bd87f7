"""The batch workflow's Lambda handlers (Powertools, boto3 and ``common/`` only: no concrete-ml here).

    start       manifest ObjectCreated (EventBridge → SQS) → one Step Functions execution per bundle + ETag
    validate    the manifest against the registry, the endpoint and the shard objects → the shard plan
    invoke      one shard → InvokeEndpointAsync, the task token kept under the chosen InferenceId
    notify      the endpoint's SNS success/error notification (→ SQS) → SendTaskSuccess / SendTaskFailure
    heartbeat   on a schedule: heartbeats for shards whose endpoint is alive, failure for those whose is not
    assemble    the result manifest under ``outbox/`` (written last) and a completion event
    quarantine  the reason record under ``quarantine/`` and a failure event; the inbox objects stay

Each module has a ``handler`` that parses its event into a data class, calls one function holding the logic,
and returns a plain dict. ``statemachines/batch_inference.asl.json`` wires them together.
"""
