"""``ran_keras.weights.pth`` / ``pth_writer``: reading torch.save files without torch, safely.

Cross-checked against real PyTorch (torch 2.13.0+cpu in a throw-away venv outside the repository,
``python3.11 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.13.0 numpy``; the project never
depends on torch). Each side dumped every tensor as ``key dtype shape element-strides sum`` and the dumps
were compared line by line, with no difference:

* ``torch.load(weights_only=True)`` (``argparse.Namespace`` added to its safe globals for ``args``) on a
  ``write_pth`` file (43,864 bytes, 51 tensors: ``training_checkpoint`` with model, model_ema, AdamW
  state, epoch, scaler, args; four ``StridedTensor`` views of one shared storage including a transpose,
  a stride-0 row and the storage's last element; bf16, f16, f64, int32, int64, uint8, bool, 0-d, empty).
* ``read_pth`` on a ``torch.save`` file (4,118,593 bytes, 57 tensors: an nn.Sequential's state dict, its
  EMA copy and AdamW state after two steps, ``t()``, ``[3:7, ::5]``, a column, a flat slice of one
  1000x1000 storage, a bf16 tensor and a transposed bf16 view, f16), with ``mmap`` on and off.
* ``TORCH_FIXTURE`` below is a smaller file torch 2.13 wrote, kept here so the check runs without torch;
  its expected values are what torch printed for it. ``test_torch_reads_the_writer_and_the_reader_reads_torch``
  repeats both directions wherever torch is installed (all 27 tests passed in the torch venv).
"""

import argparse
import base64
import collections
import io
import os
import pickle
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from ran_keras.errors import RanError
from ran_keras.weights import WeightsError
from ran_keras.weights.pth import Inert, TorchDtype, describe, flatten_arrays, read_pth
from ran_keras.weights.pth_writer import (ALIGNMENT, BFloat16, StridedTensor, bfloat16_bits, training_checkpoint,
                                          write_pth)

