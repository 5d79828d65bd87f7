from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.preprocessing import PreprocessingRecord, SchemaError
from containers.contract import StepInputError
from containers.training.data import builtin_dataset_csv, find_input_file, load_table
from containers.training.models import TrainingSettings
from containers.training.preprocess import encode_labels, preprocess


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("a,b,label\n", "header but no rows"),
        ("a,b,c\n1,2,3\n", "label column 'label' not found"),
        ("a,b,label\n1,x,0\n", "feature column 'b' has the non-numeric value 'x' at data row 1"),
        ("a,b,label\n1,,0\n", "feature column 'b' has a missing value at data row 1"),
        ("label\n1\n", "no feature columns"),
        ("a,label\n1,\n", "label column 'label' is empty at data row 1"),
    ],
)
def test_csv_problems_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(StepInputError, match=message):
        load_table(write(tmp_path, "d.csv", text))


def test_npy_with_label_in_last_column(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.array([[0.1, 0.2, 1], [0.3, 0.4, 0]]))
    table = load_table(path)
    assert table.x.shape == (2, 2)
    assert list(table.labels) == [1.0, 0.0]
    np.save(path, np.array([1, 2, 3]))
    with pytest.raises(StepInputError, match="2-D array"):
        load_table(path)
    np.save(path, np.array([["a", "b"]]))
    with pytest.raises(StepInputError, match="features must be numbers"):
        load_table(path)


def test_find_input_file(tmp_path: Path) -> None:
    with pytest.raises(StepInputError, match=r"no \.csv or \.npy"):
        find_input_file(tmp_path)
    write(tmp_path, "a.csv", "x")
    assert find_input_file(tmp_path).name == "a.csv"
    write(tmp_path, "b.csv", "x")
    with pytest.raises(StepInputError, match="more than one"):
        find_input_file(tmp_path)


def test_labels_are_ordered_numerically() -> None:
    y, classes = encode_labels(np.array(["10", "2", "1", "2"]))
    assert classes == ["1", "2", "10"]
    assert list(y) == [2, 1, 0, 1]
    _, names = encode_labels(np.array(["cat", "dog", "cat"]))
    assert names == ["cat", "dog"]


def test_preprocess_writes_scaled_splits_and_record(tmp_path: Path) -> None:
    source = builtin_dataset_csv("breast_cancer", tmp_path / "in" / "bc.csv")
    summary = preprocess(source.parent, tmp_path / "out", "label", 0.25, 1)
    assert summary["features"] == 30 and summary["classes"] == ["0", "1"]
    with np.load(tmp_path / "out/train/train.npz") as train:
        assert train["x"].min() >= -1 and train["x"].max() <= 1
        assert train["x"].shape[0] == summary["train_rows"]
    record = PreprocessingRecord.load(tmp_path / "out/preprocessing/preprocessing.json")
    assert record.n_features == 30 and record.label_column == "label"


def test_preprocess_refuses_single_class(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "a,label\n" + "".join(f"{i},1\n" for i in range(10)))
    with pytest.raises(StepInputError, match="single class"):
        preprocess(tmp_path, tmp_path / "out", "label", 0.25, 1)


def test_preprocessing_record_transform() -> None:
    x = np.array([[0.0, 5.0, 1.0], [10.0, 5.0, 3.0]])
    record = PreprocessingRecord.fit(x, ["a", "b", "c"], "label", ["0", "1"])
    scaled = record.transform(np.array([[5.0, 5.0, 100.0]]))
    assert scaled.tolist() == [[0.0, 0.0, 1.0]]  # middle; constant feature in the middle; clipped
    assert PreprocessingRecord.from_json(record.to_json()) == record
    with pytest.raises(SchemaError, match="expected rows of 3 features"):
        record.transform(np.zeros((1, 2)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model_type": "forest"}, "unknown model type 'forest'"),
        ({"n_bits": "eight"}, r"n_bits='eight' is not a valid int"),
        ({"colour": "red"}, "unknown hyperparameter 'colour'"),
        ({"p_error": "2"}, "p_error must be in"),
        ({"max_depth": "0"}, "max_depth must be at least 1"),
    ],
)
def test_training_settings_name_the_bad_hyperparameter(raw: dict[str, str], message: str) -> None:
    with pytest.raises(StepInputError, match=message):
        TrainingSettings.from_hyperparameters(raw)


def test_training_settings_parse_sagemaker_strings() -> None:
    settings = TrainingSettings.from_hyperparameters(
        {
            "model_type": "neural_network",
            "module__n_w_bits": "3",
            "compress_evaluation_keys": "false",
            "sagemaker_job_name": "ignored",
        }
    )
    assert settings.module__n_w_bits == 3 and settings.compress_evaluation_keys is False
    assert TrainingSettings().effective_n_bits == 8


def test_digits_28x28_has_mnist_shape_and_the_digits_labels(tmp_path: Path) -> None:
    table = load_table(builtin_dataset_csv("digits_28x28", tmp_path / "d.csv"))
    small = load_table(builtin_dataset_csv("digits", tmp_path / "s.csv"))
    assert table.x.shape == (1797, 784)
    assert list(table.labels) == list(small.labels)
    # Upscaling keeps each image: the corners of a 28x28 image are the corners of its 8x8 source.
    assert np.allclose(table.x[:, [0, 27, 756, 783]], small.x[:, [0, 7, 56, 63]])
