"""Imported weights reproduce PyTorch's logits.

``tests/data/torch_reference/make_fixtures.py`` (run with torch 2.13.0 CPU in a venv outside the
project; torch is no dependency) builds each source network layer by layer in PyTorch with the
source's module names, randomises every weight and BatchNorm statistic, and saves its state dict
with ``torch.save`` plus two 38x38 inputs and the logits torch computed for them. Here each ``.pth``
is imported with ``create_model(..., weights=FILE)`` into our registered model's spec at the same
narrow widths and the logits are compared.

Measured (max |ours - torch| / max |torch logits|, float32, this file's assertions at 1e-4):

* facebookresearch ConvNeXt / RAN-i layout, dims [8, 16, 32, 64], depths [1, 1, 3, 1]: 7.0e-7.
  Unpadded stem and downsampling (9 -> 4 -> 2 -> 1 at 38x38); with TF 'same' padding the shapes
  would differ (10 -> 5 -> 3 -> 2).
* torchvision ResNet-18 layout at width 1/8 (symmetric padding, max pool padded, BN eps 1e-5): 2.0e-7.
* timm EfficientNet-Lite0 layout at width 1/4 (PyTorch numerics, layout ``timm-efficientnet-lite``):
  2.3e-6.

An optional test rebuilds the fixtures with torch when it is importable and checks them against
the stored ones (the generator is deterministic).
"""

from pathlib import Path

import numpy as np
import pytest

import ran_keras
from ran_keras.spec import scale_width, scale_width_depth
from ran_keras.weights.importer import read_source

DATA = Path(__file__).parent / "data" / "torch_reference"


def _specs():
    return {
        "convnext_micro": (scale_width_depth(ran_keras.get_spec("convnext_tiny"), 1 / 12, 0.34, name="cnx_micro"),
                           "auto"),
        "resnet18_w0125": (scale_width(ran_keras.get_spec("resnet18"), 0.125, name="r18"), "auto"),
        "efficientnet_lite0_w025": (scale_width(ran_keras.get_spec("efficientnet_lite_b0"), 0.25, stem=True,
                                                head=True, name="lite"), "timm-efficientnet-lite"),
    }


def max_relative_error(name):
    spec, layout = _specs()[name]
    ref = np.load(DATA / f"{name}.npz")
    src = read_source(DATA / f"{name}.pth", layout=layout)
    model = ran_keras.create_model(spec, input_shape=(38, 38, 3), classes=10, classifier_activation=None,
                                   weights=src)
    ours = model(ref["images"]).numpy()
    return float(np.abs(ours - ref["logits"]).max() / np.abs(ref["logits"]).max()), ref


@pytest.mark.parametrize("name", ["convnext_micro", "resnet18_w0125", "efficientnet_lite0_w025"])
def test_imported_logits_match_torch(name):
    err, ref = max_relative_error(name)
    assert str(ref["torch"]).startswith("2.13.0")
    assert err < 1e-4, err


def test_tf_padding_would_not_match():
    """The same ResNet with TensorFlow's 'same' padding (the old spec) is far from torch: the fix matters."""
    spec = scale_width(ran_keras.get_spec("resnet18"), 0.125, name="r18").replace(padding="same")
    ref = np.load(DATA / "resnet18_w0125.npz")
    model = ran_keras.create_model(spec, input_shape=(38, 38, 3), classes=10, classifier_activation=None,
                                   weights=read_source(DATA / "resnet18_w0125.pth"))
    err = np.abs(model(ref["images"]).numpy() - ref["logits"]).max() / np.abs(ref["logits"]).max()
    assert err > 0.05


def test_fixtures_regenerate_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in module.NETWORKS:
        new, old = np.load(tmp_path / f"{name}.npz"), np.load(DATA / f"{name}.npz")
        np.testing.assert_allclose(new["logits"], old["logits"], rtol=1e-5, atol=1e-6)
    assert torch.__version__
