"""Input pipelines (TFDS via mock_data, digits, image folders) and the augmentation ops."""

import numpy as np
import pytest

from ran_keras.train.config import ConfigError, resolve_config

MEAN, STD = (127.5,), (127.5,)


@pytest.fixture(scope="module")
def tf():
    from ran_keras.backend import tf as tf_
    return tf_


@pytest.fixture(scope="module")
def photos():
    from ran_keras.data.photos import offline_photos
    return offline_photos(3, 40, seed=3)


def _pipeline(cfg, source, size=32, batch=4, classes=None):
    from ran_keras.data import classification
    return classification.Pipeline(source, cfg, image_size=size, channels=3, mean=MEAN, std=STD,
                             num_classes=classes or source.num_classes, global_batch=batch)


# --- TFDS (imagenet2012-shaped mock data, random image sizes) ------------------------------------

def test_imagenet_pipeline_on_mock_data(tf, tmp_path):
    import tensorflow_datasets as tfds
    from ran_keras.data import classification
    cfg = resolve_config("ran_e", {"dataset": "imagenet2012", "data_dir": str(tmp_path), "batch_size": 4,
                                   "mixup": 0.2, "cutmix": 1.0, "shuffle_buffer": 16})
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        source = classification.load_source(cfg)
        assert source.num_classes == 1000 and source.encoded
        pipe = _pipeline(cfg, source, size=48)
        epoch0 = [(x.numpy(), y.numpy()) for x, y in pipe.train(0).take(3)]
        skipped = [x.numpy() for x, _ in pipe.train(0, skip_examples=4).take(2)]
        epoch1 = next(iter(pipe.train(1)))[0].numpy()
        evals = [(x.numpy(), y.numpy()) for x, y in pipe.eval()]
    for x, y in epoch0:
        assert x.shape == (4, 48, 48, 3) and x.dtype == np.float32
        assert -1.0 - 1e-6 <= x.min() and x.max() <= 1.0 + 1e-6          # normalised with the spec's mean/std
        assert y.shape == (4, 1000) and np.allclose(y.sum(axis=1), 1.0)  # one-hot, mixed
    # mixup/CutMix ran (seeded, so always the same batches): some rows carry two classes
    assert max(int((y > 0).sum(axis=1).max()) for _, y in epoch0) == 2
    # a second pass over the epoch, resumed after one batch, sees exactly the same (augmented) batches
    assert all(np.array_equal(a[0], b) for a, b in zip(epoch0[1:], skipped))
    assert not np.array_equal(epoch0[0][0], epoch1)                                 # reshuffled per epoch
    assert sum(len(y) for _, y in evals) == 10 and evals[-1][0].shape[0] == 2      # whole split, partial batch
    for _, y in evals:                                                              # never mixed: one-hot
        assert set(np.unique(y)) <= {0.0, 1.0} and np.array_equal(y.sum(axis=1), np.ones(len(y)))


def test_unknown_dataset_and_unprepared_imagenet(tmp_path):
    from ran_keras.data import classification
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet2021'.*did you mean 'imagenet2012'"):
        classification.load_source(resolve_config("ran_e", {"dataset": "imagenet2021"}))
    cfg = resolve_config("ran_e", {"dataset": "imagenet2012", "data_dir": str(tmp_path)})
    with pytest.raises(ConfigError) as err:
        classification.load_source(cfg)
    msg = str(err.value)
    assert "not prepared" in msg and "ILSVRC2012_img_train.tar" in msg and "--manual_dir" in msg
    cfg = cfg.replace(manual_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="does not exist or is empty.*ILSVRC2012_img_val.tar"):
        classification.load_source(cfg)
    with pytest.raises(ConfigError, match="no data: pass --dataset"):
        classification.load_source(resolve_config("none", {}))


# --- digits and image folders --------------------------------------------------------------------

def test_digits_split_and_pipeline(tf):
    from ran_keras.data import classification
    (x_tr, y_tr), (x_ev, y_ev) = classification.digits_arrays()
    assert (len(x_tr), len(x_ev)) == (1437, 360) and x_tr.shape[1:] == (8, 8, 1)
    assert x_tr.dtype == np.uint8 and x_tr.max() == 255
    assert np.bincount(y_ev).min() >= 35            # stratified: every digit held out
    cfg = resolve_config("digits")
    source = classification.load_source(cfg)
    assert not source.flip                            # digits are not mirror-symmetric
    x, y = next(iter(_pipeline(cfg, source, batch=8).train(0)))
    assert x.shape == (8, 32, 32, 3) and np.allclose(x[..., 0], x[..., 2])
    ev = next(iter(_pipeline(cfg, source, batch=360).eval()))[0].numpy()
    centre = (ev[:, 14:18, 14:18] + 1) * 127.5        # 8x8 upsampled: the centre pixels of the digits
    assert centre.max() > 200


