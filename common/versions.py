"""The versions record: which Python and concrete releases produced or consume an FHE artifact.

Keys and ciphertexts are only compatible between identical concrete-python releases, so every role
records what it runs and checks it against the record of the artifact it loads, before any FHE work.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from typing import Any


class VersionMismatchError(RuntimeError):
    """An FHE artifact was produced by other concrete releases than this process runs."""


@dataclass(frozen=True)
class VersionsRecord:
    python: str
    concrete_python: str
    concrete_ml: str

    @classmethod
    def current(cls) -> VersionsRecord:
        return cls(
            python=platform.python_version(),
            concrete_python=metadata.version("concrete-python"),
            concrete_ml=metadata.version("concrete-ml"),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionsRecord:
        try:
            return cls(
                python=str(data["python"]),
                concrete_python=str(data["concrete_python"]),
                concrete_ml=str(data["concrete_ml"]),
            )
        except KeyError as missing:
            raise VersionMismatchError(f"versions record lacks the field {missing}") from None

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def mismatches(self, other: VersionsRecord) -> list[tuple[str, str, str]]:
        """``(component, other's release, this release)`` for each component that makes ``other`` unusable here.

        concrete-python and concrete-ml must match exactly; Python only in major.minor, since the serialized
        circuits do not depend on the patch release.
        """
        found = []
        for name in ("concrete_python", "concrete_ml"):
            if getattr(self, name) != getattr(other, name):
                found.append((name, getattr(other, name), getattr(self, name)))
        if self.python.split(".")[:2] != other.python.split(".")[:2]:
            found.append(("python", other.python, self.python))
        return found

    def check_compatible(self, other: VersionsRecord, *, what: str) -> None:
        """Raise when ``other`` (the artifact's record) cannot be used by ``self`` (this process)."""
        problems = [f"{LABELS[name]} {theirs} (here {ours})" for name, theirs, ours in self.mismatches(other)]
        if problems:
            raise VersionMismatchError(f"{what} was made with " + ", ".join(problems))


VERSION_FIELDS = tuple(field.name for field in fields(VersionsRecord))  # as the manifest's "versions" names them
LABELS = {"python": "Python", "concrete_python": "concrete-python", "concrete_ml": "concrete-ml"}
