"""The deployment's CloudFormation templates and the state machine definition, and a reader for the templates'
short-form intrinsics (``!Ref``, ``!GetAtt``, ``!Sub``) as plain mappings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = ROOT / "infrastructure" / "bootstrap.yaml"
DATA = ROOT / "infrastructure" / "data.yaml"
PRODUCT = ROOT / "infrastructure" / "product.yaml"
OWNER = ROOT / "infrastructure" / "owner.yaml"
STATE_MACHINE = ROOT / "statemachines" / "batch_inference.asl.json"


class _CfnLoader(yaml.SafeLoader):
    """A SafeLoader that reads ``!Name value`` as ``{"Fn::Name": value}`` (``!Ref`` as ``{"Ref": value}``)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(None, None, f"unexpected node under !{suffix}", node.start_mark)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - a SafeLoader
    return loaded


def resources(path: Path) -> dict[str, str]:
    """Logical id → resource type, in the template's order."""
    return {name: spec["Type"] for name, spec in load(path)["Resources"].items()}
