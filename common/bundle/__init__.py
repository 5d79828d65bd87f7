"""Bundle format v1, one module a job; ``docs/bundle-format.md`` describes it for people, these modules define it
for code. None of them imports concrete, so the Lambdas use them as the client and the container do.

- ``schema``: the format's names and limits, :class:`~common.bundle.schema.BundleError` and the field-naming
  JSON reader every parser uses;
- ``manifest``: the manifest, its parts and its validator;
- ``shards``: the binary shard container (encode, parse, check against the manifest);
- ``serving``: the checks of a bundle against what an endpoint serves;
- ``messages``: the endpoint's wire messages for one shard (the request and the result);
- ``enclave_crypto``: the enclave path's records under a KMS data key and results sealed to the owner's key.

Everything read from outside goes through a ``parse_*`` function, which raises ``BundleError`` naming the
offending field and nothing else.
"""
