"""The development stack, beside the product (not in its wheel): the local AWS and the local SageMaker from the
emulators distribution started on 127.0.0.1 only (``lifecycle``), where they keep their state (``stack_folder``),
their TLS authority (``tls``), a deployment's people as actor profiles (``people``) and a registry-free base image
(``base_image``)."""
