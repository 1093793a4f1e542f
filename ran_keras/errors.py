"""Exceptions raised by ran_keras; each message names what was wrong and what is accepted."""

from __future__ import annotations

import difflib
from typing import Iterable, List, Optional


class RanError(Exception):
    """Base class for every error ran_keras raises on purpose."""


class SpecError(RanError, ValueError):
    """A network or block spec is invalid. ``path`` points at the bad field, ``source`` names the
    file it came from (when it came from one)."""

    def __init__(self, path: str, message: str, source: Optional[str] = None):
        self.path = path
        self.detail = message
        self.source = source
        text = f"{path}: {message}" if path else message
        super().__init__(f"{source}: {text}" if source else text)

    def __reduce__(self):  # picklable, so a worker process can send it back
        return type(self), (self.path, self.detail, self.source)

    def in_file(self, source: str) -> "SpecError":
        """The same error, naming the file it was read from."""
        return SpecError(self.path, self.detail, source=source)


class FileFormatError(RanError, ValueError):
    """A file that exists but is not what was expected (damaged, truncated, another format)."""

    def __init__(self, path, found: str, expected: str):
        self.path, self.found, self.expected = str(path), found, expected
        super().__init__(f"{self.path}: {found}; expected {expected}")

    def __reduce__(self):
        return type(self), (self.path, self.found, self.expected)


class UnknownModelError(RanError, KeyError):
    """A model name that is not in the registry."""

    def __init__(self, name: str, known: Iterable[str]):
        known = sorted(known)
        self.known = known
        close = suggestions(name, known, n=4, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        self.name = name
        self.message = (f"unknown model {name!r}.{hint} "
                        f"Run `ran list` to see all {len(known)} registered models.")
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message

    def __reduce__(self):
        return type(self), (self.name, self.known)


class ConfigError(RanError, ValueError):
    """A training/search setting that is out of range or inconsistent (names the flag)."""


class InputShapeError(RanError, ValueError):
    """An input shape the network cannot take."""


def suggestions(word: str, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> List[str]:
    """Up to ``n`` choices that ``word`` probably meant: the same name in another case first, then
    names it begins (``u55`` -> ``u55-128``), then spelling neighbours (case-insensitive)."""
    choices = list(choices)
    key = str(word).strip().lower()
    folded = {c.lower(): c for c in choices}
    found = [folded[key]] if key in folded else []
    if key:
        found += [c for c in choices if c.lower().startswith(key) and c not in found]
    found += [folded[m] for m in difflib.get_close_matches(key, list(folded), n=n, cutoff=cutoff)
              if folded[m] not in found]
    return found[:n]


def close_matches(word: str, choices: Iterable[str]) -> str:
    """' (did you mean x?)' or '' - for error messages."""
    close = suggestions(word, choices)
    return f" (did you mean {close[0]!r}?)" if close else ""
