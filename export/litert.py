"""Running .tflite files with LiteRT (``ai-edge-litert``), the successor of the deprecated
``tf.lite.Interpreter`` (same interface), and ``quiet``, which keeps the converter's and the
interpreter's routine chatter off stderr. Conversion stays with TensorFlow's ``TFLiteConverter``
(``ran_keras.export.tflite``)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Optional

#: lines the converter and interpreter print from C++ on every run; other stderr lines are kept
_CPP_NOISE = (
    "fully_quantize: ",
    "Created TensorFlow Lite XNNPACK delegate",
    "Estimated count of arithmetic ops",
)


@contextlib.contextmanager
def quiet():
    """Silence the converter's and interpreter's routine chatter (Python warnings, absl
    deprecation notes, fixed C++ info lines) while they run; real errors still reach stderr."""
    from ran_keras.backend import filtered_stderr
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), filtered_stderr(_CPP_NOISE):
            warnings.simplefilter("ignore")
            yield
    finally:
        absl_logger.setLevel(level)



def interpreter(model_content: bytes, *, threads: int = 1, preserve_all_tensors: bool = False,
                name: Optional[str] = None):
    """An allocated LiteRT interpreter for a flatbuffer; its routine start-up chatter is filtered.

    ``preserve_all_tensors`` keeps intermediate tensors readable (e.g. the logits before a softmax).
    A flatbuffer the interpreter cannot read raises TFLiteFileError naming ``name`` (the file).
    Where the default XNNPACK delegate fails to prepare a graph (it does on the int8 export of
    ``ChannelLayerNorm``), LiteRT's built-in kernels run it instead.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kwargs = dict(model_content=bytes(model_content), num_threads=threads,
                  experimental_preserve_all_tensors=preserve_all_tensors)
    with quiet():
        try:
            interp = Interpreter(**kwargs)
        except ValueError as err:
            from ran_keras.export.errors import TFLiteFileError
            raise TFLiteFileError(f"{name or 'the model'}: the TFLite interpreter cannot read it ({err}); expected a "
                                  "complete .tflite file") from None
        try:
            interp.allocate_tensors()
        except RuntimeError as err:
            if "xnnpack" not in str(err).lower():
                raise
            interp = Interpreter(**kwargs,
                                 experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            interp.allocate_tensors()
    return interp
