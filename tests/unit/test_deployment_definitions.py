"""The deployment's definitions: the ASL passes statelint, both templates pass cfn-lint, the product template and
the ASL agree on every substitution, the functions' package holds what the handlers import (and no concrete-ml),
and the dry run lists every resource."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from infrastructure import cli as fhe_deploy
from infrastructure import images, package, templates
from tests.declared import declared_resources

PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9]+)\}")


def _filled(definition: str) -> str:
    return PLACEHOLDER.sub(lambda m: f"arn:aws:lambda:us-east-1:123456789012:function:{m[1]}", definition)


def _statelint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "statelint", str(path)], capture_output=True, text=True)


def test_state_machine_passes_statelint(tmp_path: Path) -> None:
    path = tmp_path / "batch_inference.asl.json"
    path.write_text(_filled(templates.STATE_MACHINE.read_text()))
    result = _statelint(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_statelint_rejects_a_broken_definition(tmp_path: Path) -> None:
    definition = json.loads(_filled(templates.STATE_MACHINE.read_text()))
    del definition["States"]["Validate"]["Next"]  # a Task that neither ends nor goes on
    path = tmp_path / "broken.asl.json"
    path.write_text(json.dumps(definition))
    assert _statelint(path).returncode != 0


@pytest.mark.parametrize(
    "template", [templates.BOOTSTRAP, templates.DATA, templates.PRODUCT, templates.OWNER], ids=lambda p: p.name
)
def test_template_passes_cfn_lint(template: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(template)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_rejects_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(templates.PRODUCT.read_text().replace("!GetAtt ShardQueue.Arn", "!GetAtt NoSuchQueue.Arn", 1))
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(broken)], capture_output=True)
    assert result.returncode != 0


def test_template_fills_every_placeholder_of_the_state_machine() -> None:
    placeholders = set(PLACEHOLDER.findall(templates.STATE_MACHINE.read_text()))
    machine = templates.load(templates.PRODUCT)["Resources"]["BatchStateMachine"]["Properties"]
    assert placeholders and placeholders == set(machine["DefinitionSubstitutions"])
    assert "arn:aws:lambda" not in templates.STATE_MACHINE.read_text(), "ARNs come from substitutions only"


def test_every_function_has_a_reservation_and_a_handler_that_exists() -> None:
    resources = templates.load(templates.PRODUCT)["Resources"]
    functions = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::Lambda::Function"}
    # start, validate, invoke, notify, heartbeat, assemble, quarantine, record, retrain, reconcile
    assert len(functions) == 10
    roles = [properties["Role"]["Fn::GetAtt"][0] for properties in functions.values()]
    assert len(set(roles)) == len(roles), "each function has a role of its own"
    for name, properties in functions.items():
        assert properties.get("ReservedConcurrentExecutions") is not None, name
        module, _, attribute = properties["Handler"].rpartition(".")
        source = templates.ROOT / (module.replace(".", "/") + ".py")
        tree = ast.parse(source.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == attribute for n in tree.body), properties["Handler"]


def test_function_package_holds_the_handlers_and_no_fhe_code() -> None:
    with zipfile.ZipFile(io.BytesIO(package.functions_zip())) as archive:
        names = set(archive.namelist())
        sources = {name: archive.read(name).decode() for name in names if name.startswith("lambdas/")}
    assert {"lambdas/start.py", "common/bundle/manifest.py", "common/bundle/store.py"} <= names
    for name, source in sources.items():
        imported = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(str(node.module))
        assert not any(m.startswith(("concrete", "numpy", "sklearn", "torch")) for m in imported), (name, imported)
    assert package.functions_zip() == package.functions_zip(), "one source, one package (stable hash)"


def test_layer_carries_powertools_under_python() -> None:
    with zipfile.ZipFile(io.BytesIO(package.powertools_layer_zip())) as archive:
        names = archive.namelist()
    assert "python/aws_lambda_powertools/__init__.py" in names
    assert all(name.startswith("python/") and "__pycache__" not in name for name in names)


def test_dry_run_lists_every_resource(capsys: pytest.CaptureFixture[str]) -> None:
    fhe_deploy.main(["up", "--prefix", "acme", "--endpoint", "acme-inference", "--dry-run", "--json"])
    planned = json.loads(capsys.readouterr().out)
    bootstrap, data, product = planned["stacks"]
    assert bootstrap["resources"] == declared_resources(templates.BOOTSTRAP)
    assert data["resources"] == declared_resources(templates.DATA)
    assert product["resources"] == declared_resources(templates.PRODUCT)
    assert len(product["resources"]) > 40, "the product stack's roles, functions, queues, topics, state machine…"
    assert (bootstrap["name"], data["name"], product["name"]) == ("acme-bootstrap", "acme-data", "acme")
    assert product["parameters"]["EndpointName"] == "acme-inference"
    # Every parameter the template declares without a default is given.
    declared = templates.load(templates.PRODUCT)["Parameters"]
    assert {n for n, spec in declared.items() if "Default" not in spec} <= set(product["parameters"])
    assert set(product["parameters"]) <= set(declared)
    assert all(key.startswith("workflow/") for key in planned["uploads"])
    assert {role: image["build"] for role, image in planned["images"].items()} == {
        "training": False,
        "inference": False,
    }
    # Each image under its own content tag, recorded by the product stack.
    for role, image in planned["images"].items():
        tag = images.content_tag(role)
        assert image["uri"] == f"<bootstrap:{role.capitalize()}RepositoryUri>:{tag}"
        assert product["parameters"][f"{role.capitalize()}ImageTag"] == tag
    assert planned["pipeline"]["schedule"] == "rate(7 days)"


def test_dry_run_prints_one_line_per_resource(capsys: pytest.CaptureFixture[str]) -> None:
    fhe_deploy.main(["up", "--dry-run", "--schedule", "off"])
    text = capsys.readouterr().out
    for template in (templates.BOOTSTRAP, templates.DATA, templates.PRODUCT):
        for name, kind in declared_resources(template).items():
            assert re.search(rf"^  {re.escape(kind)} +{name}$", text, re.MULTILINE), name
    assert "retraining schedule: disabled" in text


def test_a_prefix_that_cannot_name_a_bucket_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for bad in ("Bad_Prefix", "9lives", "x", "a" * 22):
        with pytest.raises(SystemExit) as exited:
            fhe_deploy.main(["up", "--prefix", bad, "--dry-run"])
        assert exited.value.code == 2
        assert "lowercase letters, digits or hyphens" in capsys.readouterr().err
    declared = templates.load(templates.PRODUCT)["Parameters"]["Prefix"]["AllowedPattern"]
    assert declared == fhe_deploy.PREFIX_PATTERN.pattern, "the CLI checks what the templates allow"


def test_an_owner_is_named_as_the_templates_allow_and_refused_clearly_otherwise(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before any AWS call: a name that cannot name the owner's role and folders, or a missing name or action."""
    from common.bundle.schema import OWNER_PATTERN

    for argv, problem in (
        (["owner", "add", "Clinic_A"], "lowercase letters, digits or inner hyphens"),
        (["owner", "add", "a-"], "lowercase letters, digits or inner hyphens"),
        (["owner", "remove", "a" * 33], "1 to 32"),
        (["owner", "add"], "takes the owner's name"),
        (["owner"], "fhe-deploy owner add|remove NAME"),
    ):
        with pytest.raises(SystemExit) as exited:
            fhe_deploy.main(argv)
        assert problem in str(exited.value.code), (argv, exited.value.code)
    declared = templates.load(templates.OWNER)["Parameters"]["Owner"]["AllowedPattern"]
    assert declared == f"^{OWNER_PATTERN}$", "the CLI checks what the owner template allows"
