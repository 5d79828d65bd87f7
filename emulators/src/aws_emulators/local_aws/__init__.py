"""The local AWS: ministack (PyPI, in a virtual environment of its own) extended where the product needs more, and
corrected where ministack is laxer or stricter than AWS. ``python -m aws_emulators.local_aws`` runs it in that
environment (``launch`` installs and starts it); everything here but ``launch`` imports ministack and, of this
distribution, only ``aws_emulators.nitro`` (the attestation documents KMS verifies).

Added:
- ``POST /_fhe/authorize`` (``authorize``): the local SageMaker has each call it receives authenticated and
  authorized by IAM here, as SageMaker asks IAM on AWS.
- CloudFormation (``cloudformation``): a stack's service role (``RoleARN``), and the resource types of a served
  version's stack (``AWS::SageMaker::Model``, ``::EndpointConfig``, ``::Endpoint``,
  ``AWS::ApplicationAutoScaling::ScalableTarget``, ``::ScalingPolicy``), made in the local SageMaker.

Corrections, so that it is no stricter than AWS (``corrections``), where it authorizes on ``*`` a call that AWS
authorizes on the resource it names (a policy granting the call on that resource, as AWS allows, would be
refused): ``cloudwatch:DeleteAlarms`` naming one alarm is authorized on the alarm's ARN, and a Step Functions
call naming a map run (``ListExecutions``, ``DescribeMapRun``) on the map run's ARN.

Rules of AWS that ministack does not apply:
- KMS's ``Recipient`` (``kms_recipient``): an attested call from a Nitro enclave. The attestation document is
  verified against the trusted root (``LOCAL_ATTESTATION_ROOT``), its measurements are the values of the key
  policy's ``kms:RecipientAttestation:*`` condition keys, and the answer is ``CiphertextForRecipient`` (CMS
  EnvelopedData to the document's RSA key) without ``Plaintext``; ministack ignored ``Recipient`` and answered the
  plaintext, and no condition naming a measurement could match.
- KMS requests carry ``kms:EncryptionContext:<key>`` (the key's name in any case) and
  ``kms:EncryptionContextKeys`` from their encryption context; ministack left them out, and a key policy binding a
  data key to its caller's owner refused every request.
- EC2 launch templates keep and show ``EnclaveOptions`` (an enclave fleet's instances); ministack dropped it.
- Policy variables in a condition's values (``${aws:PrincipalTag/owner}``, ``${key, 'default'}``, ``${*}``) are
  replaced by the request's values, and a variable whose key the request lacks (without a default) fails the
  condition, as AWS documents; ministack compared the variable's text itself.
- ``events:PutEvents`` carries the condition keys ``events:source`` and ``events:detail-type`` (each entry's), so a
  policy can let a role send only its own events; ministack leaves them out, and a policy naming them refused
  every event.
- A standard execution that runs past its state machine's top-level ``TimeoutSeconds`` ends as ``TIMED_OUT`` (an
  ``ExecutionTimedOut`` history event and the EventBridge status change); ministack let it run.
- ``aws:PrincipalArn`` of a role session is the role's ARN (``arn:aws:iam::<account>:role/<name>``), as AWS
  documents, where ministack gave the session's (``arn:aws:sts::…:assumed-role/<name>/<session>``), which no
  condition naming a role could match.
- An execution that has ended (stopped, timed out) stays as it ended; ministack overwrote it as FAILED when its
  walk failed later.
- CloudFormation runs a stack's operations under the service role it names (``RoleARN``: the caller must be allowed
  ``iam:PassRole`` on it, and its trust policy must name ``cloudformation.amazonaws.com``); ministack ignored it.
- CloudFormation applies ``AWS::Lambda::Function`` ``ReservedConcurrentExecutions`` and ``AWS::S3::Bucket``
  ``BucketEncryption`` and ``LifecycleConfiguration`` on create and update; ministack ignored them.
- CloudWatch metrics the services publish on AWS (``metrics``): Step Functions' ``AWS/States`` execution counts
  per state machine, and the embedded metric format of Lambda functions' log lines (Powertools' metrics); ministack
  published neither. An alarm is evaluated on its own metric, dimensions included; ministack evaluated it over every
  datum of the metric's name, whatever its dimensions.
- CloudFormation expands ``Transform: AWS::Serverless-2016-10-31`` (SAM): ministack does when ``samtranslator`` is
  importable, so ``launch`` installs it beside ministack.
"""