def test_image_folder(tf, tmp_path, photos):
    from PIL import Image
    from ran_keras.data import classification
    for c, name in enumerate(("cat", "dog", "fox")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(5):
            img = Image.fromarray(np.roll(photos[c], 7 * i, axis=1))
            img.save(tmp_path / "imgs" / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    cfg = resolve_config("none", {"image_folder": str(tmp_path / "imgs"), "batch_size": 4,
                                  "validation_fraction": 0.2})
    source = classification.load_source(cfg)
    assert (source.num_classes, source.train_examples, source.eval_examples) == (3, 12, 3)
    x, y = next(iter(_pipeline(cfg, source, size=24).train(0)))
    assert x.shape == (4, 24, 24, 3) and y.shape == (4, 3)
    assert sum(len(b[1]) for b in _pipeline(cfg, source, size=24).eval()) == 3
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(ConfigError, match="no images .*formats TensorFlow decodes: .jpg, .jpeg, .png, .bmp, .gif"):
        classification.load_source(cfg.replace(image_folder=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="is not a folder"):
        classification.load_source(cfg.replace(image_folder=str(tmp_path / "missing")))
    Image.fromarray(photos[0]).save(tmp_path / "imgs" / "cat" / "extra.tif")
    with pytest.raises(ConfigError, match=r"1 image\(s\) .* are .tif .*extra.tif.*TensorFlow cannot decode"):
        classification.load_source(cfg)


def test_image_folder_with_split_sub_folders(tf, tmp_path, photos):
    from PIL import Image
    from ran_keras.data import classification
    for split, count in (("train", 3), ("test", 2)):
        for c, name in enumerate(("cat", "dog")):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.roll(photos[c], 5 * i, axis=0)).save(tmp_path / "imgs" / split / name / f"{i}.png")
    cfg = resolve_config("none", {"image_folder": str(tmp_path / "imgs"), "batch_size": 2})
    source = classification.load_source(cfg)            # train/ + test/: 2 classes, test/ held out
    assert (source.num_classes, source.train_examples, source.eval_examples) == (2, 6, 4)
    assert "(test/)" in source.description
    (tmp_path / "only" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"only the sub-folder\(s\) train/, which name splits.*DIR/test/"):
        classification.load_source(cfg.replace(image_folder=str(tmp_path / "only")))


# --- augmentation ops ----------------------------------------------------------------------------

def test_colour_ops_match_pil(tf, photos):
    from PIL import Image, ImageEnhance, ImageOps
    from ran_keras.data import augment
    for img in photos:
        x = tf.constant(img, tf.float32)
        pil = Image.fromarray(img)
        assert np.array_equal(augment.equalize(x).numpy(), np.asarray(ImageOps.equalize(pil), np.float32))
        assert np.array_equal(augment.posterize(x, 3).numpy(), np.asarray(ImageOps.posterize(pil, 3), np.float32))
        assert np.array_equal(augment.solarize(x, 100.0).numpy(), np.asarray(ImageOps.solarize(pil, 100), np.float32))
        assert np.abs(augment.autocontrast(x).numpy() - np.asarray(ImageOps.autocontrast(pil))).max() <= 1
        for fn, enhancer in ((augment.color, ImageEnhance.Color), (augment.contrast, ImageEnhance.Contrast),
                             (augment.brightness, ImageEnhance.Brightness),
                             (augment.sharpness, ImageEnhance.Sharpness)):
            for factor in (0.3, 1.6):
                ours = np.round(fn(x, factor).numpy())
                assert np.abs(ours - np.asarray(enhancer(pil).enhance(factor), np.float32)).max() <= 1


def test_geometric_ops(tf, photos):
    from ran_keras.data import augment
    x = tf.constant(photos[0], tf.float32)
    seed = tf.constant([1, 2], tf.int64)
    for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
        assert np.allclose(augment.apply_op(name, x, 0.0, seed).numpy(), photos[0])   # level 0: identity
        moved = augment.apply_op(name, x, 10.0, seed).numpy()
        assert moved.shape == photos[0].shape and not np.allclose(moved, photos[0])
        assert (moved == augment.FILL).all(axis=-1).any()                          # exposed pixels are grey
    shifted = augment.translate_x(x, 5.0).numpy()
    assert np.array_equal(shifted[:, :-5], photos[0][:, 5:])
    rot = augment.rotate(x, 90.0).numpy()
    assert np.allclose(rot, np.rot90(photos[0], k=1), atol=1e-3)


def test_policies_are_seeded_and_valid(tf, photos):
    from ran_keras.data import augment
    x = tf.constant(photos[1], tf.float32)
    outs = [augment.autoaugment(x, tf.constant([7, i], tf.int64)).numpy() for i in range(6)]
    again = augment.autoaugment(x, tf.constant([7, 0], tf.int64)).numpy()
    assert np.array_equal(outs[0], again)
    assert len({o.tobytes() for o in outs}) > 1
    for o in outs:
        assert o.shape == x.shape and o.min() >= 0 and o.max() <= 255
    assert len(augment.IMAGENET_POLICY) == 25 and all(len(s) == 2 for s in augment.IMAGENET_POLICY)
    ras = [augment.randaugment(x, tf.constant([1, i], tf.int64), num_layers=2, magnitude=9, magnitude_std=0.5).numpy()
           for i in range(3)]
    for ra in ras:
        assert ra.shape == x.shape and 0 <= ra.min() and ra.max() <= 255
    assert not np.allclose(ras[0], photos[1])               # this seed applies at least one op
    assert len({r.tobytes() for r in ras}) > 1              # and other seeds other ops
    again = augment.randaugment(x, tf.constant([1, 0], tf.int64), num_layers=2, magnitude=9, magnitude_std=0.5)
    assert np.array_equal(ras[0], again.numpy())


def test_mixup_and_cutmix_labels(tf):
    from ran_keras.data import augment
    images = tf.constant(np.stack([np.full((8, 8, 3), v, np.float32) for v in (0.0, 100.0)]))
    labels = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    for i in range(4):
        seed = tf.constant([3, i], tf.int64)
        xm, ym = augment.mixup(images, labels, seed, 0.8)
        lam = ym.numpy()[0, 0]
        assert np.allclose(xm.numpy()[0], 100.0 * (1 - lam), atol=1e-4)
        xc, yc = augment.cutmix(images, labels, seed, 1.0)
        pasted = float((xc.numpy()[0, :, :, 0] == 100.0).mean())
        assert yc.numpy()[0, 1] == pytest.approx(pasted, abs=1e-6)                # label weight = pasted area
        assert np.allclose(yc.numpy().sum(axis=1), 1.0)
