"""A result bundle → predictions: one row per input row, in input order, with the predicted class and the
probability of every class."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from client.errors import FheClientError
from client.model import ClientModel
from common.bundle.manifest import Manifest
from common.bundle.schema import BundleError
from common.bundle.shards import parse_shard


def decrypt_result(
    model: ClientModel, manifest: Manifest, shards: dict[int, bytes], *, progress: bool = True
) -> npt.NDArray[np.float64]:
    """The class probabilities, one row per input row (shard order, then order within the shard)."""
    if manifest.model.package_arn != model.ref.package_arn:
        raise FheClientError(
            f"the result is from {manifest.model.package_arn}, these keys are for {model.ref.package_arn}"
        )
    if manifest.evaluation_key.sha256 != model.evaluation_key().sha256:
        raise FheClientError(
            "the result was computed under another evaluation key: it cannot be decrypted with these keys"
        )
    client = model.fhe_client()
    client.generate_private_and_evaluation_keys(force=False)  # loads the existing key set
    rows = []
    with tqdm(total=manifest.total_samples, unit="row", desc="decrypt", disable=not progress) as bar:
        for entry in manifest.shards:
            field = f"shards[{entry.index}]"
            for position, output in enumerate(
                parse_shard(shards[entry.index], expected_samples=entry.samples, kind="results", field=field)
            ):
                try:
                    rows.append(np.asarray(client.deserialize_decrypt_dequantize(output), dtype=np.float64)[0])
                except Exception as error:
                    raise BundleError(
                        f"{field}.samples[{position}]", f"cannot be decrypted ({type(error).__name__})"
                    ) from None
                bar.update(1)
    scores = np.vstack(rows)
    if scores.ndim == 1 or scores.shape[1] == 1:  # a single score: probability of the second class
        positive = scores.reshape(-1)
        scores = np.column_stack([1 - positive, positive])
    return scores


def write_predictions(
    path: Path,
    classes: list[str],
    probabilities: npt.NDArray[np.float64],
    ids: dict[str, list[str]] | None = None,
) -> None:
    """One line per input row: the row's ``ids`` columns first (kept on the client), then ``row``, the predicted
    class and the probability of every class."""
    if probabilities.shape[1] != len(classes):
        raise FheClientError(f"the model gives {probabilities.shape[1]} scores for {len(classes)} classes")
    ids = ids or {}
    for name, values in ids.items():
        if len(values) != len(probabilities):
            raise FheClientError(f"id column {name!r} has {len(values)} values for {len(probabilities)} predictions")
    predicted = probabilities.argmax(axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*ids, "row", "predicted_class", *(f"probability_{c}" for c in classes)])
        for row, (label, scores) in enumerate(zip(predicted, probabilities, strict=True)):
            key = [values[row] for values in ids.values()]
            writer.writerow([*key, row, classes[label], *(f"{s:.6f}" for s in scores)])
