"""Container entry point: ``python -m containers.training {preprocess|train|evaluate} [options]``.

SageMaker starts a training job as ``<entrypoint> train``; processing steps name their command explicitly.
"""

from __future__ import annotations

import sys

COMMANDS = ("preprocess", "train", "evaluate")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m containers.training {{{'|'.join(COMMANDS)}}} [options]", file=sys.stderr)
        raise SystemExit(2)
    command, rest = args[0], args[1:]
    if command == "preprocess":
        from containers.training import preprocess

        preprocess.main(rest)
    elif command == "train":
        from containers.training import train

        train.main(rest)
    else:
        from containers.training import evaluate

        evaluate.main(rest)


if __name__ == "__main__":
    main()
