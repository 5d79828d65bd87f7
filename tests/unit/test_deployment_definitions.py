"""The deployment's definitions: the ASL passes statelint, every template passes cfn-lint as its stack is given it
(the product's assembled from its files by concern, refusing a name declared twice), the product template and the ASL
agree on every substitution, what every function shares is stated once, the functions' package holds what the
handlers import (and no concrete-ml), and the dry run lists every resource."""

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


@pytest.mark.parametrize(
    "template",
    [templates.BOOTSTRAP, templates.DATA, templates.PRODUCT, templates.OWNER, templates.ENCLAVE],
    ids=lambda p: p.name,
)
def test_template_passes_cfn_lint_as_its_stack_is_given_it(template: Path, tmp_path: Path) -> None:
    given = tmp_path / template.name
    given.write_text(templates.body(template))
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(given)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_product_template_is_its_head_and_every_concern_gathered() -> None:
    concerns = {part.stem for part in templates.parts(templates.PRODUCT)}
    assert concerns == {"messaging", "functions", "workflow", "audit", "retraining", "sagemaker", "monitoring"}
    assembled = templates.source(templates.PRODUCT)
    by_file = [set(templates.source(part)["Resources"]) for part in templates.parts(templates.PRODUCT)]
    assert set(assembled["Resources"]) == set().union(*by_file) and sum(map(len, by_file)) == len(
        assembled["Resources"]
    )
    assert json.loads(templates.body(templates.PRODUCT)) == assembled
    assert (
        templates.parts(templates.BOOTSTRAP) == []
        and templates.body(templates.BOOTSTRAP) == templates.BOOTSTRAP.read_text()
    )


def _product_in(folder: Path, **parts: str) -> Path:
    folder.mkdir()
    head = folder / "product.yaml"
    head.write_text("Parameters:\n  Prefix: {Type: String}\nOutputs:\n  Queue: {Value: !Ref Queue}\n")
    (folder / "product").mkdir()
    for name, text in parts.items():
        (folder / "product" / f"{name}.yaml").write_text(text)
    return head


def test_assembly_refuses_a_name_declared_twice_and_a_section_that_is_the_heads(tmp_path: Path) -> None:
    queue = "Resources:\n  Queue: {Type: AWS::SQS::Queue}\n"
    head = _product_in(tmp_path / "twice", messaging=queue, workflow=queue)
    twice = "Resources Queue is declared in both product/messaging.yaml and product/workflow.yaml"
    with pytest.raises(templates.TemplateError, match=re.escape(twice)):
        templates.source(head)
    head = _product_in(tmp_path / "outputs", messaging=queue + "Outputs:\n  Other: {Value: x}\n")
    with pytest.raises(templates.TemplateError, match=re.escape("product/messaging.yaml declares Outputs")):
        templates.source(head)
    head = _product_in(tmp_path / "once", messaging=queue)
    assert templates.resources(head) == {"Queue": "AWS::SQS::Queue"}


def test_template_fills_every_placeholder_of_the_state_machine() -> None:
    placeholders = set(PLACEHOLDER.findall(templates.STATE_MACHINE.read_text()))
    machine = templates.load(templates.PRODUCT)["Resources"]["BatchStateMachine"]["Properties"]
    assert placeholders and placeholders == set(machine["DefinitionSubstitutions"])
    assert "arn:aws:lambda" not in templates.STATE_MACHINE.read_text(), "ARNs come from substitutions only"


def test_what_every_function_shares_is_stated_once() -> None:
    written = templates.source(templates.PRODUCT)
    shared = written["Globals"]["Function"]
    functions = {n: r for n, r in written["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    assert len(functions) == 10 and "AWS::Lambda::Function" not in {r["Type"] for r in written["Resources"].values()}
    for name, function in functions.items():
        repeated = set(function["Properties"]) & {"Runtime", "CodeUri", "Layers", "Tracing", "MemorySize"}
        assert not repeated, (name, repeated)
        assert "POWERTOOLS_LOG_LEVEL" not in function["Properties"].get("Environment", {}).get("Variables", {}), name
    # As deployed, each function has them, its own variables beside the shared one.
    processed = templates.load(templates.PRODUCT)["Resources"]
    for name in functions:
        properties = processed[name]["Properties"]
        assert processed[name]["Type"] == "AWS::Lambda::Function"
        assert properties["Runtime"] == shared["Runtime"] and properties["Layers"] == shared["Layers"], name
        assert properties["Code"] == {"S3Bucket": {"Ref": "ArtifactBucket"}, "S3Key": {"Ref": "FunctionsKey"}}, name
        assert properties["TracingConfig"] == {"Mode": "Active"}, name
        assert properties["Environment"]["Variables"]["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}, name
    assert "WORKFLOW_TABLE" in processed["StartFunction"]["Properties"]["Environment"]["Variables"]
    # A function's own reservation wins over the deployment's.
    assert processed["HeartbeatFunction"]["Properties"]["ReservedConcurrentExecutions"] == 1
    assert processed["StartFunction"]["Properties"]["ReservedConcurrentExecutions"] == {"Ref": "FunctionConcurrency"}


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
