"""Running an enclave on a machine without Nitro hardware, as ``nitro-cli run-enclave`` runs one: the image is
measured, an NSM is started for those measurements (the enclave cannot choose them), and the image's own entry
point is started as a process that reaches its NSM at ``nsm_socket``. The image here is a file Python runs (a zip
application); a vsock address becomes a Unix socket the caller names.

What the local runner does not give: the isolation of an enclave's memory and CPUs (the process is an ordinary one
of the same user), and a measured Python environment (only the image file is measured)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from aws_emulators.nitro.authority import AttestationAuthority
from aws_emulators.nitro.nsm import NsmServer, nsm_for_image

START_TIMEOUT_S = 60.0


class EnclaveRunner:
    """One enclave from ``image``, its sockets and log under ``folder``."""

    def __init__(self, image: Path, folder: Path, authority: AttestationAuthority) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.image = image
        self.folder = folder
        self.nsm_socket = folder / "nsm.sock"
        self.log = folder / "enclave.log"
        self.nsm = NsmServer(self.nsm_socket, nsm_for_image(image, authority))
        self.process: subprocess.Popen[bytes] | None = None
        self._serving = False

    @property
    def image_sha384(self) -> str:
        """PCR0, what ``nitro-cli describe-enclaves`` reports and a key policy pins."""
        return self.nsm.nsm.pcrs[0].hex()

    def start(self, command: list[str], environment: dict[str, str], ready: Path) -> None:
        """Start the NSM, then ``command`` (the image's entry point) with only ``environment``; wait until it has
        made ``ready`` (its listening socket)."""
        self.nsm.start()
        self._serving = True
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.folder,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
                self.stop()
                raise RuntimeError(f"the enclave did not start; its log ends:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._serving:
            self.nsm.shutdown()
            self._serving = False
        self.nsm.server_close()
