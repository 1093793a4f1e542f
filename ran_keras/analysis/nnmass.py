"""NN-Mass (paper Definition 1) and the non-linear units it predicts (Prop. 3), from a spec.

A block is read as a chain of weight layers ``x0 -> x1 -> ... -> xL`` (convolutions and depthwise
convolutions of its residual branch; ``c_l`` is the channel count of node ``x_l``):

* ``i_b``, the total input channels of its layers, is ``c_0 + ... + c_{L-1}``;
* a *possible* skip connection joins ``x_i`` to any ``x_j`` with ``j >= i + 2`` and carries
  ``c_i`` links (Fig. 5: the dotted arrows), so there are ``sum_i c_i * (L - 1 - i)``;
* the *actual* skip connection is the residual add: ``c_0`` links (identity or projection);
* cell density ``rho_b = actual / possible`` and the block's NN-Mass is ``i_b * rho_b``.

This gives Eq. 6 for a ResNet bottleneck (chain ``w, e w, e w, w``: ``(1 + 2e) / (2 + e) * w``), an
IBN with a residual (the same chain), ``(2 + e) / 3 * w`` for a ConvNeXt block (chain ``w, w,
e w, w``: ``2 w`` at e = 4) and ``2 w`` for a ResNet basic block. Blocks without a residual add, and
single-layer blocks (nothing to skip over), have NN-Mass 0.

A block with parallel branches (``ran_keras.ir.Parallel``, e.g. ConvNeXt's co-design block) is
read along its first branch; the weight layers of the other branches add their input channels to
``i_b`` without adding links, so a second branch raises the block's NN-Mass in proportion to the
inputs it reads (a choice: the paper defines NN-Mass on chains only).

Non-linear units ``X`` are counted as in Eq. 7: the activation channels on each block's residual
branch (``2 e w`` per bottleneck, ``e w`` per ConvNeXt block); an activation after the add
(ResNet's output ReLU) is not counted. For residual networks of one repeating block shape,
``X = k m`` with ``k_R = 2e(2 + e) / (1 + 2e)`` and ``k_C = 3e / (2 + e)`` (Prop. 3).

Pure Python on the spec (``ran_keras.blocks`` expansions): no TensorFlow. The per-block formulas
also take numpy arrays, which the scaling sweep (``ran_keras.search.scaling``) uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from ran_keras import ir
from ran_keras.spec import NetworkSpec



# --- formulas (scalars or numpy arrays) --------------------------------------------------------

def chain_mass(widths: Sequence[int], residual: bool = True) -> float:
    """NN-Mass of one block whose weight layers form the chain ``widths`` = (c_0, ..., c_L)."""
    inputs, possible, actual, _ = chain_terms(widths, residual)
    return inputs * actual / possible if possible else 0.0


def chain_terms(widths: Sequence[int], residual: bool = True) -> Tuple[int, int, int, float]:
    """(i_b, possible skip links, actual skip links, cell density) of a chain of layer widths."""
    widths = list(widths)
    depth = len(widths) - 1
    inputs = sum(widths[:-1])
    possible = sum(c * (depth - 1 - i) for i, c in enumerate(widths[:-1]))
    actual = widths[0] if residual and possible else 0
    return inputs, possible, actual, (actual / possible if possible else 0.0)


def resnet_bottleneck_mass(w1, e):
    """Eq. 6, one block: (1 + 2e) / (2 + e) * w1."""
    return (1 + 2 * e) / (2 + e) * w1


def resnet_bottleneck_units(w1, e):
    """Eq. 7, one block: 2 * e * w1 (the two ReLUs inside the block)."""
    return 2 * e * w1


def convnext_block_mass(w1, hidden):
    """A ConvNeXt block of width w1 expanding to ``hidden`` channels: (2 w1 + hidden) / 3 (2 w1 at e = 4)."""
    return (2 * w1 + hidden) / 3


def convnext_block_units(w1, hidden):
    """The GELU channels of a ConvNeXt block: ``hidden`` (= e * w1)."""
    return hidden


def k_resnet(e: float) -> float:
    """Prop. 3: X_R = k_R * m_R with k_R = 2e(2 + e) / (1 + 2e)."""
    return 2 * e * (2 + e) / (1 + 2 * e)


def k_convnext(e: float) -> float:
    """Prop. 3: X_C = k_C * m_C with k_C = 3e / (2 + e)."""
    return 3 * e / (2 + e)


# --- from a spec -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockMass:
    path: str                 # spec path, e.g. 'stages[2][0]'
    prefix: str               # layer-name prefix, e.g. 'stage3_block1'
    kind: str
    widths: Tuple[int, ...]   # the chain c_0 .. c_L of weight layers on the residual branch
    residual: bool
    inputs: int               # i_b
    possible: int             # possible skip links
    actual: int               # actual skip links
    mass: float               # i_b * rho_b
    nonlinear_units: int      # activation channels on the residual branch

    @property
    def density(self) -> float:
        return self.actual / self.possible if self.possible else 0.0


@dataclass(frozen=True)
class NNMass:
    name: str
    blocks: Tuple[BlockMass, ...] = field(default_factory=tuple)

    @property
    def mass(self) -> float:
        return sum(b.mass for b in self.blocks)

    @property
    def nonlinear_units(self) -> int:
        return sum(b.nonlinear_units for b in self.blocks)

    @property
    def k(self) -> float:
        """X / m (Prop. 3's constant when the network is uniform); 0 without NN-Mass."""
        return self.nonlinear_units / self.mass if self.mass else 0.0

    def to_dict(self, blocks: bool = False) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "nn_mass": self.mass, "nonlinear_units": self.nonlinear_units,
                               "k": self.k}
        if blocks:
            out["blocks"] = [dict(asdict(b), widths=list(b.widths), density=b.density) for b in self.blocks]
        return out


def block_chain(graph: ir.BlockGraph, cin: int) -> Tuple[Tuple[int, ...], int, int]:
    """(chain of layer widths, activation channels, side inputs) of a block's residual branch.

    The chain runs through the first branch of every ``Parallel``; weight layers on the other
    branches add their input channels to ``i_b`` (``side inputs``) but are not links of the chain.
    Activation channels are counted on every branch.
    """
    widths: List[int] = [cin]
    units = side = 0
    leaves, _ = ir.trace(graph.main, (None, None, cin))
    for leaf in leaves:
        on_chain = not any(leaf.path)
        if leaf.op.role == "layer":
            if on_chain:
                widths.append(leaf.out_shape[2])
            else:
                side += leaf.in_shape[2]
        elif leaf.op.role == "activation":
            units += leaf.op.cost(leaf.in_shape, leaf.out_shape).nonlinear_units
    return tuple(widths), units, side


def block_mass(spec: NetworkSpec, site) -> BlockMass:
    """NN-Mass terms and non-linear units of the block at ``site`` of ``spec``."""
    graph = site.graph(spec)
    widths, units, side = block_chain(graph, site.in_channels)
    inputs, possible, actual, density = chain_terms(widths, graph.residual)
    inputs += side
    return BlockMass(site.path, site.prefix, site.block.kind, widths, graph.residual, inputs, possible, actual,
                     inputs * density, units)


def nn_mass(spec: NetworkSpec) -> NNMass:
    """NN-Mass and non-linear units of every block of ``spec`` (no TensorFlow)."""
    return NNMass(spec.name, tuple(block_mass(spec, site) for site in spec.sites))
