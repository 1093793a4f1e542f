"""One run per output folder: an exclusive lock on ``<folder>/.lock`` held while a run writes there.

The lock is a kernel file lock (``fcntl.flock``), so it dies with its process: a lock file left by a
killed run is not held by anyone and the next run takes it over, atomically, even when two start at
once. The file records the holder's process id and host for the message of a run that is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ran_keras.errors import ConfigError

LOCK_NAME = ".lock"


class FolderLock:
    """``with FolderLock(folder, flag="--model_dir"):`` - refuses (ConfigError) while another process holds it."""

    def __init__(self, folder, flag: str = "--model_dir", log: Optional[Callable[[str], None]] = None):
        self.folder, self.flag, self.log = Path(folder), flag, log
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None
        self.previous: Dict[str, Any] = {}

    def acquire(self) -> "FolderLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"{self.flag}={self.folder}: cannot create its lock file {self.path} "
                              f"({err.strerror}); give a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd)
            os.close(fd)
            raise ConfigError(f"{self.flag}={self.folder} is in use by another run (process {holder.get('pid', '?')} "
                              f"on {holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it to "
                              f"finish or stop it, or use another {self.flag}") from None
        self.previous = _read(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode() + b"\n", 0)
        self._fd = fd
        if self.previous.get("pid") and self.log:
            self.log(f"took over the lock of {self.folder} left by process {self.previous['pid']} on "
                     f"{self.previous.get('host', '?')}, which no longer runs")
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)   # closing drops the flock; the empty file stays (unlinking it would race)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> Dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
