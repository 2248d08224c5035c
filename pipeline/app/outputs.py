"""Outputs that appear whole or not at all, and a ``--force`` that replaces the one output and nothing else.

``check_target`` refuses, before any model loads, every ``--out`` whose replacement could destroy something
the command did not write: the working directory or a folder above it, a directory where a file goes, a
folder holding files other than an encoder's own two, the input itself (compared by inode, through links).
``replaced_whole`` then writes beside the target under a hidden temporary name in the same folder, syncs it
and renames it into place; on any error or interruption (SIGINT/SIGTERM arrive as KeyboardInterrupt) the
temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipeline.data.links import check_no_loop
from pipeline.errors import InputError

ENCODER_FILES = ("config.json", "model.safetensors")  # what a safetensors export (StackedEncoder.save) writes


def resolved(path: Path, what: str = "--out") -> Path:
    """``path`` made absolute with links followed; InputError for a symbolic link loop."""
    check_no_loop(path, what)
    return Path(os.path.realpath(path))


def check_target(out: Path, *, force: bool, folder: bool = False, inputs: Sequence[Path] = ()) -> None:
    """InputError unless ``out`` may be (re)written: see the module docstring. ``folder``: the output is a
    directory of ``ENCODER_FILES`` (a safetensors export) rather than one file."""
    from pipeline.tracking.reachable import unwritable

    target = resolved(out)
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise InputError(f"--out {out}: is the working directory{'' if target == here else ' or a folder above it'}; "
                         f"give a new {'folder' if folder else 'file'} name")
    for given in inputs:
        if _same(target, given):
            raise InputError(f"--out {out}: is the input {given} (or a file in it); write to another path: "
                             "the input is read while the output is written")
    if os.path.lexists(out):
        _check_existing(out, target, force, folder)
    blocked = unwritable(target.parent)
    if blocked is not None:
        raise InputError(f"{blocked}: cannot be written, so {out} cannot be created; choose another --out")


def _check_existing(out: Path, target: Path, force: bool, folder: bool) -> None:
    if folder and os.path.islink(out):
        raise InputError(f"--out {out}: is a symbolic link; give the folder itself, or another --out")
    if folder and not target.is_dir():
        raise InputError(f"--out {out}: is a file, and safetensors writes a folder; choose another --out")
    if not folder and target.is_dir():
        raise InputError(f"--out {out}: is a directory; give a file path (--force replaces one file, never a "
                         "directory)")
    if not force:
        raise InputError(f"{out}: already exists; pass --force to overwrite it, or choose another --out")
    if folder:
        others = sorted(p.name for p in target.iterdir() if p.name not in ENCODER_FILES)
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise InputError(f"--out {out}: holds other files ({shown}); --force replaces only an earlier "
                             f"export's folder ({' + '.join(ENCODER_FILES)}): choose another --out")
    elif not os.access(target, os.W_OK):
        raise InputError(f"{out}: exists and is read-only; make it writable or choose another --out")


def _same(target: Path, given: Path) -> bool:
    """True when ``target`` is ``given`` (same inode, through links) or an existing file inside folder ``given``."""
    source = Path(os.path.realpath(given))
    try:
        if target == source or (os.path.exists(target) and os.path.samefile(target, source)):
            return True
    except OSError:
        return False
    return source.is_dir() and source in target.parents and os.path.lexists(target)


def temporary_name(out: Path) -> Path:
    """The hidden sibling a command writes before renaming it to ``out``: same folder, so the rename is atomic."""
    return out.with_name(f".{out.stem}.{os.getpid()}.partial{out.suffix}")  # the suffix names the format


@contextmanager
def replaced_whole(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``out`` to write (a file, or a folder of files); when the block ends
    normally, sync it and rename it to ``out``; otherwise remove it and leave ``out`` untouched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_name(out)
    _remove(partial)
    try:
        yield partial
        _sync(partial)
        if partial.is_dir() and out.is_dir():
            _swap_folder(partial, out)
        else:
            os.replace(partial, out)
        _sync_folder(out.parent)
    finally:
        _remove(partial)


def _swap_folder(partial: Path, out: Path) -> None:
    """Replace folder ``out`` (checked: only ENCODER_FILES) by ``partial``; the old one is moved aside first."""
    old = out.with_name(f".{out.name}.{os.getpid()}.replaced")
    os.replace(out, old)
    try:
        os.replace(partial, out)
    except BaseException:
        os.replace(old, out)
        raise
    for name in ENCODER_FILES:
        (old / name).unlink(missing_ok=True)
    old.rmdir()


def _sync(path: Path) -> None:
    for file in ([p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]):
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    if path.is_dir():
        _sync_folder(path)


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(descriptor)


def _remove(partial: Path) -> None:
    """Remove our own temporary file or folder (nothing else carries its name)."""
    if partial.is_dir() and not partial.is_symlink():
        shutil.rmtree(partial, ignore_errors=True)
    elif os.path.lexists(partial):
        partial.unlink(missing_ok=True)
