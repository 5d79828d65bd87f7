"""The enclave path: the application that runs inside a measured Nitro enclave and its parent on the instance.
Records are decrypted only here, with a data key KMS releases to this enclave's measurement alone."""
