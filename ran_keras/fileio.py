"""Atomic file output: write to a temporary file next to the target, then rename. JSON is always
written strictly (no NaN/Infinity, which are not JSON)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from ran_keras.errors import RanError

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On any exception the temporary file (or folder) is removed and ``path`` is left as it was.
    ``suffix`` lets writers that dispatch on the extension (``model.save``) see the right one;
    it defaults to the target's own suffix.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix, dir=path.parent)
    except OSError as err:  # name the file asked for, not a temporary one
        raise type(err)(err.errno, f"cannot write {str(path)!r} ({err.strerror or err})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


class OutputPathError(RanError):
    """An output path that cannot be written (checked before any work starts)."""


def check_output_file(path: PathLike, flag: str) -> Path:
    """Fail now, naming ``flag``, when ``path`` cannot be written: it is a folder, or its folder
    (or, when missing, the nearest existing parent) is not a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} is a folder; expected a file path")
    _check_folder(path.parent, flag, path)
    return path


def check_output_dir(path: PathLike, flag: str) -> Path:
    """Fail now, naming ``flag``, when ``path`` cannot be an output folder: it is a file, or it (or
    the nearest existing parent, when it does not exist yet) is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} is a file; expected a folder (it is created if missing)")
    _check_folder(path, flag, path)
    return path


def _check_folder(folder: Path, flag: str, target: Path) -> None:
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{flag} {str(target)!r}: {str(existing)!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ran-write-check.", dir=existing)
    except OSError as err:
        raise OutputPathError(f"{flag} {str(target)!r}: cannot write in {str(existing)!r} "
                              f"({err.strerror or err}); choose a writable location") from None
    os.close(fd)
    os.unlink(probe)


class NonFiniteJSONError(RanError, ValueError):
    """A value to be written as JSON holds NaN or Infinity, which JSON cannot represent."""


def json_text(data: Any, indent: Optional[int] = 1, what: str = "the data", sort_keys: bool = False) -> str:
    """``data`` as strict JSON text (a trailing newline); NonFiniteJSONError naming ``what`` on NaN/Inf."""
    try:
        return json.dumps(data, indent=indent, allow_nan=False, sort_keys=sort_keys) + "\n"
    except ValueError:
        raise NonFiniteJSONError(f"{what} holds a non-finite number (NaN or Infinity), which JSON cannot hold; "
                                 f"nothing was written: {_nonfinite_keys(data)}") from None


def _nonfinite_keys(data: Any, prefix: str = "") -> str:
    """The paths of the NaN/Inf values in ``data`` (for the message), e.g. ``final.eval_loss=nan``."""
    if isinstance(data, float):
        return "" if data == data and abs(data) != float("inf") else f"{prefix or 'value'}={data}"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    found = [_nonfinite_keys(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in items]
    return ", ".join(f for f in found if f)


def write_json(path: PathLike, data: Any, indent: Optional[int] = 1) -> Path:
    """Write ``data`` to ``path`` as strict JSON, atomically (refused before writing if it holds NaN/Inf)."""
    return write_text(path, json_text(data, indent, what=str(path)))
