"""Cache entries on disk: a folder of files written into a partial sibling, vouched for by checksums, renamed
into place; shared by the layer store and the fine-tuning store.

An entry ``<key>/`` holds its files and ``checksums.json`` (sha256 and size of each), written last and
atomically: an entry without it, or whose files do not match it, is not used (``check_entry`` says why). It is
written into ``<key>.partial-<host>-<pid>`` and renamed into place, so a process killed while writing leaves no
folder that looks complete; partial folders of dead processes on this host are removed by the next writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pipeline.process.pids import pid_alive

CHECKSUMS_FILE = "checksums.json"  # written last: its presence and contents vouch for the entry's files
PARTIAL = ".partial-"  # <key>.partial-<host>-<pid>: an entry being written
REPLACED = ".replaced-"  # <key>.replaced-<host>-<pid>: an entry being swapped out for a fresh one

T = TypeVar("T")


def check_entry(directory: Path, files: Sequence[str]) -> str | None:
    """None for a sound entry, else what is wrong with it (missing, incomplete, truncated or altered file)."""
    if not directory.is_dir():
        return "no such entry"
    try:
        recorded = json.loads((directory / CHECKSUMS_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"{CHECKSUMS_FILE} missing (the entry was never finished)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{CHECKSUMS_FILE} unreadable ({type(error).__name__})"
    for name in files:
        path, expected = directory / name, recorded.get(name) if isinstance(recorded, dict) else None
        if not isinstance(expected, dict) or not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != expected.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, {expected.get('bytes')} recorded (truncated or replaced)"
        if file_sha256(path) != expected.get("sha256"):
            return f"{name} does not match its recorded sha256 (altered)"
    return None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path, files: Sequence[str], version: int) -> None:
    """Record sha256 and size of each of ``files`` of the entry, atomically (temporary file, then rename)."""
    recorded = {name: {"sha256": file_sha256(directory / name), "bytes": (directory / name).stat().st_size}
                for name in files}
    tmp = directory / f".{CHECKSUMS_FILE}.tmp"
    with tmp.open("w") as f:
        json.dump({"version": version, "files": recorded}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / CHECKSUMS_FILE)


def write_entry(directory: Path, fill: Callable[[Path], T], files: Sequence[str], *, version: int,
                replace: bool = False) -> T:
    """Write the entry ``fill(partial)`` fills to ``directory`` atomically and return what ``fill`` returned.

    An existing sound entry (a concurrent process stored the same key first) is kept unless ``replace``; an
    unsound one is always replaced. On any error the partial folder is removed and the error raised.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(directory)
    partial = sibling(directory, PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)  # a dead process that had our pid
    partial.mkdir()
    try:
        out = fill(partial)
        write_checksums(partial, files, version)
        _install(partial, directory, files, replace)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def sibling(directory: Path, kind: str, host: str | None = None, pid: int | None = None) -> Path:
    """``<key><kind><host>-<pid>`` beside the entry (``PARTIAL`` or ``REPLACED``); this process by default."""
    return directory.with_name(f"{directory.name}{kind}{host or socket.gethostname()}-{pid or os.getpid()}")


def _install(partial: Path, directory: Path, files: Sequence[str], replace: bool) -> None:
    """Rename ``partial`` to ``directory``, moving an existing entry aside first when it must go."""
    if directory.exists() and (replace or check_entry(directory, files) is not None):
        old = sibling(directory, REPLACED)
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):  # a concurrent process moved it first
            directory.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        partial.rename(directory)
    except OSError:
        if check_entry(directory, files) is not None:
            raise
        shutil.rmtree(partial)  # a concurrent process stored the same key first; same key, same contents


def _remove_stale_partials(directory: Path) -> None:
    """Delete partial folders of ``directory`` left by killed processes on this host (not live ones)."""
    for kind in (PARTIAL, REPLACED):
        prefix = f"{directory.name}{kind}{socket.gethostname()}-"
        for stale in directory.parent.glob(f"{prefix}*"):
            pid = stale.name.removeprefix(prefix)
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
