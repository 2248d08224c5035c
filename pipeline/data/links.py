"""Paths that cannot be looked at: symbolic link loops (pathlib reads one as a missing file) and names too long for
the file system (pathlib raises), named before anything else trips over them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pipeline.errors import InputError


def check_no_loop(path: Path, what: str) -> None:
    """InputError when ``path`` (or a folder on the way) is a symbolic link loop; any other problem is left to
    the caller, which names it better (missing, a directory, ...)."""
    named = f"{what}{path}" if what.endswith("=") else f"{what} {path}"  # data.source=x.npy, config file x.yaml
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputError(f"{named}: is a symbolic link loop (too many levels of links); remove the "
                             "link or choose another path") from None
        if error.errno == errno.ENAMETOOLONG:
            raise InputError(f"{named}: the name is too long for the file system; choose a shorter "
                             "path") from None
