"""Int8 TFLite export, Vela compilation and reports (installed as ran_keras.export).

``tflite`` (Keras -> TFLite, int8-vs-Keras comparison), ``calibration`` (representative data),
``flatbuffer`` (read a .tflite without TensorFlow), ``pipeline`` (``ran export``), ``vela`` (targets,
``run_vela``, ``VelaReport``), ``hwtable`` (``ran hwtable``), ``bench`` (``ran bench-cpu``),
``litert`` (run .tflite files with LiteRT), ``settings`` (defaults and option parsers, no numpy), ``errors``.
"""
