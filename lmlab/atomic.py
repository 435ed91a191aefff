"""Write-then-rename, so a reader (a resumed run, a parallel sweep job) never sees half a file;
and a lock file, so parallel jobs build a shared file once instead of each building it."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path):
    """Yields a temporary path beside `path`; on success it is fsynced and renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def file_lock(path: Path):
    """Holds an exclusive lock on `path` (created if absent); a second holder waits. The kernel
    drops the lock when its process dies, so a killed job never leaves it stuck."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
