"""RAN-e: the PReLU/AFRB SuperNet (paper Table 5 + Table 6) and the networks derived from it.

Choices the paper leaves open, and what we use:

* Stem: a 3x3 stride-2 conv to 16 channels without bias, BN or activation, and inputs normalised
  with ImageNet's mean/std (0-255 scale), as in the reference implementation (ARM-software's RAN_e,
  whose published checkpoints then load unchanged). Every first block starts with its own
  activation (AFRB: PReLU(1-a); collapsed block: BN -> act) or with the IBN expansion.
* Top (Table 6): 1x1 conv to 1344 -> BN -> act, 7x7 depthwise -> BN -> act, average pool,
  dropout 0.2, dense.
* Activation: hard-swish unless overridden (the paper's Table 1 models).
* AFRB-3 (the 128 -> 128 block): two sub-blocks 128 -> 64 -> 128 with an outer residual, each
  expanding to 6 * 128 = 768 channels; as IBNs in the all-IBN SuperNet the same shape.
* SubNetwork-W: the all-IBN SuperNet at width 0.91, every block width (and the stem) truncated,
  floor(c * 0.91); the 1344-channel top is not scaled. This is the rounding that reproduces the
  paper's 4.13M / 488M best (486M); 'round' gives 496M, MobileNet's make_divisible(8) 512M.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

from ran_keras.models._registry import PaperFigures, register
from ran_keras.spec import IMAGENET_MEAN, IMAGENET_STD, BlockSpec, NetworkSpec, realize_afrbs, scale_width

# (in, out, kernel(s), repeats, expansion, stride, collapsed flag per repeat)
Row = Tuple[int, int, Union[int, Sequence[int]], int, float, int, Sequence[int]]

#: the AFRB-3 slot: stage 7 (0-based 6), second block - the 128 -> 128 block of Table 5 stage 11
AFRB3_SLOT = (6, 1)

#: SubNetwork-C, as given in the issue tracker (per stage; 1 = collapsed into a regular conv)
SUBNET_C: List[Row] = [
    (16, 32, 3, 1, 6, 1, [1]), (32, 48, 3, 1, 6, 2, [1]), (48, 64, 3, 1, 6, 2, [0]),
    (64, 80, 3, 1, 6, 1, [1]), (80, 80, [5, 3], 2, 6, 2, [0, 1]), (80, 96, [5, 3], 2, 4, 1, [0, 1]),
    (96, 128, 3, 2, 6, 1, [0, 0]), (128, 160, 3, 1, 6, 2, [1]), (160, 176, [7, 3, 3], 3, 4, 1, [0, 0, 1]),
    (176, 224, [5, 5], 2, 6, 1, [0, 0]),
]

#: the manual Ground Truth design
SUBNET_GT: List[Row] = [
    (16, 32, 3, 1, 2, 1, [1]), (32, 48, 3, 1, 2, 2, [1]), (48, 64, 3, 1, 2, 2, [1]),
    (64, 80, 3, 1, 2, 1, [1]), (80, 80, 5, 2, 6, 2, [0, 0]), (80, 96, 3, 2, 4, 1, [0, 0]),
    (96, 128, 3, 2, 2, 1, [1, 1]), (128, 160, 7, 1, 6, 2, [0]), (160, 176, 3, 3, 4, 1, [0, 0, 0]),
    (176, 224, 5, 2, 6, 1, [0, 0]),
]


def _kernels(row: Row) -> List[int]:
    k, n = row[2], row[3]
    return [k] * n if isinstance(k, int) else list(k)


def with_kernel3(rows: List[Row]) -> List[Row]:
    return [(a, b, 3, n, e, s, c) for a, b, _, n, e, s, c in rows]


def with_ibn_at(rows: List[Row], stages: Sequence[int]) -> List[Row]:
    """Mark every block of the given stages (0-based) as an IBN."""
    return [(a, b, k, n, e, s, [0] * n if i in stages else c) for i, (a, b, k, n, e, s, c) in enumerate(rows)]


def _stem() -> Tuple[BlockSpec, ...]:
    return (BlockSpec("conv", channels=16, kernel=3, stride=2, norm=None, bias=False, activation="linear"),)


def _top() -> Tuple[BlockSpec, ...]:
    return (BlockSpec("conv", channels=1344, kernel=1), BlockSpec("dw", kernel=7))


def _network(name: str, stages, description: str) -> NetworkSpec:
    return NetworkSpec(name=name, family="ran_e", description=description, activation="hard_swish",
                       stem=_stem(), stages=stages, head=_top(), classifier_dropout=0.2,
                       input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)


def subnetwork(name: str, rows: List[Row], description: str = "") -> NetworkSpec:
    """A RAN-e subnetwork from per-stage rows: collapsed blocks where flagged, IBNs elsewhere."""
    stages = []
    for i, row in enumerate(rows):
        cin, cout, _, n, e, s, flags = row
        stage = []
        for j, (k, flag) in enumerate(zip(_kernels(row), flags)):
            fields = dict(channels=cout, kernel=k, stride=s if j == 0 else 1, expansion=e)
            if (i, j) == AFRB3_SLOT:
                fields["mid_channels"] = cout // 2
            stage.append(BlockSpec("collapsed" if flag else "ibn", **fields))
        stages.append(tuple(stage))
    return _network(name, tuple(stages), description)


def supernet_spec(name: str = "ran_e_supernet") -> NetworkSpec:
    """Table 5: AFRB-1 where no residual fits, AFRB-2 where one does, AFRB-3 at the 128 -> 128 slot."""
    stages = []
    for i, (cin, cout, _, n, e, s, _) in enumerate(with_kernel3(SUBNET_C)):
        stage = []
        for j in range(n):
            bin_, stride = (cin if j == 0 else cout), (s if j == 0 else 1)
            if (i, j) == AFRB3_SLOT:
                kind = "afrb3"
            elif stride == 1 and bin_ == cout:
                kind = "afrb2"
            else:
                kind = "afrb1"
            stage.append(BlockSpec(kind, channels=cout, kernel=3, stride=stride, expansion=e))
        stages.append(tuple(stage))
    return _network(name, tuple(stages), "PReLU SuperNet of AFRB-1/2/3 blocks (Table 5 + Table 6)")


SUBNET_A_COLLAPSED = [flag for row in with_ibn_at(with_kernel3(SUBNET_C), (0, 1)) for flag in row[6]]


@register("ran_e_supernet", family="ran_e", description="PReLU/AFRB SuperNet (Table 5 + 6), 16 AFRBs",
          paper=PaperFigures("4.7M", "590M", "Table 1 (as IBNs)",
                             note="the paper reports the SuperNet's figures as all-IBN"))
def ran_e_supernet() -> NetworkSpec:
    return supernet_spec()


@register("ran_e_supernet_ibn", family="ran_e", description="SuperNet with all 17 blocks as IBNs (Fig. 4b)",
          paper=PaperFigures("4.7M", "590M", "Table 1", top1_100ep=74.24, fps_u55=0.86, fps_u65=0.87))
def ran_e_supernet_ibn() -> NetworkSpec:
    return realize_afrbs(supernet_spec(), [False] * 16, name="ran_e_supernet_ibn",
                         description="SuperNet with every AFRB as an IBN (Fig. 4b)")


@register("ran_e_subnet_w", family="ran_e", description="all-IBN SuperNet at width 0.91 (floor rounding)",
          paper=PaperFigures("4.13M", "488M", "Table 1", top1_100ep=73.75, fps_u55=0.91, fps_u65=0.90))
def ran_e_subnet_w() -> NetworkSpec:
    spec = scale_width(ran_e_supernet_ibn(), 0.91, rounding="floor", stem=True, head=False,
                       name="ran_e_subnet_w")
    return spec.replace(description="SubNetwork-W: all-IBN SuperNet, widths floor(c * 0.91), top kept")


@register("ran_e_a", family="ran_e", description="SubNetwork-A: SuperNet with the 5 search-collapsed blocks",
          paper=PaperFigures("4.6M", "561M", "Table 1", top1_100ep=73.26, fps_u55=0.88, fps_u65=0.91))
def ran_e_a() -> NetworkSpec:
    return subnetwork("ran_e_a", with_ibn_at(with_kernel3(SUBNET_C), (0, 1)),
                      "SubNetwork-A: PReLU search collapsed 5 of 17 blocks")


@register("ran_e_b", family="ran_e", description="SubNetwork-B: A + first two IBNs collapsed",
          paper=PaperFigures("4.6M", "482M", "Table 1", top1_100ep=72.63, fps_u55=1.10, fps_u65=1.34))
def ran_e_b() -> NetworkSpec:
    return subnetwork("ran_e_b", with_kernel3(SUBNET_C), "SubNetwork-B: A with the first two IBNs collapsed")


@register("ran_e_c", family="ran_e", description="SubNetwork-C: B + kernels 5/7 on some IBNs",
          paper=PaperFigures("4.7M", "488M", "Tables 1-2", top1_100ep=73.13, top1_final=74.6,
                             fps_u55=1.06, fps_u65=1.28))
def ran_e_c() -> NetworkSpec:
    return subnetwork("ran_e_c", SUBNET_C, "SubNetwork-C: B with 5x5/7x7 kernels on some IBNs")


@register("ran_e_gt", family="ran_e", description="Ground Truth: the manual design in the SuperNet",
          paper=PaperFigures("4.5M", "433M", "Tables 1-2", top1_100ep=73.04, top1_final=74.6,
                             fps_u55=1.16, fps_u65=1.49))
def ran_e_gt() -> NetworkSpec:
    return subnetwork("ran_e_gt", SUBNET_GT, "Ground Truth: manual design within the SuperNet")


#: the designs `ran hwsearch` found (issue 15): one choice per AFRB site in network order
#: (form-kernel-activation) and the head's activation. Found for each target separately; both searches
#: ended at the same design. With ReLU6 allowed the search finds the same collapse pattern with ReLU6,
#: faster still but 1.7 points below GT on digits (WORKSPACE.md, "Hardware-aware restructuring"), so the
#: registered networks keep GT's activation (--activations hard_swish).
HW_COMMAND = "ran hwsearch --targets u65-256,u55-128 --activations hard_swish"
_HW_DESIGN = (("collapsed-k3-hard_swish",) * 5 + ("ibn-k3-hard_swish",) * 4 + ("collapsed-k3-hard_swish",)
              + ("ibn-k3-hard_swish",) * 6, "hard_swish")
HW_FOUND = {"u65-256": _HW_DESIGN, "u55-128": _HW_DESIGN}


def hw_found(name: str, target: str) -> NetworkSpec:
    """A design found by the hardware-aware search for ``target``, as a spec of the SuperNet's layout."""
    from ran_keras.search.hwspace import Choice, Design, design_spec
    keys, head = HW_FOUND[target]
    design = Design(tuple(Choice.parse(k) for k in keys), head)
    return design_spec(supernet_spec(), design, name=name,
                       description=f"hardware-aware restructuring for {target}, found by `{HW_COMMAND}` (issue 15)")


@register("ran_e_hw_u65", family="ran_e",
          description=f"found by `{HW_COMMAND}` for u65-256: 6 blocks collapsed (issue 15)")
def ran_e_hw_u65() -> NetworkSpec:
    return hw_found("ran_e_hw_u65", "u65-256")


@register("ran_e_hw_u55", family="ran_e",
          description=f"found by `{HW_COMMAND}` for u55-128: 6 blocks collapsed (issue 15)")
def ran_e_hw_u55() -> NetworkSpec:
    return hw_found("ran_e_hw_u55", "u55-128")
