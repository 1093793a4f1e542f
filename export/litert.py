"""Running and inspecting .tflite files with LiteRT (``ai-edge-litert``), the successor of the
deprecated ``tf.lite.Interpreter`` (same interface). Conversion stays with TensorFlow's
``TFLiteConverter`` (``ran_keras.export.tflite``)."""

from __future__ import annotations


def interpreter(model_content: bytes, *, threads: int = 1, preserve_all_tensors: bool = False):
    """An allocated LiteRT interpreter for a flatbuffer; its routine start-up chatter is filtered.

    ``preserve_all_tensors`` keeps intermediate tensors readable (e.g. the logits before a softmax).
    """
    from ai_edge_litert.interpreter import Interpreter

    from ran_keras.export.tflite import quiet
    with quiet():
        interp = Interpreter(model_content=bytes(model_content), num_threads=threads,
                             experimental_preserve_all_tensors=preserve_all_tensors)
        interp.allocate_tensors()
    return interp
