"""The enclave's process: ``python -m containers.enclave --listen ADDRESS`` (``vsock:<cid>:<port>`` in a Nitro
enclave, ``unix:<path>`` on the local stack). Its NSM is ``FHE_NSM`` (``/dev/nsm`` by default)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from containers.enclave import channel
from containers.enclave.nsm import Nsm
from containers.enclave.server import EnclaveServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="vsock:<cid>:<port> or unix:<path>")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    listener = channel.listen(args.listen)
    # Where its code was loaded from: the image, not whatever else is on the machine.
    logging.getLogger("fhe.enclave").info("running %s, listening on %s", Path(__file__).parents[1], args.listen)
    EnclaveServer(Nsm()).serve(listener)


if __name__ == "__main__":
    main()
