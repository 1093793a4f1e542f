"""Which checkpoint a run resumes from: the newest one that reads back whole.

A checkpoint is trusted only after every tensor in it has been read (TensorFlow checks each tensor's
CRC as it reads it), so a truncated or corrupted newest checkpoint is passed over, with a warning, for
the newest intact one beside it rather than stopping the resume.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ran_keras.backend import tf

_INDEX = re.compile(r"^(?P<stem>.+)-(?P<step>\d+)\.index$")


def candidates(folder, name: str = "ckpt") -> List[Tuple[int, str]]:
    """(step, prefix) of every ``<name>-<step>`` checkpoint in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _INDEX.match(path.name)
        if match and match["stem"] == name:
            found.append((int(match["step"]), str(folder / f"{name}-{match['step']}")))
    return sorted(found, reverse=True)


def damage(prefix: str) -> Optional[str]:
    """Why the checkpoint at ``prefix`` cannot be read back (None: every tensor read intact)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as err:  # noqa: BLE001 - the reader raises OpError, IndexError, ValueError...: all damage
        lines = [line for line in str(err).splitlines() if line.strip()]
        return (lines[0] if lines else type(err).__name__)[:200]
    return None


def newest_intact(folder, warn: Callable[[str], None], name: str = "ckpt") -> Optional[Tuple[int, str]]:
    """(step, prefix) of the newest intact checkpoint in ``folder``; None when there is none at all.

    Damaged ones newer than it are reported through ``warn``; raises RuntimeError (with every reason)
    when checkpoints exist but none is intact."""
    damaged = []
    for step, prefix in candidates(folder, name):
        reason = damage(prefix)
        if reason is None:
            for bad, why in damaged:
                warn(f"warning: checkpoint {bad} is damaged ({why}); resuming from the newest intact one, "
                     f"{prefix} (step {step}); the damaged one will be overwritten when the run gets there again")
            return step, prefix
        damaged.append((prefix, reason))
    if damaged:
        raise RuntimeError("; ".join(f"{p}: {why}" for p, why in damaged))
    return None
