"""The files of a trained model, as they lie in ``model.tar.gz`` (and so in ``/opt/ml/model``)."""

from __future__ import annotations

CLIENT_ZIP = "client.zip"  # quantizers + client specs: all a batch owner needs to make keys
SERVER_ZIP = "server.zip"  # the compiled FHE circuit: all the endpoint needs
MODEL_JSON = "model.json"  # the fitted Concrete ML model (clear reference, simulation)
PREPROCESSING_JSON = "preprocessing.json"
VERSIONS_JSON = "versions.json"
TRAINING_JSON = "training.json"  # hyperparameters and training statistics
