"""The task registry: ``--task`` name -> Task class (``ran_keras.tasks.base``).

Entries are ``"module:Class"`` paths, imported on first use, so naming and checking a task needs
no TensorFlow. A new task is a module with its class and one line here (or ``register_task``).
"""

from __future__ import annotations

import importlib
from typing import Dict, List, Union

from ran_keras.errors import ConfigError, close_matches

TASKS: Dict[str, Union[str, type]] = {
    "classification": "ran_keras.tasks.classification:ClassificationTask",
    "detection": "ran_keras.tasks.detection.task:DetectionTask",
}


def task_names() -> List[str]:
    return list(TASKS)


def register_task(name: str, cls: Union[str, type]) -> None:
    """Add (or replace) a task: a class, or its ``"module:Class"`` path."""
    TASKS[name] = cls


def check_task(name: str) -> str:
    """``name`` if registered, else ConfigError naming --task and the accepted names."""
    if name not in TASKS:
        raise ConfigError(f"--task: unknown task {name!r}{close_matches(name, TASKS)}; accepted: "
                          f"{', '.join(TASKS)}")
    return name


def get_task(name: str) -> type:
    """The Task class registered as ``name``."""
    entry = TASKS[check_task(name)]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = TASKS[name] = getattr(importlib.import_module(module), attr)
    return entry


def make_task(cfg, spec=None):
    """The task ``cfg.task`` names, for ``spec`` (None: the one --model names)."""
    return get_task(cfg.task)(cfg, spec)
