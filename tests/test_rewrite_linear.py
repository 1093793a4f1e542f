"""The folding math (ran_keras.rewrite.linear): exact at borders, strides and odd/even sizes.

References are the unfolded chains run with tf.nn ops, the way the Keras layers compute them;
no Keras models are built here, so the property test stays fast.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ran_keras.backend import tf
from ran_keras.rewrite import linear
from ran_keras.rewrite.linear import FoldError, Folded, Pointwise, Spatial, compose

EPS = 1e-3


def _bn(rng, c):
    """Non-trivial BN statistics: (gamma, beta, mean, variance)."""
    return (rng.uniform(0.3, 2.0, c) * rng.choice([-1.0, 1.0], c), rng.normal(0, 1.0, c),
            rng.normal(0, 1.5, c), rng.uniform(0.05, 4.0, c))


def _apply_bn(y, bn, dtype):
    gamma, beta, mean, var = (tf.constant(v, dtype) for v in bn)
    return tf.nn.batch_normalization(y, mean, var, beta, gamma, EPS)


# --- one random chain: its reference (tf.nn, layer by layer) and its linear units --------------

SHAPES = ("1x1-dw-1x1", "1x1-dw", "dw-1x1", "1x1-1x1", "bn-dw-1x1", "bn-dw", "1x1-conv-1x1", "dw")


@st.composite
def chains(draw):
    shape = draw(st.sampled_from(SHAPES))
    cin = draw(st.integers(1, 6))
    expansion = draw(st.integers(1, 4))
    cout = draw(st.integers(1, 6))
    kernel = draw(st.sampled_from([1, 3, 5, 7]))
    stride = draw(st.sampled_from([1, 2]))
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    residual = draw(st.booleans()) and stride == 1
    if residual:  # chain(x) + x needs as many output channels as input channels
        cout = cin
        expansion = 1 if shape == "1x1-dw" else expansion
    bns = [draw(st.booleans()) or shape.startswith("bn") for _ in range(3)]
    biases = [draw(st.booleans()) for _ in range(3)]
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return dict(shape=shape, cin=cin, hidden=cin * expansion, cout=cout, kernel=kernel, stride=stride,
                h=h, w=w, residual=residual, bns=bns, biases=biases, seed=seed)


def _layers(cfg):
    """[(kind, params)] in order; kind in pointwise/dw/conv/bn; params float64."""
    rng = np.random.default_rng(cfg["seed"])
    cin, hid, k, s = cfg["cin"], cfg["hidden"], cfg["kernel"], cfg["stride"]
    shape = cfg["shape"]
    cout = cfg["cout"]
    mid = cin if shape.startswith(("dw", "bn")) else hid
    out: list = []

    def bias(i, c):
        return rng.normal(0, 1, c) if cfg["biases"][i] else None

    def bn(i, c):
        if cfg["bns"][i]:
            out.append(("bn", _bn(rng, c)))

    if shape.startswith("bn"):
        out.append(("bn", _bn(rng, cin)))
    if shape.startswith("1x1"):
        out.append(("pointwise", (rng.normal(0, 1, (cin, mid)), bias(0, mid))))
        bn(0, mid)
    if "dw" in shape:
        out.append(("dw", (rng.normal(0, 1, (k, k, mid)), bias(1, mid), s)))
        bn(1, mid)
    elif "conv" in shape:
        out.append(("conv", (rng.normal(0, 1, (k, k, mid, mid)), bias(1, mid), s)))
        bn(1, mid)
    if shape.endswith("1x1"):
        out.append(("pointwise", (rng.normal(0, 1, (mid, cout)), bias(2, cout))))
        bn(2, cout)
    return out


def _reference(x, layers, residual, dtype):
    y = tf.constant(x, dtype)
    for kind, p in layers:
        if kind == "bn":
            y = _apply_bn(y, p, dtype)
            continue
        if kind == "pointwise":
            y = tf.nn.conv2d(y, tf.constant(p[0][None, None], dtype), 1, "SAME")
        elif kind == "dw":
            y = tf.nn.depthwise_conv2d(y, tf.constant(p[0][..., None], dtype), [1, p[2], p[2], 1], "SAME")
        else:
            y = tf.nn.conv2d(y, tf.constant(p[0], dtype), p[2], "SAME")
        if p[1] is not None:
            y = y + tf.constant(p[1], dtype)
    if residual:
        y = y + tf.constant(x, dtype)
    return y.numpy()


def _units(layers):
    units = []
    for kind, p in layers:
        if kind == "bn":
            units.append(Pointwise(*linear.bn_affine(*p, EPS)))
        elif kind == "pointwise":
            units.append(Pointwise(p[0], p[1]))
        else:
            units.append(Spatial(p[0], p[1], (p[2], p[2]), "same", depthwise=kind == "dw"))
    return units


def _run_folded(x, f: Folded, dtype):
    xt = tf.constant(x, dtype)
    strides = [1, f.strides[0], f.strides[1], 1]
    if f.depthwise:
        y = tf.nn.depthwise_conv2d(xt, tf.constant(f.kernel[..., None], dtype), strides, f.padding.upper())
    else:
        y = tf.nn.conv2d(xt, tf.constant(f.kernel, dtype), strides, f.padding.upper())
    y = y + tf.constant(f.bias, dtype)
    if f.needs_border_map(x.shape[1:3]):
        y = y + tf.constant(f.border_map(x.shape[1:3]), dtype)
    return y.numpy()


def _rel(ref, got):
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def check_chain(cfg):
    layers = _layers(cfg)
    units = _units(layers)
    folded = compose(units)
    # a depthwise conv with only per-channel units around it stays depthwise (linear.compose's own path)
    assert folded.depthwise == (cfg["shape"] in ("dw", "bn-dw")), cfg
    if cfg["residual"]:
        folded = folded.with_identity()
    rng = np.random.default_rng(cfg["seed"] + 1)
    x = rng.normal(0, 1, (2, cfg["h"], cfg["w"], units[0].cin))
    # the math is exact: float64 agrees to rounding
    assert _rel(_reference(x, layers, cfg["residual"], tf.float64), _run_folded(x, folded, tf.float64)) < 1e-10
    # the deployed model: float32 weights and activations, as Keras runs them
    x32 = x.astype(np.float32)
    ref32 = _reference(x32, layers, cfg["residual"], tf.float32)
    got32 = _run_folded(x32, folded, tf.float32)
    assert ref32.shape == got32.shape
    assert _rel(ref32, got32) <= 1e-5, cfg


def test_fold_equals_the_chain_on_random_configs():
    """>= 200 random chains: shapes, channels, expansion, kernel 1/3/5/7, stride 1/2, odd/even sizes,
    random weights, biases and BN statistics, with and without a residual."""
    seen = []

    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(chains())
    def prop(cfg):
        seen.append(cfg)
        check_chain(cfg)

    prop()
    assert len(seen) >= 200
    assert {c["shape"] for c in seen} == set(SHAPES)
    assert {c["kernel"] for c in seen} == {1, 3, 5, 7} and {c["stride"] for c in seen} == {1, 2}
    assert {c["h"] % 2 for c in seen} == {0, 1} and any(c["residual"] for c in seen)
    # the depthwise path with a bias (the BN shift) before a k > 1 depthwise conv: a border map
    dw_bias = [c for c in seen if c["shape"] == "bn-dw" and c["kernel"] > 1]
    assert {c["stride"] for c in dw_bias} == {1, 2} and {c["h"] % 2 for c in dw_bias} == {0, 1}


@pytest.mark.parametrize("stride,size", [(1, 6), (1, 7), (2, 6), (2, 7), (2, 1)])
def test_border_map_worked_example(stride, size):
    """The WORKSPACE.md example: 1 -> 2 -> 1 channels, 3x3 depthwise, expansion bias (1, -2)."""
    expand = Pointwise(np.array([[1.0, 2.0]]), np.array([1.0, -2.0]))
    dw = Spatial(np.ones((3, 3, 2)), None, (stride, stride), "same", depthwise=True)
    project = Pointwise(np.array([[1.0], [1.0]]))
    f = compose([expand, dw, project])
    assert f.kernel[..., 0, 0].tolist() == [[3.0] * 3] * 3 and f.bias.tolist() == [-9.0]
    bmap = f.border_map((size, size))[..., 0]
    x = np.zeros((1, size, size, 1))
    ref = _reference(x, [("pointwise", (expand.weight, expand.bias)), ("dw", (dw.kernel, None, stride)),
                         ("pointwise", (project.weight, None))], False, tf.float64)[0, ..., 0]
    np.testing.assert_allclose(ref, -9.0 + bmap, atol=1e-12)   # x = 0: the chain is its bias
    if stride == 1 and size >= 3:
        assert bmap[0, 0] == 5.0 and bmap[0, 1] == 3.0 and bmap[1, 1] == 0.0   # corner, edge, interior
    if stride == 2 and size == 6:   # TF pads (0, 1): the first row/column are interior, the last are not
        assert bmap[0, 0] == 0.0 and bmap[-1, 0] == 3.0 and bmap[-1, -1] == 5.0


def test_naive_fold_is_wrong_exactly_on_the_border():
    rng = np.random.default_rng(3)
    layers = [("pointwise", (rng.normal(size=(3, 8)), rng.normal(size=8))),
              ("dw", (rng.normal(size=(3, 3, 8)), None, 1)), ("pointwise", (rng.normal(size=(8, 4)), None))]
    f = compose(_units(layers))
    x = rng.normal(size=(1, 9, 8, 3))
    ref = _reference(x, layers, False, tf.float64)
    naive = tf.nn.conv2d(x, f.kernel, 1, "SAME").numpy() + f.bias
    wrong = np.any(np.abs(naive - ref) > 1e-9, axis=(0, 3))
    border = np.ones_like(wrong)
    border[1:-1, 1:-1] = False
    assert np.array_equal(wrong, border)
    assert np.all(f.border_map((9, 8))[1:-1, 1:-1] == 0.0)   # exactly zero inside: quantises to zero


def test_same_padding_matches_tensorflow():
    for size in range(1, 11):
        for k in (1, 2, 3, 4, 5, 7):
            for s in (1, 2, 3):
                before, after = linear.same_padding(size, k, s)
                x = np.arange(size, dtype=np.float64).reshape(1, size, 1, 1) + 1
                kern = np.arange(k, dtype=np.float64).reshape(k, 1, 1, 1) + 1
                same = tf.nn.conv2d(x, kern, [1, s, 1, 1], "SAME").numpy()
                valid = tf.nn.conv2d(np.pad(x, ((0, 0), (before, after), (0, 0), (0, 0))), kern,
                                     [1, s, 1, 1], "VALID").numpy()
                assert np.array_equal(same, valid), (size, k, s)


def test_bn_fold_into_grouped_and_multiplier_kernels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 5, 4))
    gamma, beta, mean, var = _bn(rng, 6)
    scale, shift = linear.bn_affine(gamma, beta, mean, var, EPS)
    # depthwise with depth_multiplier 3 (2 -> 6 channels): output channel c * 3 + j
    dk = rng.normal(size=(3, 3, 2, 3))
    y = tf.nn.depthwise_conv2d(x[..., :2], dk, [1, 1, 1, 1], "SAME")
    ref = _apply_bn(y, (gamma, beta, mean, var), tf.float64).numpy()
    k2, b2 = linear.fold_scale_shift(dk, None, scale, shift, depthwise=True)
    got = tf.nn.depthwise_conv2d(x[..., :2], k2, [1, 1, 1, 1], "SAME").numpy() + b2
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    # grouped conv, 2 groups: 4 -> 6 channels
    gk = rng.normal(size=(3, 3, 2, 6))
    y = tf.concat([tf.nn.conv2d(x[..., 2 * i:2 * i + 2], gk[..., 3 * i:3 * i + 3], 1, "SAME") for i in range(2)], -1)
    ref = _apply_bn(y, (gamma, beta, mean, var), tf.float64).numpy()
    k2, b2 = linear.fold_scale_shift(gk, np.zeros(6), scale, shift)
    got = tf.concat([tf.nn.conv2d(x[..., 2 * i:2 * i + 2], k2[..., 3 * i:3 * i + 3], 1, "SAME")
                     for i in range(2)], -1).numpy() + b2
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride,size,residual", [(1, (8, 7), False), (1, (7, 8), True), (2, (8, 7), False),
                                                  (2, (7, 8), False), (2, (1, 2), False)])
def test_depthwise_chain_stays_depthwise(stride, size, residual):
    """BN -> 5x5 depthwise (bias) -> BN folds into one depthwise conv plus a border map, equal to the
    unfolded layers: the BN shift before the depthwise conv is the bias its zero padding does not see."""
    rng = np.random.default_rng(1)
    layers = [("bn", _bn(rng, 5)), ("dw", (rng.normal(size=(5, 5, 5)), rng.normal(size=5), stride)),
              ("bn", _bn(rng, 5))]
    f = compose(_units(layers))
    if residual:
        f = f.with_identity()
    assert f.depthwise and f.kernel.shape == (5, 5, 5) and f.tap_bias is not None
    assert f.needs_border_map(size)
    x = rng.normal(size=(2,) + size + (5,))
    assert _rel(_reference(x, layers, residual, tf.float64), _run_folded(x, f, tf.float64)) < 1e-10
    x32 = x.astype(np.float32)
    assert _rel(_reference(x32, layers, residual, tf.float32), _run_folded(x32, f, tf.float32)) <= 1e-5


def test_unsupported_chains_raise_clear_errors():
    dw = Spatial(np.ones((3, 3, 2)), None, (1, 1), "same", depthwise=True)
    with pytest.raises(FoldError, match="at most one k x k"):
        compose([dw, Pointwise(np.ones((2, 2))), dw])
    with pytest.raises(FoldError, match="channel mismatch"):
        compose([Pointwise(np.ones((3, 4))), dw])
    with pytest.raises(FoldError, match="empty"):
        compose([])
    with pytest.raises(FoldError, match="padding must be"):
        Spatial(np.ones((3, 3, 2)), padding="causal", depthwise=True)
    with pytest.raises(FoldError, match="stride-1"):
        compose([Spatial(np.ones((3, 3, 2)), None, (2, 2), "same", depthwise=True)]).with_identity()
    with pytest.raises(FoldError, match="moving variance"):
        linear.bn_affine(None, None, np.zeros(2), np.array([1.0, -1.0]), 1e-3)
    with pytest.raises(FoldError, match="3-channel BatchNorm"):
        linear.fold_scale_shift(np.ones((1, 1, 2, 4)), None, np.ones(3), np.zeros(3))
