"""The enclave image, built reproducibly: the enclave application as one zip application (``enclave.pyz``) whose
bytes depend on its sources only (entries sorted, timestamps and permissions fixed), so the same sources always
give the same measurement. On AWS ``nitro-cli build-enclave`` packs it with its Python environment into the EIF; on
the local stack the enclave runner measures this file and runs it.

    python -m containers.enclave.image OUT.pyz

Its measurement is read where AWS reads it, not computed here: ``nitro-cli describe-eif`` for the EIF, the local
enclave runner (``aws_emulators.nitro``) for this file."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The enclave application's import closure within the product (its tests run the image, so a missing module fails).
SOURCES = (
    "common/__init__.py",
    "common/artifacts.py",
    "common/enclave_model.py",
    "common/s3uri.py",
    "common/bundle/__init__.py",
    "common/bundle/schema.py",
    "common/bundle/binding.py",
    "common/bundle/enclave_crypto.py",
    "common/bundle/generation.py",
    "common/language_model.py",
    "containers/__init__.py",
    "containers/enclave/__init__.py",
    "containers/enclave/__main__.py",
    "containers/enclave/application.py",
    "containers/enclave/channel.py",
    "containers/enclave/key_release.py",
    "containers/enclave/language_model.py",
    "containers/enclave/models.py",
    "containers/enclave/nsm.py",
    "containers/enclave/server.py",
)
ENTRY = b"from containers.enclave.__main__ import main\n\nmain()\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def build_image(out: Path, root: Path = ROOT) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as archive:
        for name in sorted(SOURCES):
            archive.writestr(_entry(name), (root / name).read_bytes())
        archive.writestr(_entry("__main__.py"), ENTRY)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(build_image(args.out))


if __name__ == "__main__":
    main()
