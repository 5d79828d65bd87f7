"""The batch owner's side: ``client.batch_client.BatchClient`` makes keys, encrypts rows into bundles, uploads
them, waits for and decrypts the results; ``client.cli`` (``fhe-client``) is its command line.

The private key is generated here and stays in the client home (owner-only permissions); only the
evaluation key and ciphertexts leave the machine.
"""
