"""Exceptions raised by ran_keras; each message names what was wrong and what is accepted."""

from __future__ import annotations

import difflib
from typing import Iterable


class RanError(Exception):
    """Base class for every error ran_keras raises on purpose."""


class SpecError(RanError, ValueError):
    """A network or block spec is invalid. ``path`` points at the bad field."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.detail = message
        super().__init__(f"{path}: {message}" if path else message)


class UnknownModelError(RanError, KeyError):
    """A model name that is not in the registry."""

    def __init__(self, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        self.name = name
        self.message = (f"unknown model {name!r}.{hint} "
                        f"Run `ran list` to see all {len(known)} registered models.")
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class ConfigError(RanError, ValueError):
    """A training/search setting that is out of range or inconsistent (names the flag)."""


class InputShapeError(RanError, ValueError):
    """An input shape the network cannot take."""


def close_matches(word: str, choices: Iterable[str]) -> str:
    """' (did you mean x?)' or '' - for error messages."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