#: torch.save output of torch 2.13.0 (zlib + base64 of the .pth file; sha256 f00025ba...c38b)
TORCH_FIXTURE = """
eNrFmQl8FNUdxyd3snIESEKQGwJslITsmY0igYiJdBXDoHal0M1kd5Jd3Ozu/+3bYLApEUggLVpL1YK39UDrfVWFmFKq1SqetdYD
K2prwQvUerSi9h2bzczsLAmjn0/nk7fHZP7f3++9+b83771tdGdlC0J+vpBylAgjBBxBvoB3DQpiLIfn+SUsVUbPD9XX5QsrEkdX
ZicIZk8OCWiL+OUQZPh8kVBI9uFgJBwznYX8MpL9i4M+bILMchGyzB6qVVW5Rg62BjBk+5hGpTeOg6GYyYvk5ngw5PcSvVgEedut
Jsgxmz15JCZGrpRaZcjlIab6UETCy/lJE+R5MigX8j1Z5N0XjUOBOxeDaZlbMLsz3VnuDHcGhuPM/BP9PKI3QB2NxDBKhNGeXGar
OSjFoDBANAO5Ac60wJhAgTsTw1jCcmd2wzh3RjcU8ehiDCUijGeVsgxUqlQVb4UJPP74RPxEGj+Jx0/GMEWEqUzdwtWnqaJtMJ1H
z0hEz6TRZTx6FobZIszxjGLRKB4OB8Ot3jZZCoNZRbFDOaeckKCcSClzOaUCQ6UI8zwjVZR2CUGVCuIAC4dYExAbhdg5xIHBKUK1
p5hBwvE2b7OEfQE55sVI8p0v+8HFYYm7d0Yk3Jq8eTWM74STCJ/cmZMJv7ycc+djOEWEBfFOqPUUkItI7bBEMxEWsv8vMntotkJd
J5zK0qRdRjGSe7DYnRFL5MRpnVAfSH63QEMnnE6+Z8bisWYGjURxsC24VkawpBN+wNM5hiUsg7sTzjC7hU440+zJZmflKCxVNUs1
nMVtNypsL8MgirCcOZIviHql9lY4WxXmgnMCLEXPVafoDxUp6uGw8zCsEOFHHtMgzBsDWKni1cAqzvuxmudV8Jo4T8LQLIIv7s7o
BL85MFidTNo8VSDz+rQo6tOKISBCMHC2+loLrOYpcX4iJUI0Jdp4TBhDRIRoYKU6xgrAY1AiJkZjMI+JY2gXYU3cTcaVC1Ks2aCD
W1ursHYhhp+I0Km1Zoefcpl1CZkuKnMRj1mPYYMIG7XWHNDNY3oSMZtozGYe04vhZyL8PO7O6oQtKdaccDG3donC2i8wXCrCL7XW
qmErl/lVQuYyKnM5j7kCw69F2Ka15oLtPObKRMxVNOZqHnMNhmtFuC4e94wg10YlJLV5W1EkHo3B9avghk74jZlRQghubKhtbD7z
xY9vO8KyvJn0phjc1FD7wV56PNNQe+iLZ18t2XRiD9zMRlKZMG5pWHBaxyVvV205ifH5KOf1yz6pA3Y01G5c+1bDXUUXslyX2mKt
SPLDrb1sSGyTLmAdC27rZf9uiSBZ8gXgt0tZMvukKI4jqTkkw+29bBTzB1tayBMjjIPs7B29zGVLPEYGkDuXekroJbKP1Cwk+70q
I3dtZoMoq3wM7l4F95B+S9KedAQ5LsUZR45GiPi97jx2acwnhUiXv68T7k90eXoCHmhYeJg/Aj2j6YBDGnINDiSGMQQPurPibCiQ
UGsMfucjb0QzJpuWSm1yLCr5yHj2UPlF8HAnPGIOkOaO8uYOZLAqIynsDXpxMNwBO9mJYDgax94YbaRd7v3xZtaZMfSpb38NPEpu
fymGfnr7c93ZPfB7UrncHtjNU+APGPaI8Ed2z4hheGwgPpAIfHwZCcvthj/RvHmCBz2J4c8iPMUfmZEQPK0N2ruMtF92NzxDI5/l
Qc9heF6EF9j9JaORFPaTe/Oiyq61Cv5CAFkYXmLZ6s7qgb/Su9EDL3PI3zC8IsKrrCGbW0jveU31dKhjD3eLM/mEeJ1zLbCPcLMx
vEG5xNjfaW3e5Mz9GN4S4W3GDEihFnhHxTydnEry/sF5Vvgn71XvJnrVvyjvAOcdxPCeCO+z1mlx2uEDFW5xJE4yNAn8kANt8BEf
Bg5RIGEdpi8fc+AnGD4V4d8MGLRZ4TMVcEl4cDbzOafZ4Qtu78uEvf9Q2n857SsMR0T4ml0Zd8E36gbswIPevuU0BxJIbjEgyiCf
OBNlko8Ei7LIOyOjbPIJoxzyKqJc8srCgy6UR8OVKqcGJDSggvIHrrQ6UUFSyDQodFxCaERSaCQTGsWERtNwmvvNqFCrUxeJhJI6
Y5I61WhsUmfcoE5RQqc4qVPCdMYznVIanjMwUqAJ5GuaOSi7QMYyMqHjk44GMtyFJnLtbIwmDWi7M3vQZKqeSVIdTUnqT2X605j+
dPK6mZ2dQT5tQjPZ2TLqamBQkhCalSJYg2ZzwQyM5nDBxGMGmRm+nIFOGKie3BbFHehELcdWheZyDgmpSBgXSAdFldR4FjU+L2m8
ipEtjGylZDYHojMlW7LdTMvJdxOy83oTkIN86kZOFlQ9YMePO6Iycg1GtfAebkI15Fy8stGdlz87tKtiCXnC0NKYdmEyWZirWZhU
ksdKm4S9ialffZ05uT4Z6rBQ3YcO7dtAM4+W9LrTBItWN7Ek8UqhYGu4jTy16usqhi3NDqedGqhdAwfpzck8qoHxQo3GQDPp5RG6
xKqvcxyb7sARIqCQTD10n/LOBJqAuUf1UCS4dFaF86rq6+yGDPhLrtk18eNrF2Q+/0k/Knitf11fc7+4ZeoC6ujyO9efXko0S4dw
NFvPkaW+bsYwHD2++uS+/U3vMb3aiVEXFcgfQs+pp2etr7MaaIHPJnbV3r57XS3V72t/8DrD+jZj+uGxG3bSQvUPHy5sM6xvN6Z/
T1PJ/Dsf+Hw+1V+/8p3thvUdxvRbPgrV9l/Tytp/Qe+eA4b1ncb0MxJUqv/Fm5tvM6xfbUxfELpY3VevvuEOOrZnD6F9kp62q77O
aWz4WfHGvHjVnDmWe5/b2HXfoRVvWuuatt63/Jyn76ee+r/c9L7h/l8zvP4vvrFr6phZi6ff3P7sTNO7V5WtO5hTtsV20WyqH7js
6yND6xcLs3THHzIkThe+5/YvTnkCcC2L4fH/mb1n3HTl9u07qIcrRo3eOXT+FQsOXQ9kALQcu4fI2A15fXjcKKr/WN4Ou3F9myH9
76f97Ybbf/0jr9x797I+K/Wwq/ip94zX32Go/jue2Dpj4y2ryqj+jVe33m5c3/l/bP/q75L/tbRQD18dPDTDeP1dRvP/FFqovunD
SUHj+jUG258eXbXkZSH5I6WLlOtJ2U3KflKERYJQSMo0UqpIWUhKIylNpERJ6SJlMymXkrKNlOtJuZWUe0h5eBF7ri/aF24ioKYh
6jVZd15FxtEJwrD8U61o35NVdI9qxBBaFl0tyzHP37tqlyws29XVQLVzDn5eYfj+WY2Nn2Q6/ijTvumDfsP9x2oz3H/O+/TLPVPD
N2dQDy9/dPE3xutvN1T/b/mxjurPX3lkr3F9Y+On8C1VRl+/Hhp6/VYsnKyrTEbOaoPTpxVdrOYT3t2/07h+9XfQz2Az1/6ZezzG
9V3fQZ/3/cFC3ZxbFDhQSPQKh3BToeuGjKPlwjHoT2PjTuXOSXvU/U8Yfv+zVRnuf0er30iNVnJ7pGBQy2ai7l+4tvWcoe9fWerG
C7Mfk1FQCgXXSvQ3X2/Qfyz7L1WOameNxWZ3OGzOqhpHjdNpsVkcDqfLZnXVuKoddquN/Ke6mrr0xg+sNhMfZuYyg5pN+lRuHZWk
ONf/HVvLUG4DTVbFbx8hHH3LSYtSbuhMU6HGjBSG3EXS0pRbM+NVtK0ptOSWkBai3E0pUv/SP0rQ3dNJqZRif0RNuFWfYNESlDsc
akLpaF2CVUtQ7lGoCdv0CTYtQbnLoPFQqEuwawnKfQKNB32CQ0tQrvQ1HsboEpxagnK+rPGgT6jWEpSrazWhaKwuwaUlKNfHmnzQ
J9QcrRbFKoJ5nH5GpSSlctGqRlyWBpGSlcp1pxpRWqSPsA6/ItvSIFLyUrn6UyOKivURKYmpXMBpXKRBOIZfkdISfURKaiqXUZo7
kgaRkpvKlZDGxXh9REpyKhcdmrZIg0jJTuVaQo2IluqPVinZqVwSqBH70iBSslM5s1cjPBP0ESnZqZyYqxEvpUGkZKdybq1xcbw+
IiU7lZNkNeKVNIiU7FTOc9UIcaI+IiU7lVNVNeLFNIiU7FTOLzUuJukjUrJTOV1UI/anQSSzU39eqTzOnqz/JEzJTuW0T43YnYJI
M9FRzsnKVIixU4RhzRYb3bm5cxMxU7IqkvGzNO9PFfD3h6cM7Jjn5rGObubf+Y93Obk8Zha7nl/7P79M6w8=
"""

