"""Reading published weights (PyTorch ``.pth`` without PyTorch, TF checkpoints) and mapping them onto
ran_keras models.

Modules (imported on use, so ``import ran_keras.weights`` stays free of TensorFlow):

* ``pth``: a restricted reader for ``torch.save`` zip files (tensors -> numpy, nothing executed).
* ``pth_writer``: writes ``.pth`` files in the same layout, for fixtures and tools.
* ``tf_ckpt``: TF checkpoint keys and values, bookkeeping filtered; a fixture writer.
* ``published``: Arm's published RAN files (sizes, hashes, accuracy) and ``verify``/``identify``.
* ``mapping``: the generic key/shape mapper with transforms, failing loudly on any gap.
* ``keymaps``: rules for facebookresearch and timm ConvNeXt, torchvision ResNet-18, timm and lukemelas
  EfficientNet-Lite0 and the reference RAN-e Keras checkpoints.
* ``importer``: the layouts as data, ``read_source`` (read, recognise, check against the published
  table) and ``load_source`` (map onto a built model); used by ``build_model(weights=...)`` and
  ``ran weights import``.
"""

from ran_keras.weights.errors import WeightsError

__all__ = ["WeightsError"]
