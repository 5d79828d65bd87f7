"""What the CloudFormation templates declare, read from their own text: a source independent of
``infrastructure.templates``, which the deployment plans with."""

from __future__ import annotations

import re
from pathlib import Path

# What SAM makes of a type: a function with no events and no alias is one Lambda function of the same logical id.
_PROCESSED = {"AWS::Serverless::Function": "AWS::Lambda::Function"}


def declared_resources(template: Path) -> dict[str, str]:
    """Logical id → type of what a stack of the template holds, read from the text of its files (the template, and
    the files of its concerns in the folder of the same name beside it): a source independent of
    ``templates.resources``, which the plan is made with."""
    declared: dict[str, str] = {}
    for path in (template, *sorted(template.with_suffix("").glob("*.yaml"))):
        section = re.search(r"^Resources:\n(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S)
        if section:
            found = re.findall(r"^  ([A-Za-z0-9]+):[^\n]*\n(?:(?:    .*|\s*)\n)*?    Type: (\S+)", section[1], re.M)
            assert not set(dict(found)) & set(declared), f"{path.name} declares a resource again"
            declared.update(found)
    assert declared, f"{template.name} declares no resources"
    return {name: _PROCESSED.get(kind, kind) for name, kind in declared.items()}
