"""Writing a report (or a baseline) to the path the user gave, the way a shell redirect would.

- ``-`` is stdout (the caller writes there; `is_stdout`).
- ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N`` and ``/proc/self/fd/N`` (also reached through a
  symlink) are the descriptors the process inherited: the text goes to descriptor N as it is, at
  its position, so a pipe reads it and a ``>> log`` keeps appending. Reopening the path instead
  would truncate a file the shell opened for appending.
- A path that exists and is not a regular file once symlinks are followed (a FIFO, a device such as
  /dev/null or a terminal) is opened and written through: there is no file to replace.
- A regular file, or a path that does not exist yet, is replaced atomically: a temporary file in the
  folder of the real file, written, flushed and fsynced, then renamed over it, so a reader never
  sees half a report and a failed write leaves the old file as it was. A symlink is followed: the
  link stays and its target gets the report. A new file gets the mode the umask gives (0666 minus
  the umask: 0644 under umask 022), as open() would; a replaced file keeps its mode.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from pathlib import Path

from gradcheck_cli.errors import UserError

STDOUT = "-"
INHERITED = re.compile(r"^/(?:dev/(?:std(?P<std>out|err)|fd/(?P<fd>\d+))|proc/self/fd/(?P<proc>\d+))$")
MAX_LINKS = 40
"""Symlinks followed at most when looking for an inherited descriptor (Linux's own limit)."""
TEMPORARY_TRIES = 100
FOLDER_ERRORS = (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS)
"""Errors a missing or read-only folder gives; others (a full disk, a device refusing) speak alone."""


def is_stdout(path: Path | None) -> bool:
    return path is not None and str(path) == STDOUT


def write_output(path: Path, text: str | bytes) -> None:
    """Write ``text`` (str as UTF-8, or bytes: an image) to ``path`` as the module docstring says;
    UserError naming the path if it fails."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        descriptor = inherited_descriptor(str(path))
        if descriptor is not None:
            _write_descriptor(descriptor, data)
            return
        real = os.path.realpath(path)
        try:
            existing = os.stat(real)
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            with open(real, "wb") as handle:  # a FIFO or a device: write through it
                handle.write(data)
            return
        _replace_atomically(Path(real), data, existing)
    except OSError as exc:
        hint = "; check that the folder exists and is writable" if exc.errno in FOLDER_ERRORS else ""
        raise UserError(f"cannot write {path}: {exc.strerror or exc}{hint}") from None


def inherited_descriptor(path: str) -> int | None:
    """N when ``path`` is (or links to) /dev/stdout, /dev/stderr, /dev/fd/N or /proc/self/fd/N."""
    current = os.path.abspath(path)
    for _ in range(MAX_LINKS):
        match = INHERITED.match(current)
        if match:
            if match["std"]:
                return 1 if match["std"] == "out" else 2
            return int(match["fd"] or match["proc"])
        if not os.path.islink(current):
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return None


def _write_descriptor(descriptor: int, data: bytes) -> None:
    for stream in (sys.stdout, sys.stderr):  # what Python buffered comes first
        if stream is not None:
            stream.flush()
    while data:
        data = data[os.write(descriptor, data):]


def _replace_atomically(path: Path, data: bytes, existing: os.stat_result | None) -> None:
    handle, temporary = _temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            if existing is not None:
                os.fchmod(stream.fileno(), stat.S_IMODE(existing.st_mode))
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _temporary_beside(path: Path) -> tuple[int, Path]:
    """A new file next to ``path``, created with 0666 so that the umask decides its mode (tempfile
    would make it 0600, and the report would end up readable by its owner only)."""
    for attempt in range(TEMPORARY_TRIES):
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{attempt}.tmp")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"{TEMPORARY_TRIES} temporary files .{path.name}.*.tmp are in the way")
