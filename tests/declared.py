"""What the CloudFormation templates declare, read from their own text: a source independent of
``infrastructure.templates``, which the deployment plans with."""

from __future__ import annotations

import re
from pathlib import Path


def declared_resources(template: Path) -> dict[str, str]:
    """Logical id → type, read from the template's own text: a source independent of ``templates.resources``,
    which the plan is made with."""
    section = re.search(r"^Resources:\n(.*?)(?=^\S|\Z)", template.read_text(), re.M | re.S)
    assert section, f"{template.name} has no Resources section"
    return dict(re.findall(r"^  ([A-Za-z0-9]+):[^\n]*\n(?:(?:    .*|\s*)\n)*?    Type: (\S+)", section[1], re.M))
