"""The graph rewriter: fold the linear parts of trained models exactly (paper Sec. 2.2, Fig. 2d/3).

``ran_keras.rewrite.fold.fold(model, alpha_band=(0.8, 1.3))`` returns a new functional model in which BatchNorms are
folded into their convolutions, AFRBs whose alpha is close to 1 are collapsed into a ReLU and one
k x k convolution, and other linear chains are merged where that pays, plus a ``FoldReport``.

* ``ran_keras.rewrite.linear``: the folding math, float64 numpy, no TensorFlow (exact at the
  image borders; the proof is in its docstring).
* ``ran_keras.rewrite.graph``: reads a Keras model as segments of linear units and plans folds.
* ``ran_keras.rewrite.rebuild``: builds the new model with transferred weights.
* ``ran_keras.rewrite.fold``: ``fold``, ``format_report``, ``compare``; ``defaults``: its defaults.
* ``ran_keras.rewrite.codesign`` (math) and ``restructure`` (Keras): the ConvNeXt co-design block
  (paper Sec. 4): ``linearise`` a trained ConvNeXt (channel choice 'last' or 'linearity'), then
  ``fold_codesign`` its lower branch into one C -> C 1x1, exactly.
"""
