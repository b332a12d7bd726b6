"""Paths inside a worker's sandbox root, refusing every way out.

A task names places by a relative path (untrusted input). Such a path may not
be absolute nor contain ``..``, and it is walked one directory at a time with
``O_NOFOLLOW`` from an open descriptor of the root, so no component can be a
symbolic link: a link inside the sandbox that points out of it (or anywhere)
is refused rather than followed. Files are written atomically: into a hidden
temporary file in the target directory, renamed over the name on success.
Directories are made 0700 and files 0600 (the worker's alone); a root that is
itself a symbolic link, or another user's, is refused. ``open_regular`` opens a file for reading
the same way, without blocking (a FIFO would wait for a writer) and only if
it is a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

MAX_PATH = 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_MODE = 0o700
FILE_MODE = 0o600


class PathError(ValueError):
    """A path that is malformed or leaves the sandbox."""


def parts_of(relative: object, what: str = "path") -> list[str]:
    """The components of a safe relative path ('' and '.' dropped)."""
    if not isinstance(relative, str) or not relative.strip():
        raise PathError(f"{what} must be a non-empty relative path")
    if len(relative) > MAX_PATH or "\0" in relative:
        raise PathError(f"{what} is too long or contains a NUL byte")
    if relative.startswith(("/", "\\")) or os.path.isabs(relative):
        raise PathError(f"{what} {relative!r} is absolute; give a path relative to the sandbox")
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathError(f"{what} {relative!r} contains '..' and would escape the sandbox")
    if not parts:
        raise PathError(f"{what} {relative!r} names the sandbox itself")
    return parts


def _open_dir(parent_fd: int, name: str, shown: str, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise PathError(f"directory {shown!r} does not exist") from None
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
        return _open_dir(parent_fd, name, shown, create=False)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            raise PathError(f"{shown!r} is a symbolic link; links are not followed") from None
        raise PathError(f"{shown!r} is not a directory") from None


def _open_root(root: Path, create: bool) -> int:
    """A descriptor of ``root`` (made 0700 if ``create``); PathError if it is a link."""
    if create:
        with contextlib.suppress(FileExistsError):
            root.mkdir(DIR_MODE, parents=True)
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise PathError(f"{root} does not exist") from None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if root.is_symlink():
            raise PathError(f"{root} is a symbolic link; refusing to use it as a root") from None
        raise PathError(f"{root} is not a directory") from None
    if create:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            os.close(fd)
            raise PathError(f"{root} belongs to another user; refusing to use it as a root")
        if info.st_mode & 0o077:
            os.fchmod(fd, DIR_MODE)  # made before directories were private
    return fd


@contextlib.contextmanager
def open_dir(root: Path, parts: list[str], create: bool = True) -> Iterator[int]:
    """A descriptor of the directory ``root/parts...``, made if ``create``; closed on exit.
    ``root`` must exist unless ``create``."""
    fd = _open_root(root, create)
    try:
        for i, name in enumerate(parts):
            child = _open_dir(fd, name, "/".join(parts[: i + 1]), create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def make_dirs(root: Path, relative: str, what: str = "directory") -> Path:
    """Create ``root/relative`` (and parents) as real directories; return its path."""
    parts = parts_of(relative, what)
    with open_dir(root, parts, create=True):
        pass
    return root.joinpath(*parts)


@contextlib.contextmanager
def atomic_file(root: Path, relative: str, what: str = "destination") -> Iterator[BinaryIO]:
    """Write ``root/relative`` atomically; raising inside the block leaves nothing behind."""
    parts = parts_of(relative, what)
    with open_dir(root, parts[:-1], create=True) as dir_fd:
        leaf = parts[-1]
        if _is_dir(leaf, dir_fd):
            raise PathError(f"{what} {relative!r} is a directory")
        temp = f".{leaf}.{uuid.uuid4().hex}.part"
        fd = os.open(
            temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE, dir_fd=dir_fd
        )
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.rename(temp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise


def _is_dir(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def open_regular(root: Path, parts: list[str], shown: str) -> int:
    """A read descriptor of the regular file ``root/parts...`` (no link followed, no wait
    for a FIFO's writer); PathError naming ``shown`` for anything else."""
    with open_dir(root, parts[:-1], create=False) as dir_fd:
        try:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise PathError(f"{shown} does not exist") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathError(f"{shown} is a symbolic link; links are not followed") from None
            if e.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
                raise PathError(f"{shown} is not a regular file") from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PathError(f"{shown} is not a regular file")
    os.set_blocking(fd, True)
    return fd
