"""Detection input: VOC / COCO-JSON / TFDS readers on small files made here, the transform, batching.

Checked once against real torchvision 0.29.1 (torch 2.14.1, CPU) in a throw-away venv outside the
repository, on random inputs saved to .npz and compared here (torch is not a dependency):
``GeneralizedRCNNTransform(800, 1200, ImageNet mean/std)`` in eval mode gives the same resized
sizes for 9 image sizes (the ones in ``test_resized_size_like_torchvision`` among them), and on a
random 61 x 83 image the same normalised pixels within 1.5e-5 (about 1e-3 grey levels).
"""

import json

import numpy as np
import pytest

from ran_keras.backend import tf
from ran_keras.tasks.detection import datasets as DS
from ran_keras.tasks.detection.errors import DetectionDataError, DetectionError


def _png(path, height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.write_bytes(tf.io.encode_png(pixels).numpy())
    return pixels


def _voc_xml(path, filename, objects):
    body = "".join(f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    path.write_text(f"<annotation><filename>{filename}</filename>{body}</annotation>")


@pytest.fixture
def voc_dir(tmp_path):
    a = _png(tmp_path / "a.png", 40, 60, 1)
    b = _png(tmp_path / "b.png", 30, 30, 2)
    _voc_xml(tmp_path / "a.xml", "a.png", [("dog", (5, 6, 25, 30), False), ("cat", (30, 2, 58, 20), True)])
    _voc_xml(tmp_path / "b.xml", "b.tif", [("cat", (1, 1, 10, 12), False)])    # .tif listed, the .png is used
    return tmp_path, a, b


def test_voc_reader(voc_dir):
    folder, a, b = voc_dir
    source = DS.voc_source(folder)
    assert source.class_names == ("cat", "dog") and source.num_examples == 2 and source.num_classes == 2
    records = list(source.dataset())
    np.testing.assert_array_equal(records[0]["image"].numpy(), a)
    np.testing.assert_array_equal(records[1]["image"].numpy(), b)
    np.testing.assert_array_equal(records[0]["boxes"].numpy(), [[5, 6, 25, 30], [30, 2, 58, 20]])
    assert records[0]["classes"].numpy().tolist() == [2, 1]
    assert records[0]["is_crowd"].numpy().tolist() == [False, True]             # difficult -> crowd
    np.testing.assert_array_equal(records[0]["area"].numpy(), [20 * 24, 28 * 18])
    assert records[0]["original_size"].numpy().tolist() == [40, 60]
    assert [int(r["image_id"]) for r in records] == [0, 1]
    assert DS.voc_source(folder, class_names=["dog", "cat", "bird"]).class_names == ("dog", "cat", "bird")


def test_voc_errors(voc_dir, tmp_path_factory):
    folder, _, _ = voc_dir
    with pytest.raises(DetectionDataError, match=r"class\(es\) 'dog' are not in class_names"):
        DS.voc_source(folder, class_names=["cat"])
    (folder / "c.xml").write_text("<annotation><filename>gone.jpg</filename></annotation>")
    with pytest.raises(DetectionDataError, match="no image for it.*'gone.jpg'"):
        DS.voc_source(folder)
    (folder / "c.xml").write_text("<annotation><object><name>cat</name></object></annotation>")
    with pytest.raises(DetectionDataError, match="object 0 needs a <name> and a <bndbox>"):
        DS.voc_source([folder / "c.xml"])
    (folder / "c.xml").write_text("<annotation>")
    with pytest.raises(DetectionDataError, match="cannot read it"):
        DS.voc_source([folder / "c.xml"])
    with pytest.raises(DetectionDataError, match="no .xml files"):
        DS.voc_source(tmp_path_factory.mktemp("empty"))


def _coco_json(tmp_path):
    _png(tmp_path / "x.png", 20, 30, 3)
    _png(tmp_path / "y.png", 25, 25, 4)
    data = {"images": [{"id": 9, "file_name": "y.png"}, {"id": 4, "file_name": "x.png"}],
            "categories": [{"id": 3, "name": "tree"}, {"id": 1, "name": "bird"}],
            "annotations": [{"id": 1, "image_id": 4, "category_id": 3, "bbox": [2, 3, 10, 5], "area": 40.5,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 4, "category_id": 1, "bbox": [0, 0, 30, 20], "area": 500,
                             "iscrowd": 1}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, data


def test_coco_json_reader(tmp_path):
    path, data = _coco_json(tmp_path)
    source = DS.coco_json_source(path, tmp_path)
    assert source.class_names == ("bird", "tree") and source.category_ids == (1, 3)
    first, second = list(source.dataset())                    # sorted by image id: 4 then 9
    assert int(first["image_id"]) == 4 and int(second["image_id"]) == 9
    np.testing.assert_array_equal(first["boxes"].numpy(), [[2, 3, 12, 8], [0, 0, 30, 20]])
    assert first["classes"].numpy().tolist() == [2, 1] and first["is_crowd"].numpy().tolist() == [False, True]
    np.testing.assert_array_equal(first["area"].numpy(), [40.5, 500])
    assert second["boxes"].shape == (0, 4) and second["original_size"].numpy().tolist() == [25, 25]
    data["annotations"][0]["category_id"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(DetectionDataError, match="category_id 7"):
        DS.coco_json_source(path, tmp_path)
    data["annotations"][0]["category_id"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(DetectionDataError, match="2 of 2 listed"):
        DS.coco_json_source(path, tmp_path / "nowhere")
    path.write_text("{}")
    with pytest.raises(DetectionDataError, match="COCO instances JSON"):
        DS.coco_json_source(path, tmp_path)


def test_tfds_coco_reader_on_mocked_examples(tmp_path):
    """tfds.testing.mock_data mocks coco/2017 offline from its code (USE_CODE), but its random
    examples give the sub-features of `objects` different lengths, which TFDS refuses to encode
    when the image is read undecoded (SkipDecoding, as here): so the examples are made here."""
    import tensorflow_datasets as tfds
    pixels = np.random.default_rng(5).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    example = {"image": tf.io.encode_png(pixels).numpy(), "image/filename": b"a.jpg", "image/id": np.int64(42),
               "objects": {"id": np.array([1, 2], np.int64), "area": np.array([600, 12], np.int64),
                           "bbox": np.array([[0.1, 0.25, 0.5, 0.75], [0.0, 0.0, 0.2, 0.1]], np.float32),
                           "label": np.array([0, 79], np.int64), "is_crowd": np.array([False, True])}}

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        assert decoders is not None and "image" in decoders        # the reader asks for encoded images
        return tf.data.Dataset.from_tensors(example)

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=as_dataset):
        source = DS.tfds_coco_source("validation", data_dir=str(tmp_path))
        record = next(iter(source.dataset()))
    assert len(source.class_names) == 80
    np.testing.assert_array_equal(record["image"].numpy(), pixels)
    np.testing.assert_allclose(record["boxes"].numpy(), [[20, 5, 60, 25], [0, 0, 8, 10]], rtol=1e-6)
    assert record["classes"].numpy().tolist() == [1, 80] and record["is_crowd"].numpy().tolist() == [False, True]
    assert int(record["image_id"]) == 42 and record["area"].numpy().tolist() == [600, 12]


def test_tfds_coco_not_prepared(tmp_path):
    with pytest.raises(DetectionDataError, match=r"coco/2017 is not prepared in .*tfds build coco/2017"):
        DS.tfds_coco_source("validation", data_dir=str(tmp_path))
    with pytest.raises(DetectionDataError, match="does not exist"):
        DS.tfds_coco_source("validation", data_dir=str(tmp_path), name="coco_nope/2017")


def test_resized_size_like_torchvision():
    # torchvision 0.29.1 gives these too (module docstring)
    for size, want in [((480, 640), (800, 1066)), ((333, 1000), (399, 1200)), ((500, 333), (1200, 799)),
                       ((2472, 2299), (860, 800)), ((400, 400), (800, 800))]:
        assert DS.resized_size(size).numpy().tolist() == list(want), size


def _record(pixels, boxes, crowd=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return {"image": tf.constant(pixels), "boxes": tf.constant(boxes), "classes": tf.ones([n], tf.int32),
            "is_crowd": tf.constant(crowd if crowd is not None else [False] * n, tf.bool),
            "area": tf.ones([n]), "image_id": tf.constant(0, tf.int64),
            "original_size": tf.constant(pixels.shape[:2], tf.int32)}


def test_preprocess_resize_normalise_and_seeded_flip():
    pixels = np.zeros((20, 40, 3), np.uint8) + np.array([124, 116, 104], np.uint8)     # about the mean colour
    pixels[:, :10] = 255
    rec = _record(pixels, [[0, 0, 10, 20], [38, 5, 45, 9], [3, 3, 3, 9]], crowd=[False, False, True])
    out = DS.preprocess(rec, training=False, min_size=40, max_size=100)
    assert out["image_size"].numpy().tolist() == [40, 80]
    np.testing.assert_allclose(out["scale"].numpy(), [2, 2])
    np.testing.assert_allclose(out["boxes"].numpy()[0], [0, 0, 20, 40])
    right = out["image"].numpy()[:, 30:]
    np.testing.assert_allclose(right, np.broadcast_to((pixels[0, 20] - np.array(DS.MEAN)) / DS.STD, right.shape),
                               atol=1e-5)
    assert out["box_trainable"].numpy().tolist() == [True, True, False]          # crowd
    flips = {}
    for s in range(8):
        t = DS.preprocess(rec, training=True, seed=[s, 0], min_size=40, max_size=100)
        flips[bool(t["image"].numpy()[0, 0, 0] < 1.0)] = t                    # the white band moved right
    assert set(flips) == {True, False}                                          # both outcomes occur
    flipped = flips[True]
    # clipped to the 40 px width first ([38, 45] -> [38, 40]), then x -> 40 - x, then x2 scale
    np.testing.assert_allclose(flipped["boxes"].numpy()[:2], [[60, 0, 80, 40], [0, 10, 4, 18]])
    for s in range(3):                                                          # the seed decides
        assert (DS.preprocess(rec, True, [s, 0], 40, 100)["boxes"].numpy().tolist()
                == DS.preprocess(rec, True, [s, 0], 40, 100)["boxes"].numpy().tolist())
    with pytest.raises(DetectionError, match="needs a seed"):
        DS.preprocess(rec, training=True)


def test_batch_pads_images_and_boxes():
    recs = [DS.preprocess(_record(np.zeros((20, 30, 3), np.uint8), [[1, 1, 5, 5]]), False, None, 20, 100),
            DS.preprocess(_record(np.zeros((25, 20, 3), np.uint8), [[1, 1, 5, 5], [2, 2, 9, 9]]), False, None, 20, 100)]
    ds = tf.data.Dataset.from_generator(lambda: iter(recs), output_signature=tf.nest.map_structure(
        lambda t: tf.TensorSpec([None] * t.shape.rank, t.dtype) if t.shape.rank else tf.TensorSpec([], t.dtype),
        recs[0]))
    b = next(iter(DS.batch(ds, 2)))
    assert b["image"].shape == (2, 32, 32, 3)                     # largest 25 x 30 rounded up to 32
    assert b["image_size"].numpy().tolist() == [[20, 30], [25, 20]]
    assert b["box_valid"].numpy().tolist() == [[True, False], [True, True]]
    assert float(tf.reduce_max(tf.abs(b["image"][0, 20:]))) == 0.0           # padding is 0 after normalising
    fixed = next(iter(DS.batch(ds, 2, max_boxes=1)))
    assert fixed["boxes"].shape == (2, 1, 4) and fixed["box_valid"].numpy().all()
    fixed = next(iter(DS.batch(ds, 2, max_boxes=4)))
    assert fixed["boxes"].shape == (2, 4, 4)


def test_pipeline_reproducible_and_skips_untrainable(voc_dir):
    folder, _, _ = voc_dir
    _png(folder / "c.png", 16, 16, 6)
    _voc_xml(folder / "c.xml", "c.png", [("cat", (1, 1, 8, 8), True)])        # only a difficult (crowd) box
    source = DS.voc_source(folder)

    def run(seed):
        return list(DS.detection_pipeline(source, True, 1, seed=seed, min_size=32, max_size=64))

    first, again = run(3), run(3)
    assert len(first) == 2                                          # c is skipped for training
    for x, y in zip(first, again):
        assert x["image_id"].numpy().tolist() == y["image_id"].numpy().tolist()
        np.testing.assert_array_equal(x["image"].numpy(), y["image"].numpy())
    evaluation = list(DS.detection_pipeline(source, False, 2, min_size=32, max_size=64))
    assert [b["image_id"].numpy().tolist() for b in evaluation] == [[0, 1], [2]]
    last = evaluation[1]
    assert last["is_crowd"].numpy().tolist() == [[True]]
    np.testing.assert_allclose((last["boxes"] / tf.tile(last["scale"], [1, 2])[:, None]).numpy(),
                               last["original_boxes"].numpy(), rtol=1e-6)
    with pytest.raises(DetectionError, match="min_size <= max_size"):
        DS.detection_pipeline(source, False, 1, min_size=900, max_size=800)
