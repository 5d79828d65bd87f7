"""Process environment changes that last only as long as a block: what is set and unset inside is as it was
after it, whatever happens inside."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def scoped_environment(set_to: Mapping[str, str], unset: Iterable[str] = ()) -> Iterator[None]:
    """Within: ``set_to`` set and ``unset`` removed from ``os.environ``; afterwards every one of them as before."""
    removed = list(unset)
    saved = {name: os.environ.get(name) for name in (*set_to, *removed)}
    for name in removed:
        os.environ.pop(name, None)
    os.environ.update(set_to)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
