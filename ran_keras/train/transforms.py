"""Model transforms: changes to the model a run trains that are not part of the task.

A transform may replace the model (QAT wraps it with tfmot), add a loss term over its weights
(the PReLU search's lambda * sum(alpha - 1)^2) and write an artefact after the task's export (an
int8 TFLite file). The trainer applies transforms in order right after ``Task.build_model``,
inside the strategy scope and before the optimizer is built, on a fresh run and on a resumed
one alike, so checkpoints always hold the transformed model. No TensorFlow at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional


class ModelTransform:
    """A named change to the trained model; override the methods, or pass them as callables.

    ``loss(model)`` is added to the training loss as a regularisation term (scaled for the
    replicas) and logged each step under ``name``; ``None`` means no term.
    """

    def __init__(self, name: str, *, apply: Optional[Callable[[Any], Any]] = None,
                 loss: Optional[Callable[[Any], Any]] = None,
                 export: Optional[Callable[[Any, Path], Any]] = None):
        self.name = name
        self._apply, self._loss, self._export = apply, loss, export

    def apply(self, model):
        """The model to train instead of ``model`` (called in the strategy scope)."""
        return self._apply(model) if self._apply else model

    def loss(self, model):
        """A scalar loss term over the model's weights, or None."""
        return self._loss(model) if self._loss else None

    def export(self, model, model_dir: Path) -> None:
        """Write this transform's artefact after the task's export (chief only)."""
        if self._export:
            self._export(model, model_dir)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def start_from(path) -> ModelTransform:
    """Start training from the weights of a saved model (``.keras``/``.h5``), copied by layer name:
    e.g. fine-tuning a linearised ConvNeXt (``ran codesign linearise``). Every layer with weights
    must be in the saved model with the same shapes. On a resumed run the checkpoint wins."""
    def apply(model):
        from ran_keras.builder import load_model
        from ran_keras.errors import RanError
        saved = {layer.name: layer for layer in load_model(path).layers}
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in saved:
                raise RanError(f"start_from {path}: the saved model has no layer {layer.name!r}")
            try:
                layer.set_weights(saved[layer.name].get_weights())
            except ValueError as err:
                raise RanError(f"start_from {path}: layer {layer.name!r} does not match: {err}") from None
        return model

    return ModelTransform("start_from", apply=apply)
