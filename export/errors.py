"""Errors of the export / Vela toolchain. Each names what was wrong and what is accepted."""

from __future__ import annotations

from ran_keras.errors import RanError

VELA_PIN = "ethos-u-vela==5.2.0"


class ExportError(RanError):
    """A model could not be exported to TFLite (bad argument, unsupported model)."""


class CalibrationError(ExportError):
    """Representative data could not be made from the requested source."""


class TFLiteFileError(RanError):
    """A file that is not a readable TFLite flatbuffer."""


class FloatTensorError(RanError):
    """An int8 export (or a model given to Vela) still has float tensors."""


class VelaNotInstalledError(RanError):
    """ethos-u-vela cannot be imported."""

    def __init__(self, detail: str = ""):
        super().__init__(f"Vela is not installed in this Python ({detail or 'no module ethosu.vela'}); "
                         f"install it with `pip install {VELA_PIN}`")


class UnknownTargetError(RanError):
    """A target name that is not in vela_configs/targets.json."""


class VelaConfigError(RanError):
    """An accelerator / system config / memory mode combination Vela cannot use."""


class VelaError(RanError):
    """Vela ran and failed; the message carries its stderr."""


class CpuOpsError(RanError):
    """--fail-on-cpu-ops: the compiled model runs some operators on the CPU.

    ``document`` is the finished ``ran hwtable`` document (its files are written) when
    ``hwtable.run`` raised it, else None."""

    def __init__(self, message: str, document=None):
        super().__init__(message)
        self.document = document


class IncompleteTableError(RanError):
    """``ran hwtable`` finished, but some models or targets failed; ``document`` is the table
    written (the failed rows carry their reason)."""

    def __init__(self, message: str, document=None):
        super().__init__(message)
        self.document = document
