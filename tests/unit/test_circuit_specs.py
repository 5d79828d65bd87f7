"""The checks of a key and a ciphertext against a circuit's description, on a real compiled tree's key and
ciphertext: each difference is named, and no bytes whatever make the reader fail otherwise than by refusing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.bundle.schema import BundleError
from containers.inference.circuit_specs import CircuitSpecs
from containers.training.data import builtin_dataset_csv
from containers.training.preprocess import preprocess
from containers.training.train import load_split, train
from containers.training.training_settings import TrainingSettings


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A depth-3 tree's program description, one evaluation key and one ciphertext."""
    from concrete.fhe import Server
    from concrete.ml.deployment import FHEModelClient

    root = tmp_path_factory.mktemp("tree")
    source = builtin_dataset_csv("breast_cancer", root / "in" / "bc.csv")
    preprocess(source.parent, root / "splits", "label", 0.25, 3)
    settings_ = TrainingSettings(model_type="decision_tree", max_depth=3, n_bits=3)
    train(settings_, root / "splits/train", root / "splits/preprocessing", root / "m")
    client = FHEModelClient(path_dir=str(root / "m"), key_dir=str(root / "keys"))
    client.generate_private_and_evaluation_keys()
    x, _ = load_split(root / "splits/train", "train")
    program = json.loads(Server.load(Path(root / "m" / "server.zip")).program_info.serialize())
    return {
        "program": program,
        "key": client.get_serialized_evaluation_keys(),
        "ciphertext": client.quantize_encrypt_serialize(x[:1]),
    }


def test_the_circuits_own_key_and_ciphertext_pass(tree: dict[str, Any]) -> None:
    specs = CircuitSpecs.from_program_info(tree["program"])
    specs.check_evaluation_key(tree["key"])
    specs.check_ciphertext(tree["ciphertext"], "q")
    assert specs.key_bytes is not None and len(tree["key"]) <= specs.key_bytes
    # Loaded, a seeded bootstrap key decompresses: the key takes more memory than bytes.
    assert specs.key_memory_bytes > len(tree["key"])


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("lweBootstrapKeys", 0, "params", "polynomialSize"), 512, "bootstrap key 0: its polynomialSize is 1024, "),
        (("lweBootstrapKeys", 0, "params", "baseLog"), 7, "bootstrap key 0: its baseLog is "),
        (("lweBootstrapKeys", 0, "compression"), "none", "bootstrap key 0: its compression is seed, "),
        (("lweKeyswitchKeys", 0, "params", "outputLweDimension"), 1, "keyswitch key 0: its outputLweDimension is "),
        (("lweKeyswitchKeys", 0, "inputId"), 7, "keyswitch key 0: its inputId is "),
        (("packingKeyswitchKeys",), [{}], "packing keyswitch keys: the key has 0, the served circuit uses 1"),
    ],
)
def test_a_key_for_other_parameters_is_refused_naming_the_parameter(
    tree: dict[str, Any], path: tuple[str | int, ...], value: Any, message: str
) -> None:
    program = copy.deepcopy(tree["program"])
    place: Any = program["keyset"]
    for step in path[:-1]:
        place = place[step]
    place[path[-1]] = value
    with pytest.raises(BundleError) as refused:
        CircuitSpecs.from_program_info(program).check_evaluation_key(tree["key"])
    assert refused.value.code == "bad_key" and message in refused.value.problem


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("typeInfo", "lweCiphertext", "encryption", "lweDimension"), 1024, "its encryption.lweDimension is "),
        (("typeInfo", "lweCiphertext", "compression"), "none", "its compression is seed, "),
        (("rawInfo", "shape", "dimensions"), [1, 29, 3], "its rawInfo.shape is (1, 30, 3), "),
    ],
)
def test_a_ciphertext_for_another_input_is_refused_naming_the_field(
    tree: dict[str, Any], path: tuple[str, ...], value: Any, message: str
) -> None:
    program = copy.deepcopy(tree["program"])
    place: Any = program["circuits"][0]["inputs"][0]
    for step in path[:-1]:
        place = place[step]
    place[path[-1]] = value
    with pytest.raises(BundleError) as refused:
        CircuitSpecs.from_program_info(program).check_ciphertext(tree["ciphertext"], "shards[0].samples[0]")
    assert refused.value.code == "bad_ciphertext" and refused.value.field == "shards[0].samples[0]"
    assert message in refused.value.problem


def _mutated(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    mutable = bytearray(data)
    for offset, byte in edits:
        mutable[offset % len(mutable)] = byte
    return bytes(mutable[: len(mutable) - cut])


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 64),
)
def test_a_mutated_key_or_ciphertext_is_refused_or_passes_but_never_breaks_the_reader(
    tree: dict[str, Any], edits: list[tuple[int, int]], cut: int
) -> None:
    """Edits in the first KiB (the message's header and descriptions) and a cut end."""
    specs = CircuitSpecs.from_program_info(tree["program"])
    for check, data, code in (
        (specs.check_evaluation_key, _mutated(tree["key"], edits, cut), "bad_key"),
        (lambda d: specs.check_ciphertext(d, "q"), _mutated(tree["ciphertext"], edits, cut % 300), "bad_ciphertext"),
    ):
        try:
            check(data)
        except BundleError as error:
            assert error.code == code
