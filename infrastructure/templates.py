"""The deployment's CloudFormation templates and the state machine definition: the product template assembled from
its files by concern, the text a stack is given, the template as CloudFormation processes it (its SAM transform
applied), and a reader for the templates' short-form intrinsics (``!Ref``, ``!GetAtt``, ``!Sub``) as plain mappings.

A template is one file, or a head file with the files of its concerns in the folder of the same name beside it
(``product.yaml`` and ``product/*.yaml``). The head holds what the whole template shares (its transform, parameters,
SAM Globals, outputs); each concern's file holds resources (and conditions). Assembly only gathers them: a name
declared in two files is refused, naming both."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from common import aws

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = ROOT / "infrastructure" / "bootstrap.yaml"
DATA = ROOT / "infrastructure" / "data.yaml"
PRODUCT = ROOT / "infrastructure" / "product.yaml"
OWNER = ROOT / "infrastructure" / "owner.yaml"
ENCLAVE = ROOT / "infrastructure" / "enclave.yaml"
SERVED_VERSION = ROOT / "infrastructure" / "served_version.yaml"
STATE_MACHINE = ROOT / "statemachines" / "batch_inference.asl.json"

SAM_TRANSFORM = "AWS::Serverless-2016-10-31"
# What a concern's file may declare; everything else is the head's.
PART_SECTIONS = ("Resources", "Conditions")


class TemplateError(ValueError):
    """A template whose files cannot be assembled into one."""


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


def _read(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - a SafeLoader
    return loaded


def parts(template: Path) -> list[Path]:
    """The files of the template's concerns, in the folder named as the template beside it; none for one file."""
    folder = template.with_suffix("")
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def source(template: Path) -> dict[str, Any]:
    """The template as written: the head with every concern's sections gathered in, intrinsics in long form."""
    assembled = _read(template)
    declared_in = {
        (section, name): template.name
        for section, names in assembled.items()
        if isinstance(names, dict)
        for name in names
    }
    for part in parts(template):
        for section, names in _read(part).items():
            where = f"{template.with_suffix('').name}/{part.name}"
            if section not in PART_SECTIONS:
                raise TemplateError(f"{where} declares {section}: a concern's file holds {', '.join(PART_SECTIONS)}")
            for name, spec in names.items():
                if (section, name) in declared_in:
                    raise TemplateError(
                        f"{section} {name} is declared in both {declared_in[section, name]} and {where}"
                    )
                declared_in[section, name] = where
                assembled.setdefault(section, {})[name] = spec
    return assembled


def body(template: Path) -> str:
    """The text a stack is created or updated with: the file itself, or the assembled template as JSON."""
    return json.dumps(source(template), indent=1) if parts(template) else template.read_text()


def load(template: Path) -> dict[str, Any]:
    """The template as CloudFormation processes it, what a stack of it holds: assembled, with its SAM transform applied
    (each ``AWS::Serverless::Function`` an ``AWS::Lambda::Function`` of the same logical id, the Globals merged in)."""
    written = source(template)
    declared = written.get("Transform", [])
    if SAM_TRANSFORM not in (declared if isinstance(declared, list) else [declared]):
        return written
    # Parameters stay references: what SAM would resolve from values (an alias, a code hash) the templates do not use.
    translator = Translator(None, Parser(), boto_session=aws.session())
    processed: dict[str, Any] = translator.translate(copy.deepcopy(written), parameter_values={})
    translator.metrics.publish()  # SAM's own counters, which its offline publisher drops (else it warns of them)
    return processed


def resources(template: Path) -> dict[str, str]:
    """Logical id → type of what a stack of the template holds, in the template's order."""
    return {name: spec["Type"] for name, spec in load(template)["Resources"].items()}
