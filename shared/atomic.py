"""Atomic file writes: write to a temp file beside the target, fsync, rename. A crash mid-write
leaves the previous good file (or none), never a half-written one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it over `target`."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix + ".tmp",
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~umask_value())  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call write(temp_path), then move the result onto `target` atomically."""
    with atomic_path(target) as tmp:
        write(tmp)


def write_json_atomic(target: str | os.PathLike, obj: object) -> None:
    def dump(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")

    write_atomic(target, dump)


def umask_value() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
