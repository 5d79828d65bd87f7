"""Nitro Enclaves' attestation as AWS provides it, for a machine without Nitro hardware: an NSM (Nitro Security
Module) that signs attestation documents, the document's format and its verification, and the root those
documents chain to.

- ``attestation``: the attestation document (CBOR in a COSE_Sign1 signed with ES384, the fields AWS documents), its
  signing, and its verification against a root (chain, signature, freshness, the requester's nonce and key).
- ``authority``: the local stack's attestation root, made on first use and kept, as its TLS authority is; it
  certifies each NSM's signing key for a few hours, as AWS's chain certifies an instance's.
- ``measurement``: the enclave's PCRs, computed from the content of its image, so that an image changed by one byte
  has another measurement.
- ``nsm``: the NSM of one running enclave, over a local socket in place of ``/dev/nsm``: it answers the NSM API's
  ``Attestation``, ``DescribePCR`` and ``GetRandom`` requests, with the PCRs of the image it was started for, which
  the enclave cannot choose.
- ``runner``: an enclave started from its image as ``nitro-cli run-enclave`` starts one: measured, given its NSM,
  its entry point run as a process with only the environment it is given.

What differs from AWS is named where it is done: the root is the stack's own, not AWS's; the transport is a local
socket, not the ``/dev/nsm`` device.
"""
