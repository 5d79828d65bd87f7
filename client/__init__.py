"""The batch owner's side: keys, encryption into bundles, upload, waiting, decryption.

The private key is generated here and stays in the client home (owner-only permissions); only the
evaluation key and ciphertexts leave the machine.
"""
