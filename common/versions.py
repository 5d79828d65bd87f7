"""The versions record: which Python and concrete releases produced or consume an FHE artifact.

Keys and ciphertexts are only compatible between identical concrete-python releases, so every role
records what it runs and checks it against the record of the artifact it loads, before any FHE work.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
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

    def check_compatible(self, other: VersionsRecord, *, what: str) -> None:
        """Raise when ``other`` (the artifact's record) cannot be used by ``self`` (this process).

        concrete-python and concrete-ml must match exactly; Python only in major.minor, since the
        serialized circuits do not depend on the patch release.
        """
        problems = []
        if self.concrete_python != other.concrete_python:
            problems.append(f"concrete-python {other.concrete_python} (here {self.concrete_python})")
        if self.concrete_ml != other.concrete_ml:
            problems.append(f"concrete-ml {other.concrete_ml} (here {self.concrete_ml})")
        if self.python.split(".")[:2] != other.python.split(".")[:2]:
            problems.append(f"Python {other.python} (here {self.python})")
        if problems:
            raise VersionMismatchError(f"{what} was made with " + ", ".join(problems))