#: (dtype, shape, element strides, storage offset, sum) as torch 2.13 printed them for TORCH_FIXTURE
TORCH_EXPECTED = {
    "model.0.weight": ("float32", (2, 3, 1, 1), (3, 1, 1, 1), 0, -0.6600706893950701),
    "model.1.running_var": ("float32", (2,), (1,), 0, 1.830263376235962),
    "model.1.num_batches_tracked": ("int64", (), (), 0, 1.0),
    "optimizer.state.3.exp_avg": ("float32", (2,), (1,), 0, 1.600000023841858),
    "t": ("float32", (6, 4), (1, 6), 0, 276.0),
    "row": ("float32", (6,), (1,), 6, 51.0),
    "col": ("float32", (4,), (6,), 2, 44.0),
    "expanded": ("float32", (2, 3), (0, 1), 0, 6.0),
    "bf16": ("float32", (4,), (1,), 0, 65540.1381225586),
    "half": ("float16", (2,), (1,), 0, -0.75),
    "f64": ("float64", (1,), (1,), 0, 1e-300),
    "i32": ("int32", (2,), (1,), 0, 2147483646.0),
    "u8": ("uint8", (2,), (1,), 0, 255.0),
    "i8": ("int8", (2,), (1,), 0, -1.0),
    "b": ("bool", (2,), (1,), 0, 1.0),
    "param": ("float32", (2, 2), (2, 1), 0, 4.0),
    "scalar": ("float32", (), (), 0, 2.5),
    "empty": ("float32", (0, 3), None, 0, 0.0),
}


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("torch") / "torch_written.pth"
    path.write_bytes(zlib.decompress(base64.b64decode("".join(TORCH_FIXTURE.split()))))
    return path


