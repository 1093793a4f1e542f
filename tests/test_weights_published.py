"""``ran_keras.weights.published``: the table of Arm's published RAN weights, ``verify`` and ``identify``.

The real files are git-lfs objects that cannot be fetched here, so identification is tested on files
registered in a patched table; the table itself is checked against the git-lfs pointers' facts and
against our models' parameter counts (file size per parameter).
"""

import hashlib

import pytest

import ran_keras
from ran_keras.weights import WeightsError, published
from ran_keras.weights.published import PUBLISHED, Published, PublishedFile, get, identify, sha256_file, verify


def test_table_holds_the_published_facts():
    assert [e.name for e in PUBLISHED] == ["RAN-e-C", "RAN-e-GT", "RAN-i-T", "RAN-i-S", "RAN-i-B", "RAN-i-S detector"]
    assert [e.top1 for e in PUBLISHED] == [74.6, 74.6, 82.03, 82.63, 83.61, None]
    gt = get("RAN-e-GT")
    assert get("ran_e_gt") is gt and get("ran_i_small").name == "RAN-i-S" and get("RAN-i-S detector").top1 is None
    data = gt.files[0]
    assert (data.name, data.bytes) == ("model.ckpt-0350.data-00000-of-00001", 61049189)
    assert data.sha256 == "0e3f61fb1e23ca2cb212fe57fecb86f077e6045cc303d8af701132a48b1491a1"
    assert data.url == ("https://github.com/ARM-software/ML-restructurable-activation-networks/blob/main/"
                        "pretrained/RAN_e_pretrained/RAN-e-GT/model.ckpt-0350.data-00000-of-00001")
    assert get("RAN-i-B").files[0].media_url.startswith("https://media.githubusercontent.com/media/ARM-software/")
    for entry in PUBLISHED:
        assert entry.model in ran_keras.list_models()
        for f in entry.files:
            assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0 and f.bytes > 0
    with pytest.raises(WeightsError, match="no published weights named 'RAN-e-D'"):
        get("RAN-e-D")


@pytest.mark.parametrize("name", ["RAN-i-T", "RAN-i-S", "RAN-i-B"])
def test_ran_i_files_hold_four_copies_of_our_models_parameters(name):
    """model + model_ema + AdamW's two moments, float32: 16 bytes per parameter, plus <0.2% of pickle/zip."""
    entry = get(name)
    params = ran_keras.profile(entry.model).params
    assert 1.0 < entry.files[0].bytes / (16 * params) < 1.002


def test_ran_e_checkpoint_sizes_c_fits_and_gt_does_not():
    """Weights + RMSprop's two slots in float32 = 4 (params + 2 trainable) bytes, plus ~96 kB of object graph
    (measured on a reference-like save_weights: tests/test_weights_tf_ckpt.py). RAN-e-C fits within 0.2%;
    RAN-e-GT's file is 13% larger than the published GT configuration can explain."""
    ratios = {}
    for name in ("RAN-e-C", "RAN-e-GT"):
        prof = ran_keras.profile(get(name).model)
        ratios[name] = get(name).files[0].bytes / (4 * (prof.params + 2 * prof.trainable_params) + 96_000)
    assert abs(ratios["RAN-e-C"] - 1) < 0.002
    assert ratios["RAN-e-GT"] > 1.12


@pytest.fixture
def fake_table(tmp_path, monkeypatch):
    """A table with two small 'published' files, written to tmp_path."""
    a, b = tmp_path / "weights_a.pth", tmp_path / "model.ckpt-0001.index"
    a.write_bytes(b"A" * 3000)
    b.write_bytes(b"B" * 100)
    files = tuple(PublishedFile(f"pretrained/{p.name}", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
                  for p in (a, b))
    monkeypatch.setattr(published, "PUBLISHED", (Published("Fake", "ran_e_c", files, 1.0, "test"),))
    return a, b, files


def test_identify_by_name_size_and_hash(fake_table, tmp_path):
    a, b, files = fake_table
    found = identify(a)
    assert found.published and found.file == files[0] and found.reason == "pretrained/weights_a.pth of Fake"
    renamed = tmp_path / "copy.bin"
    renamed.write_bytes(a.read_bytes())
    assert identify(renamed).file == files[0] and "renamed from weights_a.pth" in identify(renamed).reason
    corrupt = tmp_path / "sub" / "weights_a.pth"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"A" * 2999 + b"X")
    assert not identify(corrupt).published and "sha256" in identify(corrupt).reason
    truncated = tmp_path / "t" / "weights_a.pth"
    truncated.parent.mkdir()
    truncated.write_bytes(b"A" * 10)
    assert "named like pretrained/weights_a.pth but 10 bytes, not 3,000" in identify(truncated).reason
    other = tmp_path / "other.bin"
    other.write_bytes(b"C" * 7)
    assert identify(other).reason == "not a published file: no published file is named 'other.bin' or has 7 bytes"


def test_verify_and_progress(fake_table, tmp_path):
    a, b, files = fake_table
    calls = []
    assert verify(a, progress=lambda done, total: calls.append((done, total))) == files[0]
    assert calls[-1] == (3000, 3000)
    assert verify(b, files[1]) == files[1]
    with pytest.raises(WeightsError, match="100 bytes, but pretrained/weights_a.pth has 3,000 .truncated download"):
        verify(b, files[0])
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"Z" * 3000)
    with pytest.raises(WeightsError, match="sha256 .* differs from pretrained/weights_a.pth"):
        verify(bad, files[0])
    with pytest.raises(WeightsError, match="not a published file"):
        verify(bad)
    steps = []
    sha256_file(a, lambda done, total: steps.append(done), chunk_size=1024)
    assert steps == [1024, 2048, 3000]


def test_git_lfs_pointers_are_recognised(tmp_path):
    pointer = tmp_path / "model.ckpt-0350.index"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n"
                       "oid sha256:d7366ddec565f47a34b9ceb522314495c015a6bb453be8c4d1b8b6bca70056e2\nsize 51083\n")
    found = identify(pointer)
    assert not found.published and [e.name for e in found.sets] == ["RAN-e-GT"]
    assert "git-lfs pointer file, not the weights (a pointer to pretrained/RAN_e_pretrained/RAN-e-GT/" in found.reason
    with pytest.raises(WeightsError, match="no such file"):
        identify(tmp_path / "absent")
