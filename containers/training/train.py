"""Train step: fit a quantized Concrete ML model, compile it to an FHE circuit and save the deployment files (or,
with ``model_kind=enclave``, a float model for the attested enclave: ``enclave_training.py``).

Reads the ``train`` and ``preprocessing`` channels and the hyperparameters; first searches the levers ML ops left
unset for the cheapest circuit within the accuracy budget (``search.py``; ``search_seconds=0`` turns it off), then
fits the chosen levers on the whole training split. Writes into the model folder (which SageMaker packs as
``model.tar.gz``): ``client.zip``, ``server.zip``, ``model.json``, ``float_model.json`` (the given levers' model,
which the accuracy budget is measured against), ``preprocessing.json``, ``versions.json`` and ``training.json``
(the budget and its confidence; with the search: every candidate explored, those certified and the one chosen).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import artifacts
from common.preprocessing import PreprocessingRecord
from common.versions import VersionsRecord
from containers.contract import StepInputError, channel_dir, hyperparameters, model_dir, run_entry_point
from containers.training.enclave_training import EnclaveTrainingSettings, train_enclave_model
from containers.training.search import SearchSettings, chosen_settings, same_fit, search
from containers.training.training_settings import TrainingSettings

# The pipeline's ModelKind: "fhe" (a compiled circuit, the default) or "enclave" (a float model, enclave_training.py).
MODEL_KIND_HYPERPARAMETER = "model_kind"


def load_split(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    path = folder / f"{name}.npz"
    if not path.exists():
        found = sorted(p.name for p in folder.glob("*"))
        raise StepInputError(f"the {name} channel has no {name}.npz (found: {found})")
    with np.load(path, allow_pickle=False) as data:
        return data["x"].astype(np.float32), data["y"].astype(np.int64)


def compile_statistics(circuit: Any) -> dict[str, Any]:
    stats = circuit.statistics
    keys = (
        "programmable_bootstrap_count",
        "key_switch_count",
        "size_of_inputs",
        "size_of_outputs",
        "size_of_bootstrap_keys",
        "size_of_keyswitch_keys",
        "p_error",
        "global_p_error",
        "complexity",
    )
    return {k: stats[k] for k in keys if k in stats}


def load_training_inputs(train_dir: Path, preprocessing_dir: Path) -> tuple[Any, Any, PreprocessingRecord]:
    x, y = load_split(train_dir, "train")
    record = PreprocessingRecord.load(preprocessing_dir / artifacts.PREPROCESSING_JSON)
    if x.shape[1] != record.n_features:
        raise StepInputError(f"train data has {x.shape[1]} features but the schema records {record.n_features}")
    return x, y, record


def train_enclave(
    settings: EnclaveTrainingSettings, train_dir: Path, preprocessing_dir: Path, output: Path
) -> dict[str, Any]:
    """Fit an enclave model (ModelKind=enclave) and write its model folder."""
    x, y, record = load_training_inputs(train_dir, preprocessing_dir)
    return train_enclave_model(settings, x, y, record, output)


def train(
    settings: TrainingSettings,
    train_dir: Path,
    preprocessing_dir: Path,
    output: Path,
    lever_search: SearchSettings | None = None,
    pinned: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Fit and compile ``settings``, or, with ``lever_search`` on, the cheapest levers within its budget (the
    ``pinned`` ones kept as given)."""
    from concrete.ml.deployment import FHEModelDev

    x, y, record = load_training_inputs(train_dir, preprocessing_dir)
    lever_search = lever_search or SearchSettings(seconds=0)
    given, searched = settings, None
    if lever_search.enabled:
        searched = search(settings, pinned, x, y, lever_search, progress=lambda line: print(line, flush=True))
        settings = chosen_settings(settings, searched)

    model = settings.build_model()
    started = time.perf_counter()
    model.fit(x, y)
    fit_seconds = time.perf_counter() - started
    train_accuracy = float((model.predict(x) == y).mean())

    started = time.perf_counter()
    circuit = settings.compile(model, x)
    compile_seconds = time.perf_counter() - started

    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        FHEModelDev(path_dir=scratch, model=model).save()
        for name in (artifacts.CLIENT_ZIP, artifacts.SERVER_ZIP):
            shutil.move(str(Path(scratch) / name), output / name)
    (output / artifacts.MODEL_JSON).write_text(model.dumps())
    float_model = model
    if not same_fit(given, settings):  # the search chose other levers: the float model is still the given levers'
        float_model = given.build_model()
        float_model.fit(x, y)
    (output / artifacts.FLOAT_MODEL_JSON).write_text(float_model.dumps())
    record.save(output / artifacts.PREPROCESSING_JSON)
    (output / artifacts.VERSIONS_JSON).write_text(json.dumps(VersionsRecord.current().to_dict(), indent=2))
    summary = {
        "settings": settings.to_dict(),
        "effective_n_bits": settings.effective_n_bits,
        "train_rows": len(y),
        "train_accuracy_clear": train_accuracy,
        "fit_seconds": fit_seconds,
        "compile_seconds": compile_seconds,
        "circuit": compile_statistics(circuit),
        # What Evaluate checks the test split against: the loss allowed against the float model, and how sure.
        "budget": {"accuracy_loss": lever_search.accuracy_budget, "confidence": lever_search.confidence},
        "search": searched.to_dict() if searched else None,
    }
    (output / artifacts.TRAINING_JSON).write_text(json.dumps(summary, indent=2, default=str))
    shown = {k: v for k, v in summary.items() if k not in ("settings", "search")}
    print(json.dumps({"train": shown}, default=str), flush=True)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="train", description=__doc__)
    parser.parse_args(argv)  # everything comes from the SageMaker contract; --help still works

    def job() -> None:
        lever_search, raw = SearchSettings.from_hyperparameters(hyperparameters())
        kind = raw.pop(MODEL_KIND_HYPERPARAMETER, "fhe").strip() or "fhe"
        if kind not in artifacts.MODEL_KINDS:
            raise StepInputError(f"unknown model kind {kind!r}; choose one of {', '.join(artifacts.MODEL_KINDS)}")
        if kind == "enclave":
            # A float model: no circuit, so no lever search (its budget settings are the pipeline's defaults).
            train_enclave(EnclaveTrainingSettings.from_hyperparameters(raw), channel_dir("train"),
                          channel_dir("preprocessing"), model_dir())  # fmt: skip
            return
        settings = TrainingSettings.from_hyperparameters(raw)
        pinned = TrainingSettings.given_levers(raw)
        train(settings, channel_dir("train"), channel_dir("preprocessing"), model_dir(), lever_search, pinned)

    run_entry_point("training", job)


if __name__ == "__main__":
    main()