def _element_strides(a):
    return tuple(s // a.itemsize for s in a.strides)


def _pointer(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("mmap", [True, False])
def test_reads_what_torch_save_wrote(torch_file, mmap):
    ck = read_pth(torch_file, mmap=mmap)
    arrays = flatten_arrays(ck.data)
    for key, (dtype, shape, strides, offset, total) in TORCH_EXPECTED.items():
        a = arrays[key]
        assert (str(a.dtype), a.shape) == (dtype, shape), key
        assert float(a.astype(np.float64).sum()) == pytest.approx(total, rel=1e-12, abs=1e-300), key
        if strides is not None and key != "bf16":  # bf16 comes back converted (a new array)
            assert _element_strides(a) == strides, key
    d = ck.data
    np.testing.assert_array_equal(d["t"], np.arange(24, dtype=np.float32).reshape(4, 6).T)
    np.testing.assert_array_equal(d["bf16"], [1.0, 3.140625, -0.00250244140625, 65536.0])
    assert d["size"] == (2, 3) and d["dtype"] == TorchDtype("float16") and d["dtype"].numpy == np.float16
    assert isinstance(d["args"], Inert) and d["args"].lr == 0.004 and d["args"].model == "ran_i_tiny"
    assert d["args"].as_dict() == {"lr": 0.004, "model": "ran_i_tiny", "input_size": 224}
    assert d["epoch"] == 7 and d["scaler"] == {"scale": 65536.0, "_growth_tracker": 3}
    assert isinstance(d["model"], collections.OrderedDict) and d["model"]._metadata[""] == {"version": 1}
    assert d["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert (ck.archive, ck.version, ck.byteorder) == ("torch_written", "3", "little")
    assert any("bfloat16" in n for n in ck.notes) and "bfloat16" in describe(ck)
    # views share their storage: t (offset 0), row and col look into one 24-element buffer at torch's offsets
    for key in ("row", "col"):
        assert (_pointer(d[key]) - _pointer(d["t"])) // 4 == TORCH_EXPECTED[key][3]
    assert np.shares_memory(d["t"], d["row"]) and np.shares_memory(d["row"], d["col"])
    assert not d["t"].flags.writeable


def test_writer_round_trip_every_value_kind(tmp_path):
    rng = np.random.default_rng(0)
    storage = np.arange(24, dtype=np.float32)
    model = collections.OrderedDict(
        w=rng.standard_normal((4, 3, 3, 3)).astype(np.float32), n=np.array(5, np.int64),
        e=np.zeros((0, 2), np.float32), b=np.array([True, False]), h=np.array([0.5], np.float16),
        c=np.array([1 + 2j], np.complex64), i=np.array([-3], np.int8), u=np.array([250], np.uint8))
    obj = training_checkpoint(model, model_ema={k: v + 1 for k, v in model.items() if v.dtype.kind == "f"},
                              args=argparse.Namespace(lr=0.1, dims=[1, 2], t=(1, 2, 3, 4), big=2 ** 40, neg=-70000))
    obj["views"] = [StridedTensor(storage, 0, (4, 6), (1, 4)), StridedTensor(storage, 5, (3,), (2,))]
    obj["bf"] = BFloat16(np.array([1.0, 3.14159, -2.5e-3, np.nan], np.float32))
    obj["misc"] = {1: None, "f": 1.5, "s": "é", "nested": [(), (1,), (1, 2), (1, 2, 3)]}
    path = write_pth(tmp_path / "fixture.pth", obj)
    d = read_pth(path).data
    for key, value in model.items():
        assert d["model"][key].dtype == value.dtype and d["model"][key].shape == value.shape
        np.testing.assert_array_equal(d["model"][key], value)
    np.testing.assert_array_equal(d["model_ema"]["w"], model["w"] + 1)
    np.testing.assert_array_equal(d["views"][0], storage.reshape(6, 4).T)
    np.testing.assert_array_equal(d["views"][1], [5, 7, 9])
    assert np.shares_memory(d["views"][0], d["views"][1])
    np.testing.assert_array_equal(d["bf"][:3], [1.0, 3.140625, -0.00250244140625])
    assert np.isnan(d["bf"][3])
    assert d["misc"] == obj["misc"] and d["epoch"] == 299
    assert d["args"].as_dict() == vars(obj["args"])
    assert len(d["optimizer"]["state"]) == len(model) and d["optimizer"]["param_groups"][0]["params"] == list(range(8))


def test_writer_layout_matches_torch_save(tmp_path):
    path = write_pth(tmp_path / "RAN_i_Tiny_82.03.pth", {"model": {"a": np.ones(3, np.float32)}})
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names[0] == "RAN_i_Tiny_82.03/data.pkl" and "RAN_i_Tiny_82.03/version" in names
        assert zf.read("RAN_i_Tiny_82.03/byteorder") == b"little"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        raw = path.read_bytes()
        for info in zf.infolist():  # every entry's data starts on a 64-byte boundary, as torch writes
            n, e = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            assert (info.header_offset + 30 + n + e) % ALIGNMENT == 0
        assert zf.read("RAN_i_Tiny_82.03/data.pkl")[:2] == b"\x80\x02"  # protocol 2, like torch.save


def test_bfloat16_rounding_is_nearest_even():
    values = np.array([1.0, 1.00390625, 1.01171875, -2.0, np.inf], np.float32)  # halfway cases round to even
    np.testing.assert_array_equal(bfloat16_bits(values), [0x3F80, 0x3F80, 0x3F82, 0xC000, 0x7F80])


# -- refusing unsafe or unsupported files ------------------------------------------------------------------------

def _zip(path, pickled, extra=()):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickled)
        zf.writestr("archive/version", b"3\n")
        for name, data in extra:
            zf.writestr(f"archive/{name}", data)
    return path


def _unicode(text):
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _malicious(kind, marker):
    command = f"touch {marker}"
    if kind == "os.system":
        return b"\x80\x02cos\nsystem\n" + _unicode(command) + b"\x85R."
    if kind == "builtins.eval":
        return b"\x80\x02cbuiltins\neval\n" + _unicode(f"open({str(marker)!r}, 'w')") + b"\x85R."
    if kind == "subprocess.Popen":
        return b"\x80\x02csubprocess\nPopen\n" + _unicode(command) + b"\x85R."
    if kind == "posix.system (protocol 4 STACK_GLOBAL)":
        return b"\x80\x04" + _unicode("posix") + _unicode("system") + b"\x93" + _unicode(command) + b"\x85R."
    if kind == "os.system (protocol 0 INST)":
        return b"(" + b"V" + command.encode() + b"\nios\nsystem\n."
    if kind == "os.system inside a state dict":  # after a legitimate tensor, in a nested value
        ok = pickle.dumps({"model": {}}, protocol=2)[:-2]  # ends the dict without STOP
        return ok + _unicode("x") + b"cos\nsystem\n" + _unicode(command) + b"\x85Rs."
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen",
                                  "posix.system (protocol 4 STACK_GLOBAL)", "os.system (protocol 0 INST)",
                                  "os.system inside a state dict"])
