"""A Python base image made without a registry, for machines that cannot pull the official one.

The Dockerfiles' default base is the official Python image the client runs (``python:3.11.7-slim-bookworm``).
Where no registry serves it (CI here, air-gapped build hosts), this makes its stand-in from Debian's own
packages: ``debootstrap`` of the same Debian release with its ``python3`` (the same Python minor release, which
is what the versions check compares), a virtual environment at ``/opt/python`` whose ``bin`` leads ``PATH`` (a
symlinked ``python`` would not see the venv's packages), imported into the engine's storage as an image.

    python -m local.base_image [--engine podman] [--image localhost/fhe-python-base:3.11-bookworm]

Made once: an image already there is reused, so the layers built on it stay cached.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from infrastructure.images import ContainerEngine, ImageError, print_progress, run_command

BASE_IMAGE = "localhost/fhe-python-base:3.11-bookworm"
SUITE = "bookworm"  # the Debian release of the official python:3.11.7-slim-bookworm
MIRROR = "http://deb.debian.org/debian"
VENV = "/opt/python"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def ensure_base_image(engine: ContainerEngine, image: str = BASE_IMAGE, *, mirror: str = MIRROR) -> str:
    """The base image's reference, made now unless the engine already has it."""
    if engine.has_image(image):
        return image
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageError("making the base image needs debootstrap (Debian package `debootstrap`)")
    with tempfile.TemporaryDirectory(prefix="fhe-base-") as folder:
        root = Path(folder) / "root"
        print(f"making {image}: debootstrap {SUITE} with {', '.join(PACKAGES)}…", file=sys.stderr, flush=True)
        run_command(
            [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror],
            print_progress,
        )
        run_command(["chroot", str(root), "python3", "-m", "venv", VENV], print_progress)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        archive = Path(folder) / "root.tar"
        run_command(["tar", "-C", str(root), "-cf", str(archive), "."], print_progress)
        engine.import_image(archive, image, changes=[f"ENV PATH={PATH}", 'CMD ["python3"]'])
    return image


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local.base_image", description=__doc__)
    parser.add_argument("--engine", default="auto", help="docker, podman or auto (the first that works)")
    parser.add_argument("--image", default=BASE_IMAGE)
    parser.add_argument("--mirror", default=MIRROR, help="the Debian mirror debootstrap reads")
    args = parser.parse_args(argv)
    try:
        print(ensure_base_image(ContainerEngine.find(args.engine), args.image, mirror=args.mirror))
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
