from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.preprocessing import PreprocessingRecord, SchemaError
from containers.contract import StepInputError
from containers.training.data import ColumnChoice, builtin_dataset_csv, find_input_file, load_table
from containers.training.preprocess import encode_labels, preprocess
from containers.training.training_settings import TrainingSettings


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
        ({"max_depth": "-1"}, "max_depth must be at least 1"),  # 0 leaves it unset: searched
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


def test_the_uci_file_trains_without_its_id_when_ids_are_named(tmp_path: Path) -> None:
    """The breast-cancer file as UCI distributes it (id, diagnosis as M/B, 30 features), IdColumns=id: the model's
    features are the 30, and the record says what was left out and why."""
    source = builtin_dataset_csv("breast_cancer_uci", tmp_path / "in" / "wdbc.csv")
    assert source.read_text().splitlines()[0].split(",")[:3] == ["id", "diagnosis", "mean_radius"]
    summary = preprocess(source.parent, tmp_path / "out", "diagnosis", 0.25, 1, ColumnChoice.parse(ids="id"))
    record = PreprocessingRecord.load(tmp_path / "out/preprocessing/preprocessing.json")
    assert "id" not in record.feature_names and record.n_features == 30 and record.classes == ["B", "M"]
    assert record.id_columns == ["id"] and "IdColumns" in record.left_out["id"]
    assert summary["left_out"] == record.left_out and summary["warnings"] == []


def test_a_feature_that_looks_like_an_identifier_is_refused_naming_it_unless_kept(tmp_path: Path) -> None:
    source = builtin_dataset_csv("breast_cancer_uci", tmp_path / "in" / "wdbc.csv")
    with pytest.raises(
        StepInputError, match=r"feature column 'id' of wdbc.csv looks like a record identifier.*IdColumns"
    ):
        preprocess(source.parent, tmp_path / "out", "diagnosis", 0.25, 1)
    kept = ColumnChoice.parse(identifiers="keep")
    summary = preprocess(source.parent, tmp_path / "kept", "diagnosis", 0.25, 1, kept)
    record = PreprocessingRecord.load(tmp_path / "kept/preprocessing/preprocessing.json")
    assert record.feature_names[0] == "id" and len(record.warnings) == 1 and "'id'" in record.warnings[0]
    assert summary["warnings"] == record.warnings
    # An increasing row number is one too; whole numbers that repeat (counts, categories) are not.
    rows = "".join(f"{i},{i % 5},{i % 2}\n" for i in range(40))
    with pytest.raises(StepInputError, match=r"'row'.*increasing row by row"):
        load_table(write(tmp_path, "r.csv", "row,count,label\n" + rows))
    assert load_table(write(tmp_path, "c.csv", "row,count,label\n" + rows), choice=ColumnChoice.parse(ignore="row"))
    few = "".join(f"{i},{i % 2}\n" for i in range(10))  # too few rows to tell
    assert load_table(write(tmp_path, "f.csv", "a,label\n" + few)).feature_names == ["a"]


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (ColumnChoice.parse(ids="patient"), "IdColumns names 'patient', not a column of d.csv"),
        (ColumnChoice.parse(features="a,zz"), "FeatureColumns names 'zz'"),
        (ColumnChoice.parse(ignore="label"), "IgnoreColumns names the label column"),
        (ColumnChoice.parse(features="a", ignore="a"), "named as a feature and as left out"),
        (ColumnChoice.parse(ignore="a,b,c"), "no feature columns left"),
    ],
)
def test_a_column_choice_that_does_not_fit_the_file_is_named(
    tmp_path: Path, choice: ColumnChoice, message: str
) -> None:
    with pytest.raises(StepInputError, match=message):
        load_table(write(tmp_path, "d.csv", "a,b,c,label\n1,2,3,0\n"), choice=choice)


def test_feature_columns_pick_and_ignore_columns_drop_and_text_ids_need_not_be_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "name,a,b,c,label\nann,1,2,3,0\nbob,4,5,6,1\n")
    table = load_table(path, choice=ColumnChoice.parse(features="c,a", ids="name"))
    assert table.feature_names == ["a", "c"] and table.x.tolist() == [[1, 3], [4, 6]]
    assert table.left_out == {
        "name": "IdColumns: a record identifier, kept by the client only",
        "b": "not in FeatureColumns",
    }
    assert load_table(path, choice=ColumnChoice.parse(ignore="name,b")).feature_names == ["a", "c"]
    with pytest.raises(StepInputError, match="'refuse' or 'keep'"):
        ColumnChoice.parse(identifiers="maybe")