def test_malicious_pickle_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = _zip(tmp_path / "evil.pth", _malicious(kind, marker))
    refused = kind.split(" ")[0].replace("posix.system", "posix.system")
    with pytest.raises(WeightsError, match=rf"refused to unpickle {refused.replace('.', '[.]')}") as err:
        read_pth(path)
    assert str(path) in str(err.value) and isinstance(err.value, RanError)
    assert not marker.exists()
    # the same bytes through plain pickle really would run the command (the test is not vacuous)
    if kind == "os.system":
        with zipfile.ZipFile(path) as zf:
            pickle.loads(zf.read("archive/data.pkl"))
        assert marker.exists()


@pytest.mark.parametrize("module,name", [("collections", "defaultdict"), ("numpy", "load"), ("torch", "load"),
                                         ("torch._utils", "_rebuild_sparse_tensor"), ("functools", "partial")])
def test_unknown_globals_are_refused_by_name(tmp_path, module, name):
    path = _zip(tmp_path / "x.pth", b"\x80\x02" + f"c{module}\n{name}\n)R.".encode())
    with pytest.raises(WeightsError, match=f"refused to unpickle {module}.{name}"):
        read_pth(path)


def _tensor_pickle(numel, offset, size, stride, stype="FloatStorage"):
    def tup(xs):
        return b"(" + b"".join(b"K" + bytes([x]) for x in xs) + b"t"
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((" + _unicode("storage") + f"ctorch\n{stype}\n".encode()
            + _unicode("0") + _unicode("cpu") + b"K" + bytes([numel]) + b"tQK" + bytes([offset]) + tup(size)
            + tup(stride) + b"\x89ccollections\nOrderedDict\n)RtR.")


@pytest.mark.parametrize("numel,offset,size,stride,message", [
    (4, 0, (2, 3), (3, 1), "reaches element 5 of storage 0, which has 4"),  # past the end through the stride
    (4, 3, (2,), (1,), "reaches element 4"),                                # past the end through the offset
    (8, 0, (2,), (1,), "holds 16 bytes, 8 x 4 expected"),                   # storage larger than its bytes
])
def test_tensors_may_not_read_outside_their_storage(tmp_path, numel, offset, size, stride, message):
    path = _zip(tmp_path / "oob.pth", _tensor_pickle(numel, offset, size, stride),
                [("data/0", np.arange(4, dtype=np.float32).tobytes())])
    with pytest.raises(WeightsError, match=message):
        read_pth(path)


def test_scheduler_counter_is_allowed_as_data(tmp_path):
    """MultiStepLR keeps its milestones in a collections.Counter (torchvision detection checkpoints)."""
    state = {"lr_scheduler": {"milestones": collections.Counter({8: 1, 11: 1}), "gamma": 0.1}}
    data = read_pth(_zip(tmp_path / "sched.pth", pickle.dumps(state, protocol=2))).data
    assert data["lr_scheduler"]["milestones"] == collections.Counter({8: 1, 11: 1})
    with pytest.raises(WeightsError, match="a Counter must be built from a dict of counts"):
        read_pth(_zip(tmp_path / "bad.pth", b"\x80\x02ccollections\nCounter\n" + _unicode("abc") + b"\x85R."))


def test_missing_storage_entry_and_bad_persistent_id(tmp_path):
    with pytest.raises(WeightsError, match="storage 0 has no entry archive/data/0"):
        read_pth(_zip(tmp_path / "a.pth", _tensor_pickle(1, 0, (1,), (1,))))
    with pytest.raises(WeightsError, match="unexpected persistent id"):
        read_pth(_zip(tmp_path / "b.pth", b"\x80\x02" + _unicode("not a storage") + b"Q."))


#: torch.save(..., _use_new_zipfile_serialization=False) of torch 2.13.0 (zlib + base64; 1,889 bytes, sha256
#: 73930f06...): a Conv2d + BatchNorm2d state dict, views of one 4x6 storage, int64, float16, an int and args
LEGACY_FIXTURE = (
    "eNp9lNtv21Qcx20nTVvDRmEMOi6j3B0uIbGTNmHQC4xu4F1al4u5DM9xzmKvjp2ffdKKSUHhodMGQkLiBRBCk3jZ4ybtYQioeOVP4I1H4JUnJBD8"
    "jo/TKcPdUb6xz+3z+/mc3+83kD6W/b+/Xv5r5uzllQOlgXT89xz+90FQzClBELpRSEMn9K0NEsVeGICIC8w9OON7lPrEIkHLswOQLpgyDtIPusSK"
    "vXMkhlwf8oo5hoOxG0YUxnTJzGHPCygU9LyZZ4wwaMO4nu/1hjbZ+k7YIj6IDpr1iUPRaiyfjFokIq3DnkNlkIoG5BRzAteWS5vEa7sU8g4NI8ct"
    "WT3q+bFsRaTZ8/yWRUkQh5G1ocowpijmOPMHV9ptAgW+RV72Q5uu8UEZxs29uKZRrc2paq1aLmuqpsJE4rrT7cGkXjhBQV7VBUWX9Jwu6iKF2xT+"
    "xt5vv+gy//ZQ2GvAHWYhcbLp2TFMueiBW3BHLGj1WlmrqXCnO6lLSL4Lybq0Bft0cQvu5qz9FO4x4N7kgyvDD57OppVrldk6HEhp96W0+xntAU57"
    "kMJBAx5KPKtwz2b+z9KqZbWuash6OGU9krIeZazHOOtxCk8Y8GSyrVKKekHgBW2rQzAilF2YiX/FlPlUynyaMZ/hzGcplAx4LgmyG8wNO4LyLsi5"
    "Wr0KlRSppkiNIascWaMwa8CcuT9BBr2O1bSp45LYopHtrJMW1Dk6jYhjGJc7AdEYtdZIrut5tCaitUNorVjkVl6g8KIB870+LJiTuAXPgdotm9qw"
    "mMwvKSaOCvBSH15OAnGYU4d1MTZFFijwSh+W3Z1+BY704Sj2pbgXN5MhCq9mn0KjUkO/XkO/ptEvnZ0Cptl5OIZhWTgPx7mPOHXSgJUknKNwE1Zv"
    "BTNS2Noqogpb8Do70jc46E0Kbxlg8rwIfXj7VqB3UtC7q5gz+S14j9FOcdD7FCwDTvPaMFsFOwXdfOyzLBab6SU76SW3mEeEg85QaBvgJoXFtf0z"
    "4I3c6VEc2rnTsyNwrVzTGiqsp3A/hXcYPODwkELXAEjqE+mGjguRnktM2VE7htjBR9eOYiKfsDsk7toOWqHFjwCjYcOUWK2LYPPIwndfsvZV3GQV"
    "7xSreBnZK2YVCCmrLuWyEjaflXFjWTlTyArtzBucyLqNyaxTlEmJfS5vgwWmYX9x/dAP5+w/5gtp/7dvP/1+3+ffzH+o/7n98ye/bF+95myvXTw4"
    "f2M/b7v3OV+8aX56pMfWCIv4Qw1Ql1A/oX5FCUuCMIWaQZVRi6gV1GlUFzVAXUB9hvoCdQl1GXUFdX1p6Md4+vznX952/KsLP/4HXs3QIg==")

#: (dtype, shape, storage offset, sum) as torch 2.13 printed them for LEGACY_FIXTURE
LEGACY_EXPECTED = {
    "model.0.weight": ("float32", (2, 3, 1, 1), -0.6622348614037037), "model.0.bias": ("float32", (2,), 0.4463357925415039),
    "model.1.running_var": ("float32", (2,), 2.0), "model.1.num_batches_tracked": ("int64", (), 0.0),
    "t": ("float32", (6, 4), 276.0), "row": ("float32", (6,), 51.0), "col": ("float32", (4,), 44.0),
    "i64": ("int64", (2,), 4.0), "half": ("float16", (2,), -0.75),
}


def test_legacy_format_is_read(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(zlib.decompress(base64.b64decode(LEGACY_FIXTURE)))
    ckpt = read_pth(path)
    assert ckpt.version == "legacy" and ckpt.data["epoch"] == 3 and ckpt.data["args"].lr == 0.1
    arrays = flatten_arrays(ckpt.data)
    assert len(arrays) == 12
    for key, (dtype, shape, total) in LEGACY_EXPECTED.items():
        a = arrays[key]
        assert (str(a.dtype), a.shape) == (dtype, shape) and float(np.sum(a, dtype=np.float64)) == pytest.approx(total)
    np.testing.assert_array_equal(arrays["t"], np.arange(24.0).reshape(4, 6).T)
    np.testing.assert_array_equal(arrays["col"], [2.0, 8.0, 14.0, 20.0])
    data = path.read_bytes()
    (tmp_path / "short.pth").write_bytes(data[:-10])
    with pytest.raises(WeightsError, match="is truncated"):
        read_pth(tmp_path / "short.pth")
    stream = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info: plain data
        pickle.load(stream)
    evil = tmp_path / "evil.pth"  # the legacy header followed by a pickle that calls os.system
    evil.write_bytes(data[:stream.tell()] + b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.")
    with pytest.raises(WeightsError, match="refused to unpickle os.system"):
        read_pth(evil)


def test_foreign_files_are_refused_clearly(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.")
    with pytest.raises(WeightsError, match="the system info could not be read"):
        read_pth(legacy)
    other = tmp_path / "weights.h5"
    other.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(WeightsError, match="not a torch.save checkpoint .neither a zip archive nor the legacy"):
        read_pth(other)
    script = tmp_path / "scripted.pt"
    with zipfile.ZipFile(script, "w") as zf:
        zf.writestr("scripted/constants.pkl", b"")
        zf.writestr("scripted/code/__torch__.py", b"")
    with pytest.raises(WeightsError, match="TorchScript archive"):
        read_pth(script)
    with pytest.raises(WeightsError, match="no such file"):
        read_pth(tmp_path / "absent.pth")
    garbage = _zip(tmp_path / "garbage.pth", b"\x80\x02(K\x01")  # truncated pickle
    with pytest.raises(WeightsError, match="data.pkl could not be read"):
        read_pth(garbage)


def _rezip(src, dst, compression=zipfile.ZIP_STORED, edit=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, edit(info.filename, data) if edit else data)
    return dst


def test_deflated_and_big_endian_archives(tmp_path):
    values = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([1, -2], np.int64)}
    src = write_pth(tmp_path / "src.pth", values)
    deflated = _rezip(src, tmp_path / "deflated.pth", zipfile.ZIP_DEFLATED)
    np.testing.assert_array_equal(read_pth(deflated).data["w"], values["w"])

    dtypes = {"0": "f4", "1": "i8"}  # storage key -> element type, in writing order

    def to_big(name, data):
        key = name.rsplit("/", 1)[-1]
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            return np.frombuffer(data, "<" + dtypes[key]).astype(">" + dtypes[key]).tobytes()
        return data
    big = read_pth(_rezip(src, tmp_path / "big.pth", edit=to_big))
    assert big.byteorder == "big" and any("big-endian" in n for n in big.notes)
    np.testing.assert_array_equal(big.data["w"], values["w"])
    np.testing.assert_array_equal(big.data["i"], values["i"])
    assert big.data["w"].dtype.isnative


def test_large_files_are_read_lazily_and_once(tmp_path):
    big = {f"w{i}": np.full((1024, 1024), i, np.float32) for i in range(10)}  # 40 MiB of storages
    path = write_pth(tmp_path / "big.pth", {"model": big, "model_ema": big})
    size = path.stat().st_size
    tracemalloc.start()
    try:
        mapped = read_pth(path, mmap=True)
        _, peak_mapped = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        loaded = read_pth(path, mmap=False)
        _, peak_loaded = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_mapped < 0.02 * size  # mapped: no storage copied into memory
    assert 0.95 * size < peak_loaded < 1.1 * size  # read: every storage exactly once
    assert float(mapped.data["model_ema"]["w9"][5, 5]) == 9.0 and not mapped.data["model"]["w1"].flags.owndata
    np.testing.assert_array_equal(loaded.data["model"]["w3"], big["w3"])


def test_writer_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(WeightsError, match="cannot write a set"):
        write_pth(tmp_path / "x.pth", {"a": {1, 2}})
    with pytest.raises(WeightsError, match="no torch storage for numpy dtype uint16"):
        write_pth(tmp_path / "x.pth", {"a": np.zeros(2, np.uint16)})
    assert not (tmp_path / "x.pth").exists()


def test_torch_reads_the_writer_and_the_reader_reads_torch(tmp_path):
    """Only where torch is installed (never a dependency): both directions against real torch."""
    torch = pytest.importorskip("torch")
    storage = np.arange(12, dtype=np.float32)
    obj = training_checkpoint({"w": np.ones((2, 3), np.float32)}, model_ema={"w": np.zeros((2, 3), np.float32)})
    obj["view"] = StridedTensor(storage, 1, (3, 2), (1, 4))
    obj["bf"] = BFloat16(np.array([1.5, -3.0], np.float32))
    path = write_pth(tmp_path / "ours.pth", obj)
    torch.serialization.add_safe_globals([argparse.Namespace])
    loaded = torch.load(path, weights_only=True)
    assert loaded["view"].stride() == (1, 4) and loaded["view"].storage_offset() == 1
    np.testing.assert_array_equal(loaded["view"].numpy(), storage[1:].reshape(-1)[[[0, 4], [1, 5], [2, 6]]])
    assert loaded["bf"].dtype == torch.bfloat16 and loaded["bf"].float().tolist() == [1.5, -3.0]
    theirs = tmp_path / "theirs.pth"
    base = torch.arange(12.0).reshape(3, 4)
    bf = torch.tensor([2.5], dtype=torch.bfloat16)
    torch.save({"t": base.t(), "bf": bf, "args": argparse.Namespace(a=1)}, theirs)
    d = read_pth(theirs).data
    np.testing.assert_array_equal(d["t"], base.t().numpy())
    assert d["bf"].tolist() == [2.5] and d["args"].a == 1


def test_inert_records_do_not_pretend_to_be_objects():
    record = type("Inert_Namespace", (Inert,), {"module": "argparse", "name": "Namespace"})()
    record.__setstate__({"lr": 1})
    assert record.lr == 1 and "argparse.Namespace" in repr(record)
    with pytest.raises(AttributeError, match="no field 'missing'"):
        record.missing  # noqa: B018
    assert io is not None and os is not None  # (imports used by helpers above)
